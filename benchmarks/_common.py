"""Helpers shared by the benchmark scripts (imported as ``_common``: the scripts run from this
folder, which Python puts first on ``sys.path``)."""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from typing import TypeVar

T = TypeVar("T")


def best_time(fn: Callable[[], T], repeats: int) -> tuple[float, T]:
    """Best wall time in seconds over ``repeats`` calls of ``fn`` (at least one), and the last
    call's result."""
    best = math.inf
    for _ in range(max(1, repeats)):
        start = time.perf_counter()
        out = fn()
        best = min(best, time.perf_counter() - start)
    return best, out
