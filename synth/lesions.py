"""Class-specific mediastinal lesions: appearance table, per-patient sampling and rendering.

Each of the 20 classes of the paper's Table 2 has an :class:`AppearanceSpec`, read from the data
file ``synth/data/appearances.json`` (ranges from textbook CT appearances): size, shape (round / lobulated / irregular / multi-nodal),
attenuation and heterogeneity at 60-65 s after contrast, and internal components (cystic foci,
necrotic core, fat, calcifications, phleboliths, enhancing patches, a thin wall, a fat-fluid
level). Ranges of related classes overlap on purpose (thymoma subtypes, the two teratomas, the
lymphomas, fibroma / schwannoma / "other"), so the image alone does not give the label away.

A :class:`Lesion` is one patient's lesion: concrete values drawn from the spec plus smooth random
fields (texture and margin) on a 1-2 mm grid in the lesion's own frame, so every image of the
patient sees the same lesion whatever its pose, spacing or noise. Coordinates are patient mm
(x, y, z) as in :mod:`anatomy`; HU are contrast-enhanced values.
"""

from __future__ import annotations

import json
import logging
import math
from dataclasses import dataclass, field, fields, replace
from importlib import resources
from pathlib import Path
from typing import Any

import numpy as np
from scipy import ndimage

from dmfn.synth.anatomy import CAVITY_LABELS, LESION, Canvas, ChestAnatomy, Grid
from dmfn.synth.placement import MIN_VISIBLE_FRACTION, check_grid, surviving_fraction

log = logging.getLogger(__name__)

Range = tuple[float, float]

#: Finest and coarsest spacing (mm) of the lesion-frame grid on which a lesion is baked (about
#: 60 samples across the lesion): a lesion is modelled once per patient on this grid and every
#: image samples it by trilinear interpolation.
FIELD_MM = (1.0, 2.0)
#: Correlation length (mm) of the margin field that makes margins irregular.
MARGIN_MM = 4.0
CALCIFICATION_HU: Range = (350.0, 900.0)
FLUID_HU: Range = (0.0, 20.0)
FAT_HU: Range = (-115.0, -85.0)
#: Centres tried per lesion size (the first included), see sample_lesion's placement rule.
PLACEMENT_TRIES = 25
#: Lesion sizes tried, each capped at SHRINK_FACTOR times the previous diameter.
SIZE_ROUNDS = 5
SHRINK_FACTOR = 0.85


class PlacementError(RuntimeError):
    """No placement of a lesion in its compartment keeps enough of it visible."""


@dataclass(frozen=True)
class AppearanceSpec:
    """Ranges (uniform draws unless noted) that define what a class looks like on contrast CT."""

    diameter_mm: Range  # long-axis diameter of the whole lesion (log-uniform)
    hu: Range  # mean enhanced attenuation of the main tissue
    heterogeneity_hu: Range = (3.0, 6.0)  # SD of the smooth texture
    texture_mm: Range = (3.0, 6.0)  # correlation length of the texture
    aspect: Range = (0.7, 1.0)  # short / long axis
    lobulation: Range = (0.0, 0.05)  # amplitude of the lobes (fraction of the radius)
    n_lobes: tuple[int, int] = (3, 6)
    irregularity: Range = (0.0, 0.02)  # amplitude of the fine margin field (fraction)
    n_nodes: tuple[int, int] = (1, 1)  # confluent or separate nodes
    node_size: Range = (1.0, 1.0)  # node radius / lesion radius
    node_spread: float = 0.0  # node centre distance / lesion radius
    cysts: tuple[int, int] = (0, 0)  # cystic / low-attenuation foci
    cyst_size: Range = (0.1, 0.25)  # radius / lesion radius
    necrosis_prob: float = 0.0
    necrosis: Range = (0.3, 0.5)  # necrotic core radius / lesion radius
    necrosis_hu: Range = (10.0, 30.0)
    fat_blobs: tuple[int, int] = (0, 0)
    fat_size: Range = (0.2, 0.4)
    fat_fluid_level_prob: float = 0.0
    solid_nodule: tuple[int, int] = (0, 0)  # enhancing soft-tissue components (Rokitansky)
    patches: tuple[int, int] = (0, 0)  # strongly enhancing patches
    patch_hu: Range = (110.0, 180.0)
    calc_prob: float = 0.0
    calcs: tuple[int, int] = (1, 3)
    calc_radius_mm: Range = (1.0, 3.0)
    rim_calc_prob: float = 0.0
    wall_mm: Range = (0.0, 0.0)
    wall_hu: Range = (40.0, 70.0)
    alt_hu_prob: float = 0.0  # probability of the alternative attenuation (proteinaceous cyst)
    alt_hu: Range = (20.0, 60.0)
    foraminal_prob: float = 0.0  # dumbbell extension towards the neural foramen
    satellite_nodes_prob: float = 0.0  # separate enlarged nodes near a primary tumour


