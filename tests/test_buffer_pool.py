"""The kernels' buffer pool (preprocess_ext/src/common.hpp, BufferPool): returned arrays and
scratch volumes reuse mapped memory across calls, and reuse must never be visible to a caller."""

from __future__ import annotations

import gc
from concurrent.futures import ThreadPoolExecutor

import numpy as np

from dmfn.preprocess import denoise_pde, release_cached_memory, resample_isotropic, window


def _volume(seed: int = 0, shape: tuple[int, ...] = (12, 200, 220)) -> np.ndarray:
    return np.random.default_rng(seed).normal(0, 40, shape).astype(np.float32)


def _calls(volume: np.ndarray) -> list:
    return [
        lambda: denoise_pde(volume, 30.0, 0.0125, 5, "3d", temporal_block=2),
        lambda: resample_isotropic(volume, (2.5, 0.7, 0.7), 1.0),
        lambda: window(volume, 40.0, 400.0),
    ]


def test_live_results_never_share_memory_and_keep_their_values() -> None:
    volume = _volume()
    for call in _calls(volume):
        first = call()
        kept = first.copy()
        others = [call() for _ in range(4)]
        for other in others:
            assert not np.shares_memory(first, other)
        del others
        gc.collect()
        again = call()  # may reuse the memory of the dropped results, never of `first`
        assert not np.shares_memory(first, again)
        np.testing.assert_array_equal(first, kept)
        np.testing.assert_array_equal(again, kept)
        assert first.flags.writeable and first.flags.c_contiguous and first.dtype == np.float32


def test_results_outlive_the_released_pool() -> None:
    volume = _volume(1)
    results = [call() for call in _calls(volume)]
    kept = [r.copy() for r in results]
    release_cached_memory()
    gc.collect()
    for r, k in zip(results, kept, strict=True):
        np.testing.assert_array_equal(r, k)
        r += 1.0  # still writable memory of its own


def test_concurrent_calls_from_threads_give_the_sequential_results() -> None:
    """The GIL is released inside the kernels: several threads take and give pool buffers at
    once, with results of different sizes dropped in between."""
    volumes = [_volume(seed, (6 + seed, 120 + 7 * seed, 130)) for seed in range(4)]
    expected = [[call() for call in _calls(v)] for v in volumes]

    def work(i: int) -> list[np.ndarray]:
        return [call() for call in _calls(volumes[i % 4]) for _ in range(2)][::2]

    with ThreadPoolExecutor(4) as pool:
        got = list(pool.map(work, range(12)))
    for i, results in enumerate(got):
        for r, e in zip(results, expected[i % 4], strict=True):
            np.testing.assert_array_equal(r, e)


def test_a_forked_child_can_use_the_pool_while_the_parent_runs_kernels() -> None:
    """fork() while other threads take and give pool buffers: the child must not inherit the
    pool's lock held (pthread_atfork), so its own kernel calls finish. The child calls only
    kernels without an OpenMP region (window below 2^18 voxels): GNU OpenMP cannot run in a
    child forked after the parent used it, which is why dmfn's own process pools spawn."""
    import multiprocessing
    import threading

    volume = _volume(2, (4, 256, 256))
    expected = window(volume, 40.0, 400.0)
    assert not expected.flags.owndata  # pooled
    stop = threading.Event()

    def churn() -> None:
        while not stop.is_set():
            window(volume, 40.0, 400.0)
            resample_isotropic(volume, (2.5, 0.7, 0.7), 1.0)

    threads = [threading.Thread(target=churn) for _ in range(2)]
    for t in threads:
        t.start()
    try:
        ctx = multiprocessing.get_context("fork")
        for _ in range(10):
            child = ctx.Process(target=_child_work, args=(volume, expected))
            child.start()
            child.join(60)
            assert child.exitcode == 0, "the forked child hung or failed using the pool"
    finally:
        stop.set()
        for t in threads:
            t.join()


def _child_work(volume: np.ndarray, expected: np.ndarray) -> None:
    for _ in range(20):
        np.testing.assert_array_equal(window(volume, 40.0, 400.0), expected)


def test_small_results_are_plain_numpy_arrays_and_large_ones_behave_like_them() -> None:
    small = window(_volume(3, (2, 16, 16)), 40.0, 400.0)
    assert small.flags.owndata  # under 1 MiB: numpy's own memory, no mapping per array
    large = window(_volume(4), 40.0, 400.0)
    assert not large.flags.owndata
    large.flags.writeable = False  # a caller may freeze a result and thaw it again
    large.flags.writeable = True
    large[0, 0, 0] = 7.0
    view = large[::2]
    del large
    gc.collect()
    assert view[0, 0, 0] == 7.0  # a view keeps the pooled memory alive
