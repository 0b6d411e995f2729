"""How the PDE defaults were chosen: a sweep on a CT-like phantom (not a test).

    .venv/bin/python benchmarks/pde_defaults.py [--all]

You and Kaveh (IEEE TIP 2000) give no values of k, dt or the number of iterations (nor does any
source we cite for CT), so they are chosen here by measurement. The phantom (:func:`ct_phantom`)
is a deterministic piecewise-constant volume in HU, built in mm and averaged over each voxel
(partial volume), plus Gaussian noise, rounded to integer HU like the wire format: a fat
background (-100 HU), a soft-tissue block (40 HU) holding a contrast-enhanced vessel along z and
a thinner one along x (200 HU), and a lung (-850 HU) holding an airway (-1000 HU) and a
soft-tissue nodule (40 HU). It is sampled at 5.0 x 0.7 x 0.7 mm (thick slices) and 1.0 x 0.7 x
0.7 mm, with noise of SD 15 HU (the targets) and 10 and 25 HU (a robustness check).

Measured against the clean volume, relative to the noisy input's error:

- flat: RMSE over voxels at least ``FLAT_MARGIN_MM`` from every tissue boundary (eroded
  interiors); reported as the reduction ``1 - RMSE(denoised) / RMSE(noisy)``;
- edge: RMSE over voxels whose centre is within ``EDGE_BAND_MM`` of a boundary; reported as the
  ratio ``RMSE(denoised) / RMSE(noisy)``;
- all: RMSE over the whole volume, as the same ratio.

Distances to boundaries are exact (signed distance functions of the boxes, cylinders and
sphere), so no voxel-grid erosion is involved.

Targets: at SD 15 HU, flat reduction >= 40 % and edge ratio <= 1 on both spacings; and, so that
the default does not blur edges on less noisy scans, edge ratio <= 1 at SD 10 and 25 HU too.
The sweep runs the spacing-aware kernel over k x dt x iterations in both modes. The chosen
setting of a mode is the cheapest that meets the targets with a margin: among the settings with
dt <= ``MAX_DEFAULT_DT_FRACTION`` of the mode's bound that meet every target and reduce the flat
RMSE by at least ``DEFAULT_FLAT_REDUCTION`` on both spacings, the one with the fewest iterations
(then the smaller worst whole-volume ratio). The PDE runs on every study the server sees, so
its cost counts: more iterations buy a little more flat smoothing at several times the cost.
The default mode is the one whose choice needs fewer iterations (then the smaller ratio). The kernel runs on one thread in the sweep (on a loaded machine OpenMP
barriers, two per iteration, can dominate small volumes).
"""

from __future__ import annotations

import argparse
import itertools
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

from dmfn.preprocess import denoise_pde, pde_stability_bound

MODES = ("3d", "2d")
#: SD of the Gaussian noise of the targets, HU, and the SDs of the robustness check.
SIGMA_HU = 15.0
CHECK_SIGMAS_HU = (10.0, 25.0)
#: The two acquisitions: thick axial slices and near-isotropic voxels, (z, y, x) mm.
SPACINGS_MM = {"5.0x0.7x0.7": (5.0, 0.7, 0.7), "1.0x0.7x0.7": (1.0, 0.7, 0.7)}
#: Phantom field of view (z, y, x), mm.
EXTENT_MM = (50.0, 56.0, 56.0)
#: Flat region: voxel centres at least this far from every boundary (covers the partial-volume
#: half-slice of 2.5 mm plus 1.5 mm), mm.
FLAT_MARGIN_MM = 4.0
#: Edge band: voxel centres within this distance of a boundary, mm.
EDGE_BAND_MM = 1.5
#: Largest sub-sample step when averaging the continuous phantom over a voxel, mm.
SUBSAMPLE_MM = 0.35
#: Targets (docs/preprocessing.md).
MIN_FLAT_REDUCTION = 0.40
MAX_EDGE_RATIO = 1.0