#: The table of class appearances (a data file, not code): class name -> the fields of its
#: AppearanceSpec that differ from the defaults.
APPEARANCES_FILE = "appearances.json"


def load_appearances(path: str | Path | None = None) -> dict[str, AppearanceSpec]:
    """Class name -> :class:`AppearanceSpec`, read from ``path`` (default: the packaged
    ``synth/data/appearances.json``). ValueError naming the class and field of a bad entry."""
    if path is None:
        text = resources.files("dmfn.synth").joinpath("data", APPEARANCES_FILE).read_text()
        where = APPEARANCES_FILE
    else:
        text, where = Path(path).read_text(), str(path)
    try:
        classes = json.loads(text)["classes"]
    except (json.JSONDecodeError, KeyError, TypeError) as err:
        raise ValueError(f"{where}: not an appearance table ({err})") from None
    names = {f.name for f in fields(AppearanceSpec)}
    out = {}
    for label, values in classes.items():
        unknown = sorted(set(values) - names)
        if unknown:
            raise ValueError(f"{where}: class {label!r} has unknown fields {unknown}")
        # JSON lists become the tuples of AppearanceSpec
        spec: dict[str, Any] = {
            k: tuple(v) if isinstance(v, list) else v for k, v in values.items()
        }
        try:
            out[label] = AppearanceSpec(**spec)
        except TypeError as err:
            raise ValueError(f"{where}: class {label!r}: {err}") from None
    return out


#: The appearance of each class of the paper's taxonomy (class name -> spec).
APPEARANCES: dict[str, AppearanceSpec] = load_appearances()


def appearance_for(label: str) -> AppearanceSpec:
    """The spec of class ``label``; ValueError naming the known classes otherwise."""
    try:
        return APPEARANCES[label]
    except KeyError:
        raise ValueError(
            f"argument 'label': no CT appearance defined for class {label!r} "
            f"(known: {', '.join(APPEARANCES)})"
        ) from None


# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Node:
    """One ellipsoidal node of a lesion in the lesion frame (mm), with its lobes."""

    offset: np.ndarray  # (3,) centre offset (x, y, z)
    semi: np.ndarray  # (3,) semi-axes
    lobes: tuple[tuple[np.ndarray, float, float], ...]  # (unit direction, amplitude, width)


@dataclass(frozen=True)
class Inclusion:
    """A spherical internal component (lesion frame, mm) painted with its own HU."""

    center: np.ndarray
    radius: float
    hu: float


