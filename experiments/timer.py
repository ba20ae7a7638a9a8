"""The one timer of the experiments: the fastest of a few runs of a callable.

What it is: `best_seconds`, the minimum wall-clock time over repeated calls (robust to a
busy machine: load only ever adds time), synchronising CUDA around each call when asked.
What it is not: a profiler, or the per-stage seconds the library records in each sample
record's stage entries (those time every sample file as it was written).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import torch


def best_seconds(fn: Callable[[], Any], repeats: int, cuda: bool = False) -> float:
    """Min over `repeats` calls of `fn`, in seconds (CUDA synchronised when `cuda`)."""
    times = []
    for _ in range(repeats):
        if cuda:
            torch.cuda.synchronize()
        start = time.perf_counter()
        fn()
        if cuda:
            torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
    return min(times)
