"""Type stub of the C++ extension dmfn.preprocess._core (kept in sync by tests/test_stub.py).

Call the typed, validated API in dmfn.preprocess instead; these entry points assume checked input.
Axes (z, y, x); float32 C-contiguous volumes.
"""

import numpy as np
import numpy.typing as npt

openmp: bool

def pde_denoise(
    volume: npt.ArrayLike,
    k: float,
    dt: float,
    iterations: int,
    three_d: bool,
    fidelity: float,
    spacing_mm: tuple[float, float, float],
    threads: int,
    block: int,
) -> npt.NDArray[np.float32]: ...
def resample(
    volume: npt.ArrayLike,
    out_shape: tuple[int, int, int],
    ratio: tuple[float, float, float],
    order: int,
) -> npt.NDArray[np.float32]: ...
def resample_axes(
    in_shape: tuple[int, int, int],
    out_shape: tuple[int, int, int],
    ratio: tuple[float, float, float],
) -> list[int]: ...
def sample_planes(
    volume: npt.ArrayLike,
    origin: npt.ArrayLike,
    row_step: npt.ArrayLike,
    col_step: npt.ArrayLike,
    size: int,
    fill: float,
) -> npt.NDArray[np.float32]: ...
def window(volume: npt.ArrayLike, level: float, width: float) -> npt.NDArray[np.float32]: ...
def all_finite(values: npt.NDArray[np.float32]) -> bool: ...
def release_cached_memory() -> None: ...