@dataclass(frozen=True)
class Lesion:
    """One patient's lesion in patient mm (x, y, z); rendered identically in each of its images."""

    label: str
    compartment: str
    center: np.ndarray  # (3,) patient mm
    angle: float  # rotation of the lesion frame about Z (rad)
    nodes: tuple[Node, ...]
    irregularity: float
    base_hu: float
    heterogeneity_hu: float
    wall_mm: float
    wall_hu: float
    necrosis_frac: float  # 0 = no necrotic core
    necrosis_hu: float
    fat_fluid_level_mm: float | None  # fat above this patient-Y offset from the centre
    fat_hu: float
    inclusions: tuple[Inclusion, ...]  # painted in order: cysts, fat, solid, patches, calcs
    rim_calc: tuple[np.ndarray, float, float] | None  # (direction, cos half-angle, HU)
    half_extent: np.ndarray  # (3,) bounding half-size in patient axes (mm)
    field_mm: float  # spacing of the lesion-frame grids below
    n_field: int  # samples per side of that grid, centred on the lesion; axes (x, y, z)
    texture_px: float  # correlation length of the texture, in grid samples
    field_seed: int  # seed of the texture and margin random fields (drawn when baking)
    #: baked on the same grid: normalised radius (<= 1 inside) and HU.
    rho: np.ndarray | None = field(default=None, repr=False)
    hu: np.ndarray | None = field(default=None, repr=False)

    @property
    def diameter_mm(self) -> float:
        """Largest extent of the lesion's nodes (mm), an estimate before painting."""
        return float(2.0 * max(np.max(np.abs(n.offset) + n.semi) for n in self.nodes))


def _u(rng: np.random.Generator, r: Range) -> float:
    return float(rng.uniform(r[0], r[1]))


def _i(rng: np.random.Generator, r: tuple[int, int]) -> int:
    return int(rng.integers(r[0], r[1] + 1))


def _unit(rng: np.random.Generator) -> np.ndarray:
    v = rng.normal(size=3)
    return v / np.linalg.norm(v)


def _smooth_field(rng: np.random.Generator, n: int, scale_px: float) -> np.ndarray:
    """Unit-SD Gaussian random field of correlation length ``scale_px`` samples on an n^3 grid."""
    white = rng.normal(size=(n, n, n)).astype(np.float32)
    f = ndimage.gaussian_filter(white, scale_px, mode="wrap", truncate=3.0)
    return (f - f.mean()) / max(float(f.std()), 1e-6)


def sample_lesion(
    rng: np.random.Generator,
    label: str,
    compartment: str,
    anatomy: ChestAnatomy,
    max_diameter_mm: float,
    bake: bool = True,
) -> Lesion:
    """Draw one lesion of class ``label`` placed in ``compartment`` of ``anatomy``.

    ``max_diameter_mm`` caps the long-axis diameter so that the lesion fits the preset's field
    of view. ``bake=False`` skips evaluating the lesion on its grid (geometry only; such a
    lesion cannot be painted; the placement is the same). The caller applies the lesion's mass
    effect to the anatomy (:func:`mass_shift_mm`).

    Placement rule: the centre lies in ``compartment`` and at least
    :data:`MIN_VISIBLE_FRACTION` of the lesion's volume stays visible in ``anatomy``
    (:func:`visible_fraction`), so lesions abut or encase the organs painted after them but
    are not hidden by them. The centre is redrawn up to :data:`PLACEMENT_TRIES` times; if no
    centre qualifies (a lesion too large for this patient's compartment) the whole lesion is
    redrawn with its diameter capped at :data:`SHRINK_FACTOR` times the last one, up to
    :data:`SIZE_ROUNDS` sizes. All redraws continue ``rng`` after the first lesion's draws, so
    a lesion accepted at its first placement is the lesion drawn without the rule.
    PlacementError if no size fits.
    """
    spec = appearance_for(label)
    if compartment not in ("anterior", "middle", "posterior"):
        raise ValueError(
            f"argument 'compartment': must be anterior, middle or posterior, got {compartment!r}"
        )
    cap = float(max_diameter_mm)
    best = 0.0
    for _ in range(SIZE_ROUNDS):
        lesion, semi, side = _draw_lesion(rng, spec, label, compartment, anatomy, cap)
        placed, fraction = _keep_visible(rng, lesion, anatomy, semi, side)
        if placed is not None:
            return _bake(placed) if bake else placed
        best = max(best, fraction)
        log.debug(
            "%s lesion of %.0f mm hidden in the %s compartment (best %.0f%% visible): smaller",
            label,
            lesion.diameter_mm,
            compartment,
            100.0 * fraction,
        )
        cap = SHRINK_FACTOR * lesion.diameter_mm
    raise PlacementError(
        f"no {label} lesion in the {compartment} compartment keeps "
        f"{MIN_VISIBLE_FRACTION:.0%} of its volume visible ({SIZE_ROUNDS} sizes down to "
        f"{cap / SHRINK_FACTOR:.0f} mm, {PLACEMENT_TRIES} placements each, best "
        f"{best:.0%}): organs painted after the lesion or the chest wall hide it"
    )