#: The sweep. dt is in units of h_min^4 (the finest voxel spacing), given as fractions of the
#: mode's bound on isotropic voxels (1/72 in 3D, 1/32 in 2D; the smallest over all spacings).
K_HU = (10.0, 15.0, 20.0, 30.0, 40.0, 60.0, 90.0)
DT_FRACTIONS = (0.5, 0.8, 1.0)
ITERATIONS = (10, 20, 30, 40, 60, 80, 120, 160, 240)
#: A default dt stays at or below this fraction of the bound: at the bound itself the explicit
#: scheme no longer damps the checkerboard mode (amplification |1 - 2 dt / bound| = 1 in the
#: linear regime), and float rounding leaves no margin.
MAX_DEFAULT_DT_FRACTION = 0.8
#: A default reduces the flat RMSE by at least this much on both spacings: a 15-point margin
#: over the 40 % target, for noisier scans than the phantom's.
DEFAULT_FLAT_REDUCTION = 0.55

Point = tuple[np.ndarray, np.ndarray, np.ndarray]  # z, y, x in mm (broadcastable)


def _box(lo: Sequence[float], hi: Sequence[float]) -> Callable[[Point], np.ndarray]:
    """Signed distance (mm) to the axis-aligned box [lo, hi] (z, y, x)."""

    def sdf(p: Point) -> np.ndarray:
        q = [np.abs(c - (a + b) / 2) - (b - a) / 2 for c, a, b in zip(p, lo, hi, strict=True)]
        outside = np.sqrt(sum(np.maximum(d, 0.0) ** 2 for d in q))
        return outside + np.minimum(np.maximum(np.maximum(q[0], q[1]), q[2]), 0.0)

    return sdf


def _cylinder(
    axis: int, centre: Sequence[float], radius: float, lo: float, hi: float
) -> Callable[[Point], np.ndarray]:
    """Signed distance (mm) to a capped cylinder along ``axis`` (0 z, 1 y, 2 x) through
    ``centre`` (z, y, x; the coordinate along ``axis`` is ignored), from ``lo`` to ``hi``."""

    def sdf(p: Point) -> np.ndarray:
        radial = np.sqrt(sum((p[a] - centre[a]) ** 2 for a in range(3) if a != axis)) - radius
        along = np.abs(p[axis] - (lo + hi) / 2) - (hi - lo) / 2
        outside = np.sqrt(np.maximum(radial, 0.0) ** 2 + np.maximum(along, 0.0) ** 2)
        return outside + np.minimum(np.maximum(radial, along), 0.0)

    return sdf


def _sphere(centre: Sequence[float], radius: float) -> Callable[[Point], np.ndarray]:
    def sdf(p: Point) -> np.ndarray:
        return np.sqrt(sum((c - m) ** 2 for c, m in zip(p, centre, strict=True))) - radius

    return sdf


#: The phantom in painting order: (name, HU, signed distance function); the background is fat.
#: Every object lies inside the one painted before it or apart from all others, so every
#: object's surface is a visible tissue boundary.
BACKGROUND_HU = -100.0
OBJECTS = (
    ("soft tissue", 40.0, _box((10, 4, 4), (40, 30, 40))),
    ("vessel z", 200.0, _cylinder(0, (0, 17, 15), 4.5, 10, 40)),
    ("vessel x", 200.0, _cylinder(2, (25, 17, 0), 2.5, 24, 40)),
    ("lung", -850.0, _box((6, 34, 4), (44, 52, 52))),
    ("airway", -1000.0, _cylinder(0, (0, 43, 40), 4.0, 6, 44)),
    ("nodule", 40.0, _sphere((25, 43, 17), 5.0)),
)


def _paint(p: Point) -> np.ndarray:
    shape = np.broadcast_shapes(*(a.shape for a in p))
    hu = np.full(shape, BACKGROUND_HU)
    for _, value, sdf in OBJECTS:
        hu[sdf(p) <= 0] = value
    return hu


