"""Run a function over many items on a process pool, results streamed as they finish."""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ProcessPoolExecutor
from typing import TypeVar

T = TypeVar("T")
R = TypeVar("R")


def available_cores() -> int:
    """Cores this process may run on (its affinity mask on Linux)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not on Linux
        return max(1, os.cpu_count() or 1)


def worker_count(requested: int) -> int:
    """``0`` means one worker per available core."""
    return requested if requested > 0 else available_cores()


def parallel_map(
    fn: Callable[[T], R], items: Iterable[T], workers: int = 0, chunksize: int = 16
) -> Iterator[R]:
    """``map(fn, items)`` in input order over ``workers`` processes (1: in this process).

    ``fn`` must be a module-level function so it pickles. A process pool rather than threads,
    because decoding and resampling in Pillow hold the GIL for part of their work.
    """
    workers = worker_count(workers)
    items = list(items)
    if workers == 1 or len(items) <= 1:
        yield from map(fn, items)
        return
    with ProcessPoolExecutor(max_workers=min(workers, len(items))) as pool:
        yield from pool.map(fn, items, chunksize=max(1, min(chunksize, len(items) // workers)))