def _draw_lesion(
    rng: np.random.Generator,
    spec: AppearanceSpec,
    label: str,
    compartment: str,
    anatomy: ChestAnatomy,
    max_diameter_mm: float,
) -> tuple[Lesion, np.ndarray, float]:
    """One unbaked lesion at its first placement, its envelope semi-axes (mm) and its side."""
    lo, hi = spec.diameter_mm
    hi = min(hi, max_diameter_mm)
    lo = min(lo, hi)
    diameter = float(math.exp(rng.uniform(math.log(lo), math.log(hi))))
    radius = diameter / 2.0
    # Semi-axes of the envelope: the long axis lateral or cranio-caudal; anterior masses are
    # flattened front-to-back in the narrow retrosternal space.
    a2, a3 = _u(rng, spec.aspect), _u(rng, spec.aspect)
    if rng.random() < 0.5:
        semi = np.array([radius, radius * a2, radius * a3])
    else:
        semi = np.array([radius * a2, radius * a3, radius])
    if compartment == "anterior":
        semi[1] = min(semi[1], 30.0)
    angle = float(rng.uniform(-0.35, 0.35))

    nodes = []
    n_nodes = _i(rng, spec.n_nodes)
    for k in range(n_nodes):
        size = _u(rng, spec.node_size)
        node_semi = semi * size * rng.uniform(0.8, 1.2, 3) if n_nodes > 1 else semi.copy()
        if n_nodes > 1 and k > 0:
            offset = _unit(rng) * semi * spec.node_spread
        else:
            offset = np.zeros(3)
        lobes = tuple(
            (_unit(rng), _u(rng, spec.lobulation), float(rng.uniform(0.15, 0.35)))
            for _ in range(_i(rng, spec.n_lobes))
        )
        nodes.append(Node(offset, node_semi, lobes))
    if spec.satellite_nodes_prob and rng.random() < spec.satellite_nodes_prob:
        for _ in range(_i(rng, (1, 2))):
            r = rng.uniform(6.0, 11.0)
            d = _unit(rng) * np.array([1.0, 0.5, 1.0])
            offset = d / np.linalg.norm(d) * (radius + r + rng.uniform(3.0, 12.0))
            nodes.append(Node(offset, np.full(3, r) * rng.uniform(0.8, 1.1, 3), ()))
    side = 1.0 if rng.random() < 0.5 else -1.0  # patient left / right (paravertebral lesions)
    if compartment == "posterior" and rng.random() < spec.foraminal_prob:
        # dumbbell extension towards the neural foramen (medial, slightly posterior)
        medial = np.array([-side, 0.3, 0.0])
        nodes.append(Node(medial * (semi[0] + 4.0), np.array([9.0, 6.0, 8.0]), ()))
    # Nodes spread beyond the drawn diameter: shrink the whole lesion to the cap if needed.
    extent = 2.0 * max(float(np.max(np.abs(n.offset) + n.semi)) for n in nodes)
    if extent > max_diameter_mm:
        f = max_diameter_mm / extent
        nodes = [Node(n.offset * f, n.semi * f, n.lobes) for n in nodes]
        semi = semi * f

    lobulation_total = max((sum(a for _, a, _ in n.lobes) for n in nodes), default=0.0)
    irregularity = _u(rng, spec.irregularity)
    grow = 1.0 + lobulation_total + 3.0 * irregularity
    reach = max(float(np.max(np.abs(n.offset) + n.semi * grow)) for n in nodes) + 2.0
    field_mm = float(np.clip(reach / 30.0, FIELD_MM[0], FIELD_MM[1]))
    n_field = math.ceil(2.0 * reach / field_mm) + 3
    texture_px = _u(rng, spec.texture_mm) / field_mm
    field_seed = int(rng.integers(2**63))

    base_hu = _u(rng, spec.alt_hu) if rng.random() < spec.alt_hu_prob else _u(rng, spec.hu)
    inclusions = _sample_inclusions(rng, spec, semi, radius)
    rim = None
    if rng.random() < spec.rim_calc_prob:
        rim = (_unit(rng), math.cos(rng.uniform(0.4, 1.0)), _u(rng, CALCIFICATION_HU))
    fat_fluid = None
    if rng.random() < spec.fat_fluid_level_prob:
        fat_fluid = float(-semi[1] * rng.uniform(0.2, 0.6))

    # Bounding half-extent in patient axes: rotation about Z mixes x and y.
    ext = np.array([reach, reach, max(float(abs(n.offset[2]) + n.semi[2] * grow) for n in nodes)])
    ext[2] += 2.0
    center = _place(rng, anatomy, compartment, semi, side)
    lesion = Lesion(
        label=label,
        compartment=compartment,
        center=center,
        angle=angle if compartment != "posterior" else 0.0,
        nodes=tuple(nodes),
        irregularity=irregularity,
        base_hu=base_hu,
        heterogeneity_hu=_u(rng, spec.heterogeneity_hu),
        wall_mm=_u(rng, spec.wall_mm),
        wall_hu=_u(rng, spec.wall_hu),
        necrosis_frac=_u(rng, spec.necrosis) if rng.random() < spec.necrosis_prob else 0.0,
        necrosis_hu=_u(rng, spec.necrosis_hu),
        fat_fluid_level_mm=fat_fluid,
        fat_hu=_u(rng, FAT_HU),
        inclusions=inclusions,
        rim_calc=rim,
        half_extent=ext,
        field_mm=field_mm,
        n_field=n_field,
        texture_px=texture_px,
        field_seed=field_seed,
    )
    return lesion, semi, side