@dataclass(frozen=True)
class Phantom:
    """A noisy CT-like phantom and what the metrics need."""

    clean: np.ndarray  # float64 HU, (z, y, x), the voxel averages of the continuous phantom
    noisy: np.ndarray  # float32 HU, clean + noise rounded to integers
    spacing_mm: tuple[float, float, float]
    sigma_hu: float
    flat: np.ndarray  # bool, centres >= FLAT_MARGIN_MM from every boundary
    edge: np.ndarray  # bool, centres within EDGE_BAND_MM of a boundary


def ct_phantom(
    spacing_mm: tuple[float, float, float],
    extent_mm: Sequence[float] = EXTENT_MM,
    sigma_hu: float = SIGMA_HU,
    seed: int = 0,
) -> Phantom:
    """The phantom of this module's docstring at ``spacing_mm`` (z, y, x), deterministic in
    ``seed``. Voxel i covers [i h, (i + 1) h) mm on each axis; the objects sit at fixed mm
    positions, so ``extent_mm`` should cover them (the default does)."""
    shape = tuple(max(1, round(e / h)) for e, h in zip(extent_mm, spacing_mm, strict=True))
    centres = [(np.arange(n) + 0.5) * h for n, h in zip(shape, spacing_mm, strict=True)]
    grid = np.meshgrid(*centres, indexing="ij", sparse=True)
    steps = [max(1, int(np.ceil(h / SUBSAMPLE_MM))) for h in spacing_mm]
    offsets = [((np.arange(m) + 0.5) / m - 0.5) * h for m, h in zip(steps, spacing_mm, strict=True)]
    clean = np.zeros(shape)
    for dz, dy, dx in itertools.product(*offsets):
        clean += _paint((grid[0] + dz, grid[1] + dy, grid[2] + dx))
    clean /= np.prod(steps)
    distance = np.min([np.abs(sdf(tuple(grid))) for _, _, sdf in OBJECTS], axis=0)
    distance = np.broadcast_to(distance, shape)
    noise = np.random.default_rng(seed).normal(0.0, sigma_hu, shape)
    noisy = np.rint(clean + noise).astype(np.float32)
    return Phantom(
        clean,
        noisy,
        tuple(spacing_mm),
        float(sigma_hu),
        distance >= FLAT_MARGIN_MM,
        distance <= EDGE_BAND_MM,
    )


def phantom_set() -> dict[str, Phantom]:
    """Every phantom of the sweep: per spacing, SD 15 HU (named by the spacing) and the check
    SDs (named ``"<spacing> sd<SD>"``)."""
    out = {}
    for name, spacing in SPACINGS_MM.items():
        out[name] = ct_phantom(spacing)
        for sigma in CHECK_SIGMAS_HU:
            out[f"{name} sd{sigma:g}"] = ct_phantom(spacing, sigma_hu=sigma)
    return out


def _rmse(image: np.ndarray, truth: np.ndarray, where: np.ndarray) -> float:
    return float(np.sqrt(np.mean((image[where].astype(np.float64) - truth[where]) ** 2)))


@dataclass(frozen=True)
class Score:
    """The metrics of one denoised phantom, relative to the noisy input."""

    flat_reduction: float  # 1 - RMSE(denoised) / RMSE(noisy) over the flat voxels
    edge_ratio: float  # RMSE(denoised) / RMSE(noisy) over the edge band
    all_ratio: float  # RMSE(denoised) / RMSE(noisy) over the whole volume
    sigma_hu: float  # of the phantom's noise

    @property
    def meets_targets(self) -> bool:
        """Edge ratio <= 1; at SD 15 HU also flat reduction >= 40 %."""
        flat_ok = self.sigma_hu != SIGMA_HU or self.flat_reduction >= MIN_FLAT_REDUCTION
        return flat_ok and self.edge_ratio <= MAX_EDGE_RATIO


