"""Analytic chest phantom for the synthetic cohort: anatomy in patient millimetres, rendered in HU.

Patient frame (DICOM LPS, the frame of every coordinate in this package): X grows to the
patient's left, Y to the back (posterior), Z to the head (superior); the origin is the middle of
the mediastinum at the level of the pulmonary-trunk bifurcation. Arrays are (z, y, x).

The phantom is a set of analytic shapes (elliptic cylinders, ellipsoids, tubes along polylines)
painted in a fixed order onto a :class:`Canvas`, each voxel also receiving a tissue label so that a
lesion painted in between knows what it displaced and what was painted over it. Values are
textbook contrast-enhanced (60-65 s) attenuations from ``reference/ct_appearance.md``.

Painting order: air -> body (subcutaneous fat) -> chest-wall muscle -> abdomen below the diaphragm
-> thoracic cavity (lungs, mediastinal fat) -> lung vessels -> LESION (optional callback) -> heart,
great vessels, airways, oesophagus, spine, paraspinal muscles, ribs, sternum. Structures painted
after the lesion stay intact, so lesions abut or encase them instead of replacing them.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

# Tissue labels of the label volume (uint8).
AIR, FAT, MUSCLE, LUNG, MED_FAT, LUNG_VESSEL, LESION = 0, 1, 2, 3, 4, 5, 6
HEART, BLOOD, AIRWAY, SOFT, BONE, ABDOMEN = 7, 8, 9, 10, 11, 12
#: Labels a lesion may occupy: the inside of the thoracic cavity.
CAVITY_LABELS = (LUNG, MED_FAT, LUNG_VESSEL)

AIR_HU = -1000.0
#: A point or a triple of semi-axes, (x, y, z) mm.
Point = tuple[float, float, float]


@dataclass(frozen=True)
class Grid:
    """Sampling positions of a (z, y, x) block in patient mm.

    ``X`` and ``Y`` have shape (1, ny, nx) (an in-plane rotation couples them), ``Z`` has shape
    (nz, 1, 1): axial slices are always perpendicular to the patient's long axis.
    """

    X: np.ndarray
    Y: np.ndarray
    Z: np.ndarray

    @property
    def shape(self) -> tuple[int, int, int]:
        return (self.Z.shape[0], self.X.shape[1], self.X.shape[2])

    def block(
        self, lo: np.ndarray, hi: np.ndarray
    ) -> tuple[tuple[slice, slice, slice], Grid] | None:
        """The sub-grid whose samples can fall inside the patient box [lo, hi] (mm, (x, y, z)).

        Returns the index slices into this grid and the sub-grid, or None if the box misses it.
        """
        inplane = (self.X >= lo[0]) & (self.X <= hi[0]) & (self.Y >= lo[1]) & (self.Y <= hi[1])
        rows = np.flatnonzero(inplane.any(axis=(0, 2)))
        cols = np.flatnonzero(inplane.any(axis=(0, 1)))
        zs = np.flatnonzero((self.Z[:, 0, 0] >= lo[2]) & (self.Z[:, 0, 0] <= hi[2]))
        if rows.size == 0 or cols.size == 0 or zs.size == 0:
            return None
        sl = (
            slice(int(zs[0]), int(zs[-1]) + 1),
            slice(int(rows[0]), int(rows[-1]) + 1),
            slice(int(cols[0]), int(cols[-1]) + 1),
        )
        sub = Grid(self.X[:, sl[1], sl[2]], self.Y[:, sl[1], sl[2]], self.Z[sl[0]])
        return sl, sub


def make_grid(
    x_mm: np.ndarray, y_mm: np.ndarray, z_mm: np.ndarray, angle_rad: float, shift_mm: np.ndarray
) -> Grid:
    """Grid of patient positions for scanner positions ``x_mm`` (nx,), ``y_mm`` (ny,), ``z_mm`` (nz,).

    The patient lies rotated by ``angle_rad`` about Z and shifted by ``shift_mm`` (x, y, z) in the
    scanner: scanner = R(angle) @ patient + shift, so patient = R(-angle) @ (scanner - shift).
    """
    c, s = math.cos(angle_rad), math.sin(angle_rad)
    xs = np.asarray(x_mm, np.float32)[None, None, :] - np.float32(shift_mm[0])
    ys = np.asarray(y_mm, np.float32)[None, :, None] - np.float32(shift_mm[1])
    X = (c * xs + s * ys).astype(np.float32)
    Y = (-s * xs + c * ys).astype(np.float32)
    Z = (np.asarray(z_mm, np.float32) - np.float32(shift_mm[2]))[:, None, None]
    return Grid(X, Y, Z)


# ---------------------------------------------------------------------------------------------
# Shapes. Each returns (slices, mask) with mask broadcastable to the block, or None.

Region = tuple[tuple[slice, slice, slice], np.ndarray]


def ellipse_cylinder(
    g: Grid,
    cx: float,
    cy: float,
    ax: float,
    ay: float,
    z_lo: float = -np.inf,
    z_hi: float = np.inf,
    angle: float = 0.0,
) -> Region | None:
    """Elliptic cylinder along Z: centre (cx, cy), semi-axes (ax, ay) mm, rotated by ``angle``."""
    r = max(ax, ay)
    found = g.block(np.array([cx - r, cy - r, z_lo]), np.array([cx + r, cy + r, z_hi]))
    if found is None:
        return None
    sl, b = found
    c, s = math.cos(angle), math.sin(angle)
    dx, dy = b.X - cx, b.Y - cy
    u, v = (c * dx + s * dy) / ax, (-s * dx + c * dy) / ay
    return sl, (u * u + v * v <= 1.0) & np.ones((b.Z.shape[0], 1, 1), bool)


def ellipsoid(
    g: Grid,
    center: tuple[float, float, float],
    semi: tuple[float, float, float],
    angle: float = 0.0,
) -> Region | None:
    """Ellipsoid with semi-axes (ax, ay, az) mm, rotated by ``angle`` about Z."""
    r = max(semi[0], semi[1])
    lo = np.array([center[0] - r, center[1] - r, center[2] - semi[2]])
    hi = np.array([center[0] + r, center[1] + r, center[2] + semi[2]])
    found = g.block(lo, hi)
    if found is None:
        return None
    sl, b = found
    q = ellipsoid_radius(b, center, semi, angle)
    return sl, q <= 1.0


def ellipsoid_radius(
    g: Grid, center: tuple[float, float, float], semi: tuple[float, float, float], angle: float
) -> np.ndarray:
    """Normalised squared radius ((u/ax)^2 + (v/ay)^2 + (w/az)^2) of every sample of ``g``."""
    c, s = math.cos(angle), math.sin(angle)
    dx, dy, dz = g.X - center[0], g.Y - center[1], g.Z - center[2]
    u = (c * dx + s * dy) / semi[0]
    v = (-s * dx + c * dy) / semi[1]
    w = dz / semi[2]
    return u * u + v * v + w * w


def tube(
    g: Grid, start: Point | np.ndarray, end: Point | np.ndarray, radius: float
) -> Region | None:
    """Straight tube (capsule) of ``radius`` mm from point ``start`` to point ``end`` (x, y, z
    mm)."""
    a, b = np.asarray(start, np.float32), np.asarray(end, np.float32)
    found = g.block(np.minimum(a, b) - radius, np.maximum(a, b) + radius)
    if found is None:
        return None
    sl, blk = found
    d = b - a
    dd = float(d @ d) or 1.0
    px, py, pz = blk.X - a[0], blk.Y - a[1], blk.Z - a[2]
    t = np.clip((px * d[0] + py * d[1] + pz * d[2]) / dd, 0.0, 1.0)
    ex, ey, ez = px - t * d[0], py - t * d[1], pz - t * d[2]
    return sl, ex * ex + ey * ey + ez * ez <= radius * radius


def _scaled(semi: Point, factor: float) -> Point:
    """Semi-axes ``semi`` (mm) times ``factor``."""
    return (semi[0] * factor, semi[1] * factor, semi[2] * factor)


def _widened(semi: Point, margin_mm: float) -> Point:
    """Semi-axes ``semi`` (mm) each ``margin_mm`` longer."""
    return (semi[0] + margin_mm, semi[1] + margin_mm, semi[2] + margin_mm)


def polyline_tubes(g: Grid, points: np.ndarray, radius: float) -> list[Region]:
    """Consecutive tubes along the polyline ``points`` (N, 3) mm."""
    out = []
    for a, b in itertools.pairwise(points):
        r = tube(g, a, b, radius)
        if r is not None:
            out.append(r)
    return out


class Canvas:
    """HU (float32) and tissue-label (uint8) volumes being painted, both (z, y, x)."""

    def __init__(self, grid: Grid) -> None:
        self.grid = grid
        self.hu = np.full(grid.shape, AIR_HU, np.float32)
        self.label = np.zeros(grid.shape, np.uint8)

    def paint(
        self,
        region: Region | None,
        value: float | np.ndarray,
        label: int,
        only: tuple[int, ...] | None = None,
    ) -> None:
        """Set HU ``value`` and ``label`` inside ``region``; with ``only``, just over those labels."""
        if region is None:
            return
        sl, mask = region
        lab = self.label[sl]
        mask = np.broadcast_to(mask, lab.shape)
        if only is not None:
            mask = mask & np.isin(lab, only)
        hu = self.hu[sl]
        if isinstance(value, np.ndarray):
            hu[mask] = np.broadcast_to(value, lab.shape)[mask]
        else:
            hu[mask] = value
        lab[mask] = label

    def paint_all(self, regions: list[Region], value: float, label: int) -> None:
        for r in regions:
            self.paint(r, value, label)


# ---------------------------------------------------------------------------------------------
# The patient.


@dataclass(frozen=True)
class ChestAnatomy:
    """Patient-level anatomy (mm, HU); sampled once per patient, shared by all its images."""

    body_ax: float  # body half-width
    body_ay: float  # body half-depth (antero-posterior)
    body_cy: float  # body centre Y
    fat_mm: float  # subcutaneous fat thickness
    muscle_mm: float  # chest-wall muscle thickness
    fat_hu: float
    muscle_hu: float
    lung_hu: float  # non-dependent lung parenchyma; the dependent (posterior) lung is denser
    blood_hu: float  # aorta / left heart at 60-65 s
    pa_hu: float  # pulmonary arteries / right heart
    vein_hu: float  # superior vena cava, brachiocephalic vein, azygos
    myocardium_hu: float
    liver_hu: float
    cancellous_hu: float
    cortical_hu: float
    heart_scale: float
    aorta_r: float
    #: posterior displacement (mm) of the heart and great vessels by an anterior mass.
    mass_shift_mm: float = 0.0
    lung_vessels: tuple[tuple[tuple[float, ...], tuple[float, ...], float], ...] = field(
        default=(), repr=False
    )

    @property
    def cavity_ax(self) -> float:
        return self.body_ax - self.fat_mm - self.muscle_mm - 12.0

    @property
    def cavity_ay(self) -> float:
        return self.body_ay - self.fat_mm - 14.0

    @property
    def cavity_front_y(self) -> float:
        """Y of the back of the sternum (front of the thoracic cavity) at the midline."""
        return self.body_cy - self.cavity_ay

    @property
    def ascending_aorta(self) -> tuple[float, float]:
        return (-4.0, -15.0 + self.mass_shift_mm)

    @property
    def spine_center(self) -> tuple[float, float]:
        return (0.0, self.body_cy + self.cavity_ay - 35.0)

    SPINE_R = (20.0, 17.0)

    def compartment_of(self, point_mm: tuple[float, float, float]) -> str:
        """Mediastinal compartment of a patient point (x, y, z mm), a simplified ITMIG rule.

        Anterior: in front of the ascending aorta / heart (Y below the aorta's front wall).
        Posterior (paravertebral): behind a line 10 mm behind the front of the vertebral bodies.
        Middle: in between.
        """
        y = point_mm[1]
        anterior_limit = self.ascending_aorta[1] - self.aorta_r
        posterior_limit = self.spine_center[1] - self.SPINE_R[1] + 10.0
        if y < anterior_limit:
            return "anterior"
        if y > posterior_limit:
            return "posterior"
        return "middle"


def sample_anatomy(rng: np.random.Generator, sex: str) -> ChestAnatomy:
    """Draw one patient's chest (sizes in mm, values in HU); ``sex`` is "M" or "F"."""
    male = sex == "M"
    body_ax = rng.normal(162.0 if male else 148.0, 10.0)
    body_ay = rng.normal(108.0 if male else 100.0, 7.0)
    blood = rng.uniform(150.0, 250.0)
    return ChestAnatomy(
        body_ax=float(np.clip(body_ax, 125.0, 195.0)),
        body_ay=float(np.clip(body_ay, 85.0, 130.0)),
        body_cy=15.0,
        fat_mm=float(rng.uniform(6.0, 22.0) + (4.0 if not male else 0.0)),
        muscle_mm=float(rng.uniform(7.0, 14.0)),
        fat_hu=float(rng.uniform(-115.0, -90.0)),
        muscle_hu=float(rng.uniform(40.0, 60.0)),
        lung_hu=float(rng.uniform(-890.0, -840.0)),
        blood_hu=float(blood),
        pa_hu=float(np.clip(blood + rng.normal(0.0, 20.0), 140.0, 260.0)),
        vein_hu=float(rng.uniform(120.0, 220.0)),
        myocardium_hu=float(rng.uniform(85.0, 115.0)),
        liver_hu=float(rng.uniform(95.0, 125.0)),
        cancellous_hu=float(rng.uniform(200.0, 350.0)),
        cortical_hu=float(rng.uniform(700.0, 1100.0)),
        heart_scale=float(rng.uniform(0.9, 1.1)),
        aorta_r=float(rng.uniform(13.0, 17.0)),
        lung_vessels=_sample_lung_vessels(rng),
    )


def _sample_lung_vessels(
    rng: np.random.Generator,
) -> tuple[tuple[tuple[float, ...], tuple[float, ...], float], ...]:
    """A three-generation branching vessel tree per lung from its hilum: (start, end, radius)."""
    segments = []
    for side in (-1.0, 1.0):
        hilum = np.array([side * 48.0, 15.0, 5.0])
        stack = []
        for k in range(3):
            azimuth = rng.uniform(-0.6, 0.6)
            elevation = (-1.0, 0.0, 1.0)[k] * 0.9 + rng.normal(0.0, 0.2)
            d = np.array(
                [
                    side * math.cos(elevation) * math.cos(azimuth),
                    math.sin(azimuth),
                    math.sin(elevation),
                ]
            )
            stack.append((hilum, d, 5.0, 0))
        while stack:
            start, d, radius, gen = stack.pop()
            length = rng.uniform(28.0, 45.0) * (0.8**gen)
            end = start + d * length
            segments.append((tuple(start.tolist()), tuple(end.tolist()), radius))
            if gen < 2:
                for _ in range(2):
                    nd = d + rng.normal(0.0, 0.45, 3)
                    nd /= np.linalg.norm(nd)
                    stack.append((end, nd, radius * 0.65, gen + 1))
    return tuple(segments)


LesionPainter = Callable[[Canvas], None]


def render_chest(
    anatomy: ChestAnatomy, grid: Grid, lesion_painter: LesionPainter | None = None
) -> Canvas:
    """Paint the phantom on ``grid``; ``lesion_painter(canvas)`` runs between lungs and organs.

    Returns the canvas: ``hu`` (float32 HU, noise-free, unblurred) and ``label`` (tissue labels).
    """
    a = anatomy
    cv = Canvas(grid)
    g = grid
    Z = g.Z

    # Body wall: subcutaneous fat, then muscle, then (posterior) paraspinal muscles.
    cv.paint(ellipse_cylinder(g, 0.0, a.body_cy, a.body_ax, a.body_ay), a.fat_hu, FAT)
    cv.paint(
        ellipse_cylinder(g, 0.0, a.body_cy, a.body_ax - a.fat_mm, a.body_ay - a.fat_mm),
        a.muscle_hu,
        MUSCLE,
    )
    for side in (-1.0, 1.0):  # pectoral muscles
        cv.paint(
            ellipse_cylinder(g, side * 60.0, a.body_cy - a.body_ay + a.fat_mm + 8.0, 45.0, 9.0),
            a.muscle_hu,
            MUSCLE,
            only=(FAT,),
        )

    # Abdomen below the diaphragm domes (liver on the right, spleen/stomach on the left).
    dome_r = -95.0 - 0.004 * ((g.X + 50.0) ** 2 + (g.Y - 10.0) ** 2)
    dome_l = -108.0 - 0.004 * ((g.X - 50.0) ** 2 + (g.Y - 10.0) ** 2)
    diaphragm = np.maximum(dome_r, dome_l)  # (1, ny, nx): Z of the diaphragm surface
    cav_scale = _apex_scale(Z)  # (nz, 1, 1): cavity narrows towards the lung apices
    u = g.X / a.cavity_ax
    v = (g.Y - a.body_cy) / a.cavity_ay
    in_cavity_xy = (u * u + v * v) <= cav_scale * cav_scale
    full = (slice(None), slice(None), slice(None))
    below = in_cavity_xy & (Z < diaphragm)
    cv.paint((full, below & (g.X < 10.0)), a.liver_hu, ABDOMEN)
    cv.paint((full, below & (g.X >= 10.0)), a.muscle_hu - 5.0, ABDOMEN)

    # Thoracic cavity: lungs, with the mediastinum between them filled with fat.
    cavity = in_cavity_xy & (Z >= diaphragm)
    heart_c = (18.0, -12.0 + a.mass_shift_mm, -58.0)
    heart_semi = _scaled((54.0, 40.0, 52.0), a.heart_scale)
    med = _mediastinum_envelope(g, a) | (
        ellipsoid_radius(g, heart_c, _widened(heart_semi, 6.0), -0.5) <= 1.0
    )
    lung_hu = a.lung_hu + 70.0 * np.clip((g.Y - a.cavity_front_y) / (2.0 * a.cavity_ay), 0, 1)
    cv.paint((full, cavity & ~med), lung_hu, LUNG)
    cv.paint((full, cavity & med), a.fat_hu + 5.0, MED_FAT)
    for start, end, radius in a.lung_vessels:
        cv.paint(tube(g, np.array(start), np.array(end), radius), 60.0, LUNG_VESSEL, only=(LUNG,))

    if lesion_painter is not None:
        lesion_painter(cv)

    _paint_heart_and_vessels(cv, a, heart_c, heart_semi)
    _paint_airways_and_oesophagus(cv, a)
    _paint_skeleton(cv, a)
    return cv


def _apex_scale(Z: np.ndarray) -> np.ndarray:
    """Relative cavity size per Z: 1 up to Z=60 mm, closing towards the apices at Z=175 mm."""
    t = np.clip((Z - 60.0) / 115.0, 0.0, 1.0)
    return np.sqrt(np.clip(1.0 - t * t, 0.0, 1.0)).astype(np.float32)


def _mediastinum_envelope(g: Grid, a: ChestAnatomy) -> np.ndarray:
    """The mediastinum above the heart: a band between the lungs, wider behind the sternum."""
    top = a.cavity_front_y
    bottom = a.spine_center[1] + 5.0
    depth = np.clip((g.Y - top) / (bottom - top), 0.0, 1.0)
    half_width = 18.0 + 16.0 * np.sin(np.pi * depth) + 6.0 * depth
    inside = (np.abs(g.X - 4.0) <= half_width) & (g.Y >= top - 5.0) & (g.Y <= bottom + 25.0)
    return inside & np.ones((g.Z.shape[0], 1, 1), bool)


def _paint_heart_and_vessels(
    cv: Canvas,
    a: ChestAnatomy,
    heart_c: tuple[float, float, float],
    heart_semi: Point,
) -> None:
    g, s = cv.grid, a.mass_shift_mm
    angle = -0.5
    heart = ellipsoid(g, heart_c, heart_semi, angle)
    cv.paint(heart, a.myocardium_hu, HEART)
    inner = _scaled(heart_semi, 0.78)
    chambers = ellipsoid(g, heart_c, inner, angle)
    if chambers is not None:
        sl, mask = chambers
        b = Grid(g.X[:, sl[1], sl[2]], g.Y[:, sl[1], sl[2]], g.Z[sl[0]])
        # Septum: a plane through the heart's centre; left heart (aorta value) posterior-left.
        side = (b.X - heart_c[0]) * 0.8 + (b.Y - heart_c[1]) * 0.6
        cv.paint((sl, mask & (side > 3.0)), a.blood_hu, BLOOD)
        cv.paint((sl, mask & (side < -3.0)), a.pa_hu, BLOOD)

    ax, ay = a.ascending_aorta
    desc = (22.0, a.spine_center[1] - 20.0)
    r = a.aorta_r
    arch_z = 52.0
    arch = [
        (ax, ay, -20.0),
        (ax, ay, arch_z - 12.0),
        (ax + 4.0, ay + 12.0, arch_z),
        (ax + 14.0, ay + 32.0 + 0.3 * (desc[1] - ay - 32.0), arch_z + 3.0),
        (desc[0], desc[1] - 5.0, arch_z - 6.0),
        (desc[0], desc[1], arch_z - 20.0),
        (desc[0], desc[1], -250.0),
    ]
    cv.paint_all(polyline_tubes(g, np.array(arch), r), a.blood_hu, BLOOD)
    cv.paint_all(  # descending aorta is narrower
        polyline_tubes(
            g, np.array([(desc[0], desc[1], arch_z - 20.0), (desc[0], desc[1], -250.0)]), r * 0.8
        ),
        a.blood_hu,
        BLOOD,
    )
    for dx, dy, rr in ((-10.0, 2.0, 6.0), (4.0, 6.0, 5.0), (14.0, 12.0, 5.5)):  # arch branches
        cv.paint(
            tube(g, (ax + dx, ay + dy + 8.0, arch_z), (ax + dx * 1.5, ay + dy, 250.0), rr),
            a.blood_hu,
            BLOOD,
        )
    # Pulmonary trunk and arteries.
    trunk = np.array([(20.0, -20.0 + s, -20.0), (18.0, -8.0 + s, 5.0), (12.0, 5.0 + s, 10.0)])
    cv.paint_all(polyline_tubes(g, trunk, 13.0), a.pa_hu, BLOOD)
    cv.paint_all(
        polyline_tubes(
            g, np.array([(12.0, 5.0 + s, 10.0), (-20.0, 10.0 + s, 8.0), (-55.0, 18.0, 4.0)]), 9.5
        ),
        a.pa_hu,
        BLOOD,
    )
    cv.paint_all(
        polyline_tubes(
            g, np.array([(12.0, 5.0 + s, 10.0), (35.0, 15.0 + s, 14.0), (55.0, 25.0, 10.0)]), 9.0
        ),
        a.pa_hu,
        BLOOD,
    )
    # Veins: superior vena cava, left brachiocephalic vein, azygos.
    svc = (-24.0, -10.0 + s)
    cv.paint(
        tube(g, (svc[0], svc[1], -30.0), (svc[0] - 3.0, svc[1] - 5.0, 250.0), 10.0),
        a.vein_hu,
        BLOOD,
    )
    cv.paint(tube(g, (svc[0], svc[1] - 5.0, 72.0), (45.0, -25.0 + s, 80.0), 6.0), a.vein_hu, BLOOD)
    cv.paint(
        tube(g, (-10.0, desc[1] + 5.0, -250.0), (-10.0, desc[1] + 5.0, 30.0), 4.0), a.vein_hu, BLOOD
    )


def _paint_airways_and_oesophagus(cv: Canvas, a: ChestAnatomy) -> None:
    g = cv.grid
    ty = 12.0
    carina = (0.0, ty + 6.0, 22.0)
    for radius, value, label in ((10.5, a.muscle_hu - 10.0, SOFT), (8.5, AIR_HU, AIRWAY)):
        cv.paint(tube(g, (0.0, ty, 250.0), carina, radius), value, label)
        cv.paint(tube(g, carina, (-32.0, ty + 12.0, 8.0), radius * 0.72), value, label)
        cv.paint(tube(g, carina, (36.0, ty + 16.0, -2.0), radius * 0.68), value, label)
    oy = a.spine_center[1] - 28.0
    cv.paint(tube(g, (6.0, oy, 250.0), (12.0, oy + 4.0, -250.0), 8.5), a.muscle_hu - 5.0, SOFT)
    cv.paint(tube(g, (6.0, oy, 250.0), (12.0, oy + 4.0, -250.0), 2.0), AIR_HU + 100.0, AIRWAY)


def _paint_skeleton(cv: Canvas, a: ChestAnatomy) -> None:
    g = cv.grid
    sx, sy = a.spine_center
    rx, ry = a.SPINE_R
    # Paraspinal muscles first, bones over them.
    for side in (-1.0, 1.0):
        cv.paint(ellipse_cylinder(g, side * 36.0, sy + 40.0, 22.0, 18.0), a.muscle_hu, MUSCLE)
    # Vertebral bodies with 2 mm cortex, intervertebral discs every 27 mm.
    body = ellipse_cylinder(g, sx, sy, rx, ry)
    cv.paint(body, a.cortical_hu, BONE)
    cv.paint(ellipse_cylinder(g, sx, sy, rx - 2.0, ry - 2.0), a.cancellous_hu, BONE)
    if body is not None:
        sl, mask = body
        disc = (np.mod(g.Z[sl[0]], 27.0) < 6.0) & mask
        cv.paint((sl, disc), 85.0, SOFT)
    # Posterior arch: ring around the canal, spinous and transverse processes.
    cy = sy + ry + 11.0
    cv.paint(ellipse_cylinder(g, sx, cy, 14.0, 13.0), a.cortical_hu * 0.7, BONE)
    cv.paint(ellipse_cylinder(g, sx, cy + 18.0, 4.5, 12.0), a.cortical_hu * 0.7, BONE)
    for side in (-1.0, 1.0):
        cv.paint(
            ellipse_cylinder(g, side * 24.0, cy - 2.0, 13.0, 5.0, angle=side * 0.3),
            a.cortical_hu * 0.7,
            BONE,
        )
    cv.paint(ellipse_cylinder(g, sx, cy, 8.0, 7.5), 15.0, SOFT)  # spinal canal (CSF / cord)

    # Sternum: cortical shell, cancellous core.
    st_y = a.cavity_front_y - 7.0
    cv.paint(ellipse_cylinder(g, 0.0, st_y, 18.0, 7.0, -125.0, 95.0), a.cortical_hu, BONE)
    cv.paint(ellipse_cylinder(g, 0.0, st_y, 15.5, 4.5, -125.0, 95.0), a.cancellous_hu, BONE)

    _paint_ribs(cv, a)


def _paint_ribs(cv: Canvas, a: ChestAnatomy) -> None:
    """Ribs: tubes hugging the cavity wall, sloping 95 mm down from the spine to the front.

    Each rib is evaluated in polar coordinates around the cavity centre: angle from the back
    midline, radial distance to the cavity wall and height above the rib's centre line.
    """
    g = cv.grid
    dx, dy = g.X, g.Y - a.body_cy
    theta = np.arctan2(np.abs(dx), dy)  # 0 at the back midline, pi at the sternum
    ang = np.arctan2(dy / a.cavity_ay, dx / a.cavity_ax)
    wall_r = np.hypot(a.cavity_ax * np.cos(ang), a.cavity_ay * np.sin(ang))
    radial = np.hypot(dx, dy) - wall_r - 6.0  # 0 on the rib's centre line, just outside the cavity
    span = (theta > 0.35) & (theta < 2.55)
    cartilage = (theta >= 2.55) & (theta < 2.9)
    near = ((np.abs(radial) < 7.0) & (span | cartilage))[0]
    if not near.any():
        return
    # Work on the (z, pixel) table of the in-plane pixels near the ribs only.
    pix = np.flatnonzero(near)
    theta_n = theta[0].ravel()[pix]
    radial_n = radial[0].ravel()[pix]
    cart_n = cartilage[0].ravel()[pix]
    drop = 95.0 * (theta_n / np.pi) ** 1.3
    z = g.Z[:, 0, :]  # (nz, 1)
    z_lo, z_hi = float(z.min()), float(z.max())
    value = np.full((z.shape[0], pix.size), np.nan, np.float32)
    for k in range(-6, 11):
        z0 = 12.0 + 27.0 * k
        if z0 + 8.0 < z_lo or z0 - 110.0 > z_hi:
            continue
        h = z - (z0 - drop)
        shell = (radial_n / 5.0) ** 2 + (h / 6.5) ** 2 <= 1.0
        core = (radial_n / 3.2) ** 2 + (h / 4.5) ** 2 <= 1.0
        value = np.where(shell, np.where(cart_n, 120.0, a.cortical_hu), value)
        value = np.where(core & ~cart_n, a.cancellous_hu, value)
    hit = ~np.isnan(value)
    if not hit.any():
        return
    nz = z.shape[0]
    hu = cv.hu.reshape(nz, -1)
    lab = cv.label.reshape(nz, -1)
    sub_hu, sub_lab = hu[:, pix], lab[:, pix]
    sub_hu[hit] = value[hit]
    sub_lab[hit] = np.where(np.broadcast_to(cart_n, hit.shape)[hit], SOFT, BONE)
    hu[:, pix], lab[:, pix] = sub_hu, sub_lab