def _keep_visible(
    rng: np.random.Generator,
    lesion: Lesion,
    anatomy: ChestAnatomy,
    semi: np.ndarray,
    side: float,
) -> tuple[Lesion | None, float]:
    """``lesion`` re-centred by :func:`_place` until its placement is valid.

    Valid: the centre lies in the lesion's compartment (:meth:`ChestAnatomy.compartment_of`)
    and :data:`MIN_VISIBLE_FRACTION` of the lesion is visible. ``anatomy`` is the patient's chest
    before the mass effect; each candidate is checked against the chest shifted by its own mass
    effect. Tries :data:`PLACEMENT_TRIES` centres (the lesion's own first); returns the accepted
    lesion (None if none) and the best visible fraction seen.
    """
    best = 0.0
    for attempt in range(PLACEMENT_TRIES):
        if attempt:
            center = _place(rng, anatomy, lesion.compartment, semi, side)
            lesion = replace(lesion, center=center)
        shifted = replace(anatomy, mass_shift_mm=mass_shift_mm(lesion, anatomy))
        if shifted.compartment_of(tuple(lesion.center)) != lesion.compartment:
            continue  # e.g. a subcarinal centre behind the spine line of a shallow chest
        fraction = visible_fraction(lesion, shifted)
        if fraction >= MIN_VISIBLE_FRACTION:
            return lesion, fraction
        best = max(best, fraction)
    return None, best