def score(denoised: np.ndarray, phantom: Phantom) -> Score:
    """The metrics of ``denoised`` (HU, the phantom's shape) against the clean phantom."""

    def ratio(where: np.ndarray) -> float:
        noisy = _rmse(phantom.noisy, phantom.clean, where)
        return _rmse(denoised, phantom.clean, where) / noisy

    everywhere = np.ones(phantom.clean.shape, bool)
    return Score(
        1.0 - ratio(phantom.flat), ratio(phantom.edge), ratio(everywhere), phantom.sigma_hu
    )


@dataclass(frozen=True)
class Row:
    """One setting and its scores per phantom name."""

    mode: str
    k: float
    dt: float
    iterations: int
    scores: dict[str, Score]

    @property
    def meets_targets(self) -> bool:
        return all(sc.meets_targets for sc in self.scores.values())

    @property
    def worst_all_ratio(self) -> float:
        """The largest whole-volume ratio over the SD 15 HU phantoms."""
        return max(sc.all_ratio for sc in self.scores.values() if sc.sigma_hu == SIGMA_HU)

    @property
    def worst_check_edge(self) -> float:
        """The largest edge ratio over the check phantoms (NaN if none)."""
        ratios = [sc.edge_ratio for sc in self.scores.values() if sc.sigma_hu != SIGMA_HU]
        return max(ratios) if ratios else float("nan")


def dt_values(mode: str) -> tuple[float, ...]:
    """The swept dt of ``mode``: ``DT_FRACTIONS`` of its bound on isotropic voxels."""
    return tuple(f * pde_stability_bound(mode) for f in DT_FRACTIONS)


def sweep(
    phantoms: dict[str, Phantom],
    modes: Sequence[str] = MODES,
    k_values: Sequence[float] = K_HU,
    iterations: Sequence[int] = ITERATIONS,
) -> list[Row]:
    """Every (mode, k, dt, iterations) on every phantom. The iterations of one (mode, k, dt)
    are run as one chain (without fidelity the scheme has no memory of the input, so continuing
    from the result of n iterations equals running the larger count from the start)."""
    rows = []
    for mode, k in itertools.product(modes, k_values):
        for dt in dt_values(mode):
            scores: dict[int, dict[str, Score]] = {n: {} for n in iterations}
            for name, ph in phantoms.items():
                u, done = ph.noisy, 0
                for n in sorted(iterations):
                    u = denoise_pde(u, k, dt, n - done, mode, spacing_mm=ph.spacing_mm, threads=1)
                    done = n
                    scores[n][name] = score(u, ph)
            rows.extend(Row(mode, k, dt, n, scores[n]) for n in iterations)
    return rows


def evaluate(
    phantoms: dict[str, Phantom],
    mode: str,
    k: float,
    dt: float,
    iterations: int,
    spacing_aware: bool = True,
) -> Row:
    """One setting on every phantom; ``spacing_aware=False`` runs the unit voxel grid (params
    version 1)."""
    scores = {}
    for name, ph in phantoms.items():
        spacing = ph.spacing_mm if spacing_aware else None
        u = denoise_pde(ph.noisy, k, dt, iterations, mode, spacing_mm=spacing, threads=1)
        scores[name] = score(u, ph)
    return Row(mode, k, dt, iterations, scores)


def choose(rows: Sequence[Row], mode: str) -> Row | None:
    """The chosen row of ``mode`` (see the module docstring), None if no row qualifies."""
    max_dt = MAX_DEFAULT_DT_FRACTION * pde_stability_bound(mode) * (1 + 1e-9)
    ok = [
        r
        for r in rows
        if r.mode == mode
        and r.dt <= max_dt
        and r.meets_targets
        and min(r.scores[name].flat_reduction for name in SPACINGS_MM) >= DEFAULT_FLAT_REDUCTION
    ]
    if not ok:
        return None
    return min(ok, key=lambda r: (r.iterations, r.worst_all_ratio))


