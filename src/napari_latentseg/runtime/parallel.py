"""Whole-volume numpy passes split into slabs of slices and run in threads.

A correction round on a CT makes a dozen passes over every voxel (labels, uncertainty, the
edge step); NumPy's ufuncs and SciPy's ndimage filters release the GIL, so slabs in threads
run in parallel. Each slab writes its own part of the output: the result does not depend on
the number of threads.
"""

from __future__ import annotations

from collections.abc import Callable, Generator, Sequence
from concurrent.futures import ThreadPoolExecutor

from .device import thread_count

__all__ = ["map_slabs", "each_in_threads"]


def map_slabs(fn: Callable[[slice], object], n: int, slab: int,
              threads: int | None = None) -> list:
    """``[fn(slice(lo, lo + slab)) for lo in range(0, n, slab)]``, in up to ``threads``
    threads (default :func:`~.device.thread_count`), results in slab order."""
    slabs = [slice(lo, min(lo + slab, n)) for lo in range(0, n, slab)]
    threads = thread_count() if threads is None else max(1, int(threads))
    if threads == 1 or len(slabs) < 2:
        return [fn(s) for s in slabs]
    with ThreadPoolExecutor(min(threads, len(slabs))) as pool:
        return list(pool.map(fn, slabs))


def each_in_threads(fn: Callable[[object], None], items: Sequence, threads: int
                    ) -> Generator[int, None, None]:
    """Run ``fn(item)`` for every item, in up to ``threads`` threads, yielding each item's
    index in order once it is done (a caller's progress report). Closing the generator (a
    stop) cancels the items not yet started; an item's error is raised at its turn."""
    threads = min(max(1, int(threads)), len(items))
    if threads <= 1:
        for i, item in enumerate(items):
            fn(item)
            yield i
        return
    with ThreadPoolExecutor(threads) as pool:
        futures = [pool.submit(fn, item) for item in items]
        try:
            for i, fut in enumerate(futures):
                fut.result()
                yield i
        finally:
            for fut in futures:
                fut.cancel()