def _sample_inclusions(
    rng: np.random.Generator, spec: AppearanceSpec, semi: np.ndarray, radius: float
) -> tuple[Inclusion, ...]:
    """Internal components at random positions inside the inner 60% of the envelope."""

    def inside_point(depth: float = 0.6) -> np.ndarray:
        while True:
            p = rng.uniform(-1.0, 1.0, 3)
            if p @ p <= 1.0:
                return p * semi * depth

    out: list[Inclusion] = []
    for _ in range(_i(rng, spec.cysts)):
        out.append(Inclusion(inside_point(), radius * _u(rng, spec.cyst_size), _u(rng, FLUID_HU)))
    for _ in range(_i(rng, spec.fat_blobs)):
        out.append(Inclusion(inside_point(), radius * _u(rng, spec.fat_size), _u(rng, FAT_HU)))
    for _ in range(_i(rng, spec.solid_nodule)):
        out.append(Inclusion(inside_point(0.7), radius * rng.uniform(0.15, 0.3), _u(rng, (35, 70))))
    for _ in range(_i(rng, spec.patches)):
        out.append(Inclusion(inside_point(0.75), rng.uniform(3.0, 9.0), _u(rng, spec.patch_hu)))
    if rng.random() < spec.calc_prob:
        for _ in range(_i(rng, spec.calcs)):
            out.append(
                Inclusion(
                    inside_point(0.8), _u(rng, spec.calc_radius_mm), _u(rng, CALCIFICATION_HU)
                )
            )
    return tuple(out)


def _place(
    rng: np.random.Generator,
    anatomy: ChestAnatomy,
    compartment: str,
    semi: np.ndarray,
    side: float,
) -> np.ndarray:
    """Lesion centre (patient mm) inside ``compartment`` (see ChestAnatomy.compartment_of)."""
    a = anatomy
    if compartment == "anterior":
        # Thymic bed: behind the sternum, in front of the great vessels and heart.
        x = rng.normal(3.0, 10.0)
        y = a.cavity_front_y + semi[1] * rng.uniform(0.75, 1.0) + rng.uniform(1.0, 5.0)
        z = rng.uniform(-40.0, 45.0)
        limit = a.ascending_aorta[1] - a.aorta_r - 2.0 + mass_shift_for(a, y, semi)
        y = min(y, limit)
    elif compartment == "middle":
        sites = (  # right paratracheal, subcarinal, aorto-pulmonary window, hilar, pericardial
            (-22.0, 8.0, 45.0),
            (3.0, 32.0, 8.0),
            (20.0, 2.0, 30.0),
            (-45.0, 20.0, 10.0),
            (45.0, 20.0, 5.0),
        )
        sx, sy, sz = sites[int(rng.integers(len(sites)))]
        x = sx + rng.normal(0.0, 5.0)
        y = sy + rng.normal(0.0, 4.0)
        z = sz + rng.normal(0.0, 8.0)
        # keep the centre behind the anterior compartment boundary
        y = max(y, a.ascending_aorta[1] - a.aorta_r + 6.0)
    else:
        sx, sy = a.spine_center
        x = sx + side * (a.SPINE_R[0] + semi[0] * 0.85 + rng.uniform(2.0, 8.0))
        y = max(sy + rng.uniform(-2.0, 10.0), a.spine_center[1] - a.SPINE_R[1] + 14.0)
        z = rng.uniform(-70.0, 60.0)
    return np.array([x, y, z], dtype=np.float64)


def mass_shift_for(anatomy: ChestAnatomy, center_y: float, semi: np.ndarray) -> float:
    """Posterior push (mm, 0-15) of the heart and great vessels by an anterior mass."""
    front_of_vessels = anatomy.ascending_aorta[1] - anatomy.aorta_r
    return float(np.clip(center_y + semi[1] - front_of_vessels + 4.0, 0.0, 15.0))