def largest_step(row: Row, phantoms: dict[str, Phantom]) -> Row:
    """``row``'s k and time dt x iterations run with the largest default step
    (``MAX_DEFAULT_DT_FRACTION`` of the bound) and so the fewest iterations; the results depend
    on the time, not on dt (the sweep's dt columns show it), so this is the same setting at
    less cost. ``row`` itself if the rerun misses a target."""
    dt = MAX_DEFAULT_DT_FRACTION * pde_stability_bound(row.mode)
    n = int(np.ceil(row.dt * row.iterations / dt - 1e-9))
    if n >= row.iterations:
        return row
    rerun = evaluate(phantoms, row.mode, row.k, dt, n)
    return rerun if rerun.meets_targets else row


def format_rows(rows: Sequence[Row]) -> str:
    """One line per row: per spacing (SD 15 HU) flat reduction, edge-band and whole-volume
    ratio; then the worst edge ratio at the check SDs."""
    head = f"{'mode':<4} {'k HU':>5} {'dt':>8} {'iter':>4}"
    for name in SPACINGS_MM:
        head += f" | {name + ': flat':>19} {'edge':>5} {'all':>5}"
    head += " | edge@" + "/".join(f"{s:g}" for s in CHECK_SIGMAS_HU)
    lines = [head + " | targets", "-" * (len(head) + 10)]
    for r in rows:
        line = f"{r.mode:<4} {r.k:>5g} {r.dt:>8.5f} {r.iterations:>4d}"
        for name in SPACINGS_MM:
            sc = r.scores[name]
            line += f" | {sc.flat_reduction:>18.1%} {sc.edge_ratio:>6.3f} {sc.all_ratio:>5.3f}"
        line += f" | {r.worst_check_edge:>10.3f}"
        lines.append(line + (" | met" if r.meets_targets else " |"))
    return "\n".join(lines)


def format_grid(rows: Sequence[Row], mode: str, dt: float, name: str) -> str:
    """k (rows) x iterations (columns) of one mode, dt and spacing (SD 15 HU): "flat% edge"
    per cell; "*" where the row meets every target, "+" where it meets those at SD 15 HU on
    both spacings but blurs edges at a check SD."""
    cells = {(r.k, r.iterations): r for r in rows if r.mode == mode and r.dt == dt}
    ks = sorted({k for k, _ in cells})
    its = sorted({n for _, n in cells})
    lines = [f"{mode}, dt = {dt:.5f}, {name} mm, SD {SIGMA_HU:g} HU: flat reduction % / edge ratio"]
    lines.append(f"{'k HU':>5} |" + "".join(f"{f'{n} it':>13}" for n in its))
    for k in ks:
        line = f"{k:>5g} |"
        for n in its:
            r = cells[(k, n)]
            sc = r.scores[name]
            main_ok = all(r.scores[m].meets_targets for m in SPACINGS_MM)
            mark = "*" if r.meets_targets else "+" if main_ok else " "
            line += f"{sc.flat_reduction * 100:>6.1f} {sc.edge_ratio:>5.3f}{mark}"
        lines.append(line)
    return "\n".join(lines)


#: Typical crops: a 40 mm lesion with the 10 mm margin on each side (60 mm), and an 80 mm one
#: (100 mm), at 0.7 mm pixels and 5 mm or 1 mm slices: (z, y, x) voxels and spacing.
TYPICAL_CROPS = (
    ((12, 86, 86), (5.0, 0.7, 0.7)),
    ((60, 86, 86), (1.0, 0.7, 0.7)),
    ((20, 143, 143), (5.0, 0.7, 0.7)),
    ((100, 143, 143), (1.0, 0.7, 0.7)),
)


