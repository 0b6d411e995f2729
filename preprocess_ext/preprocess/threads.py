"""OpenMP thread count of the C++ kernels, per calling thread.

The kernels of ``dmfn.preprocess._core`` run OpenMP teams. ``omp_set_num_threads`` sets the team size
of the calling thread's later parallel regions only, so a thread pool calls
:func:`set_openmp_threads` once in each worker (its initializer). The runtime is the one the
extension already loaded (looked up without loading another copy).
"""

from __future__ import annotations

import ctypes
import functools
import logging
import os
from collections.abc import Callable

import dmfn.preprocess._core  # noqa: F401  (loads the OpenMP runtime the kernels are linked against)

log = logging.getLogger(__name__)

#: OpenMP runtimes the extension may be linked against (GCC, LLVM, Intel).
OPENMP_LIBRARIES = ("libgomp.so.1", "libomp.so", "libomp.so.5", "libiomp5.so")


@functools.cache
def _omp_set_num_threads() -> Callable[[int], object] | None:
    """``omp_set_num_threads`` of the OpenMP runtime already loaded in this process, or None."""
    mode = getattr(os, "RTLD_NOLOAD", 0) | getattr(os, "RTLD_LAZY", 0)
    for name in OPENMP_LIBRARIES:
        try:
            return ctypes.CDLL(name, mode=mode).omp_set_num_threads
        except (OSError, AttributeError):
            continue
    log.debug("no OpenMP runtime loaded (extension built without OpenMP?)")
    return None


def has_openmp() -> bool:
    """True if an OpenMP runtime is loaded, i.e. :func:`set_openmp_threads` has an effect."""
    return _omp_set_num_threads() is not None


def set_openmp_threads(n: int) -> bool:
    """Run the calling thread's later OpenMP regions (the C++ kernels) with ``n`` threads.

    ``n`` is an int >= 1. Returns False (and does nothing) if no OpenMP runtime is loaded.
    Kernels with an explicit ``threads`` argument (``denoise_pde``) use that instead.
    """
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise ValueError(f"argument 'n': must be an int >= 1, got {n!r}")
    set_threads = _omp_set_num_threads()
    if set_threads is None:
        return False
    set_threads(n)
    return True