def mass_shift_mm(lesion: Lesion, anatomy: ChestAnatomy) -> float:
    """The mass effect of ``lesion`` on ``anatomy`` (mm), non-zero only for anterior lesions."""
    if lesion.compartment != "anterior":
        return 0.0
    semi_y = max(float(abs(n.offset[1]) + n.semi[1]) for n in lesion.nodes)
    return mass_shift_for(anatomy, float(lesion.center[1]), np.array([0.0, semi_y, 0.0]))


# ---------------------------------------------------------------------------------------------


def paint_lesion(lesion: Lesion, canvas: Canvas) -> None:
    """Paint ``lesion`` onto ``canvas`` over cavity tissues only (lung, mediastinal fat)."""
    lo = lesion.center - lesion.half_extent
    hi = lesion.center + lesion.half_extent
    found = canvas.grid.block(lo, hi)
    if found is None:
        return
    sl, g = found
    inside, hu = lesion_values(lesion, g)
    canvas.paint((sl, inside), hu, LESION, only=CAVITY_LABELS)


def lesion_values(lesion: Lesion, g: Grid) -> tuple[np.ndarray, np.ndarray]:
    """Occupancy (bool) and HU (float32, 0 outside) of ``lesion`` at the samples of ``g``.

    Both have the grid's (z, y, x) shape; trilinear interpolation of the baked lesion fields.
    """
    if lesion.rho is None or lesion.hu is None:
        raise ValueError("argument 'lesion': not baked (build lesions with sample_lesion)")
    shape = g.shape
    idx = _frame_index(lesion, g.X, g.Y, g.Z)
    rho = ndimage.map_coordinates(lesion.rho, idx, order=1, mode="constant", cval=2.0)
    inside = rho <= 1.0
    hu = np.zeros(rho.shape, np.float32)
    hu[inside] = ndimage.map_coordinates(lesion.hu, idx[:, inside], order=1, mode="nearest")
    return inside.reshape(shape), hu.reshape(shape)


def _frame_coords(lesion: Lesion, X: np.ndarray, Y: np.ndarray, Z: np.ndarray) -> np.ndarray:
    """Lesion-frame coordinates (3, N) float32 mm of the patient points X, Y, Z (mm)."""
    shape = np.broadcast_shapes(X.shape, Y.shape, Z.shape)
    c, s = math.cos(lesion.angle), math.sin(lesion.angle)
    dx = np.broadcast_to(X - np.float32(lesion.center[0]), shape).ravel()
    dy = np.broadcast_to(Y - np.float32(lesion.center[1]), shape).ravel()
    dz = np.broadcast_to(Z - np.float32(lesion.center[2]), shape).ravel()
    return np.stack([c * dx + s * dy, -s * dx + c * dy, dz]).astype(np.float32)


def _frame_index(lesion: Lesion, X: np.ndarray, Y: np.ndarray, Z: np.ndarray) -> np.ndarray:
    """Fractional indices (3, N) into the lesion-frame grid of patient points X, Y, Z (mm)."""
    half = (lesion.n_field - 1) / 2.0
    q = _frame_coords(lesion, X, Y, Z)
    return q / np.float32(lesion.field_mm) + np.float32(half)


def _envelope_rho(
    nodes: tuple[Node, ...], q: np.ndarray, margin: np.ndarray | float = 0.0
) -> np.ndarray:
    """Normalised radius (<= 1 inside) of the union of ``nodes`` at lesion-frame points ``q``.

    ``q`` is (3, N) mm; ``margin`` (scalar or (N,)) is the fine margin perturbation added to the
    lobulated radius (0: the smooth lobulated envelope, the shape before the margin field).
    """
    rho = np.full(q.shape[1], np.inf, np.float32)
    for node in nodes:
        u = (q - node.offset[:, None].astype(np.float32)) / node.semi[:, None].astype(np.float32)
        r = np.sqrt((u * u).sum(axis=0))
        bump = np.zeros_like(r)
        if node.lobes:
            d = u / np.maximum(r, 1e-6)
            for v, amp, width in node.lobes:
                bump += amp * np.exp((d[0] * v[0] + d[1] * v[1] + d[2] * v[2] - 1.0) / width)
        rho = np.minimum(rho, r / (1.0 + bump + margin))
    return rho