def study_cost_ms(
    row: Row,
    shape: tuple[int, int, int],
    spacing_mm: tuple[float, float, float],
    threads: int | None,
    repeats: int = 7,
) -> float:
    """Best wall time (ms) of ``denoise_pde`` with ``row``'s settings on a noisy soft-tissue
    crop of ``shape`` (z, y, x) voxels; ``threads`` None: the OpenMP default."""
    volume = np.random.default_rng(1).normal(40.0, SIGMA_HU, shape).astype(np.float32)
    best = np.inf
    for _ in range(repeats):
        start = time.perf_counter()
        denoise_pde(
            volume, row.k, row.dt, row.iterations, row.mode, spacing_mm=spacing_mm, threads=threads
        )
        best = min(best, time.perf_counter() - start)
    return best * 1e3


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--all", action="store_true", help="also print every row as a list")
    args = parser.parse_args(argv)
    start = time.perf_counter()
    phantoms = phantom_set()
    for name, ph in phantoms.items():
        print(
            f"phantom {name}: shape {ph.noisy.shape}, {ph.flat.sum()} flat and "
            f"{ph.edge.sum()} edge-band voxels, noisy RMSE flat "
            f"{_rmse(ph.noisy, ph.clean, ph.flat):.2f} HU, edge "
            f"{_rmse(ph.noisy, ph.clean, ph.edge):.2f} HU"
        )
    rows = sweep(phantoms)
    print(f"\n{len(rows)} settings swept, {sum(r.meets_targets for r in rows)} meet every target")
    if args.all:
        print(format_rows(rows))
    for mode in MODES:
        for dt in dt_values(mode):
            for name in SPACINGS_MM:
                print()
                print(format_grid(rows, mode, dt, name))
    chosen = {mode: choose(rows, mode) for mode in MODES}
    found = [r for r in chosen.values() if r is not None]
    print(
        f"\nchosen per mode (dt <= {MAX_DEFAULT_DT_FRACTION:g} x bound, every target met, flat "
        f"reduction >= {DEFAULT_FLAT_REDUCTION:.0%} on both spacings, fewest iterations), then the "
        f"same k and time dt x iterations at dt = {MAX_DEFAULT_DT_FRACTION:g} x bound:"
    )
    if not found:
        print("no setting meets the targets")
        return 1
    steps = [largest_step(r, phantoms) for r in found]
    print(format_rows([r for pair in zip(found, steps, strict=True) for r in pair]))
    best = min(steps, key=lambda r: (r.iterations, r.worst_all_ratio))
    print(
        f"\nchosen default: mode {best.mode}, k {best.k:g} HU, dt {best.dt:.6g}, "
        f"{best.iterations} iterations"
    )
    print("\n3d vs 2d: each mode's choice run in the other mode at the same k and time dt x it,")
    print(f"each with its step dt = {MAX_DEFAULT_DT_FRACTION:g} x bound:")
    comparison = []
    for c in steps:
        other = "2d" if c.mode == "3d" else "3d"
        dt = MAX_DEFAULT_DT_FRACTION * pde_stability_bound(other)
        twin = evaluate(phantoms, other, c.k, dt, round(c.dt * c.iterations / dt))
        comparison += [c, twin] if c.mode == "3d" else [twin, c]
    print(format_rows(comparison))
    print("\nthe previous defaults (3d, k 20, dt 0.0125, 20 iterations), spacing-aware and on the")
    print("unit voxel grid (params version 1):")
    print(format_rows([evaluate(phantoms, "3d", 20.0, 0.0125, 20, a) for a in (True, False)]))
    print("\ncost per study of the chosen default (denoise_pde, best of 7), ms:")
    for shape, spacing in TYPICAL_CROPS:
        one = study_cost_ms(best, shape, spacing, 1)
        default = study_cost_ms(best, shape, spacing, None)
        print(f"  crop {shape} at {spacing} mm: 1 thread {one:.1f}, default threads {default:.1f}")
    print(
        f"\nbounds on isotropic voxels: 3d {pde_stability_bound('3d'):.5f}, "
        f"2d {pde_stability_bound('2d'):.5f}"
    )
    print(f"took {time.perf_counter() - start:.1f} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