def visible_fraction(lesion: Lesion, anatomy: ChestAnatomy) -> float:
    """Fraction (0-1) of the lesion's volume left visible by the chest phantom.

    ``anatomy`` must be the chest as rendered with this lesion, i.e. with its mass effect
    applied (``replace(anatomy, mass_shift_mm=mass_shift_mm(lesion, patient_anatomy))``, as
    :func:`cohort.sample_subject` does). The lesion's volume is its lobulated envelope without
    the fine margin field (so baked and unbaked lesions give the same answer), sampled on the
    :func:`placement.check_grid` around the lesion; hidden are the parts outside the thoracic
    cavity and those that the heart, vessels, airways, oesophagus or skeleton paint over.
    """
    grid = check_grid(lesion.center, lesion.half_extent)
    q = _frame_coords(lesion, grid.X, grid.Y, grid.Z)
    inside = (_envelope_rho(lesion.nodes, q) <= 1.0).reshape(grid.shape)
    return surviving_fraction(anatomy, grid, inside)


def _bake(lesion: Lesion) -> Lesion:
    """Evaluate the lesion's shape (normalised radius rho) and HU on its lesion-frame grid."""
    n = lesion.n_field
    field_rng = np.random.default_rng(lesion.field_seed)
    texture = _smooth_field(field_rng, n, lesion.texture_px).ravel()
    margin = _smooth_field(field_rng, n, MARGIN_MM / lesion.field_mm).ravel()
    h = lesion.field_mm
    ax = (np.arange(n, dtype=np.float32) - (n - 1) / 2.0) * np.float32(h)
    q = np.stack(np.meshgrid(ax, ax, ax, indexing="ij")).reshape(3, -1)  # lesion frame (mm)
    c, s = math.cos(lesion.angle), math.sin(lesion.angle)
    dy = s * q[0] + c * q[1]  # patient-Y offset from the centre (for the fat-fluid level)

    rho = _envelope_rho(lesion.nodes, q, lesion.irregularity * margin)
    min_semi = min(float(node.semi.min()) for node in lesion.nodes)

    hu = lesion.base_hu + lesion.heterogeneity_hu * texture
    if lesion.fat_fluid_level_mm is not None:
        hu = np.where(dy < lesion.fat_fluid_level_mm, lesion.fat_hu, hu)
    if lesion.necrosis_frac > 0:
        core = rho < lesion.necrosis_frac * (1.0 + 0.3 * margin)
        hu = np.where(core, lesion.necrosis_hu + 0.3 * lesion.heterogeneity_hu * texture, hu)
    for inc in lesion.inclusions:
        e = q - inc.center[:, None].astype(np.float32)
        hu = np.where((e * e).sum(axis=0) <= inc.radius**2, inc.hu, hu)
    if lesion.wall_mm > 0:
        hu = np.where(rho > 1.0 - lesion.wall_mm / min_semi, lesion.wall_hu, hu)
    if lesion.rim_calc is not None:
        v, cos_half, calc_hu = lesion.rim_calc
        norm = np.maximum(np.sqrt((q * q).sum(axis=0)), 1e-6)
        along = (q[0] * v[0] + q[1] * v[1] + q[2] * v[2]) / norm
        hu = np.where((rho > 0.9) & (along > cos_half), calc_hu, hu)
    return replace(
        lesion,
        rho=rho.reshape(n, n, n),
        hu=np.asarray(hu, np.float32).reshape(n, n, n),
    )
