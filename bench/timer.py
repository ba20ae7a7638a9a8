"""The one timer of sbd's measurements: the speed benchmarks (bench/) and the experiments.

What it is: wall-clock seconds of a callable, with the accelerator synchronised before and
after the call so that queued GPU work is counted (`timed`); the fastest of repeated calls
(`best_seconds`: load on a shared machine only ever adds time, so the minimum is the
robust estimate); and the fastest of each of several callables measured round-robin
(`interleaved`: a load that changes during the run hits every callable alike).
What it is not: a profiler, or the per-stage seconds the library writes into each sample
record's stage entries (those time each sample file as it was written).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from typing import Any, TypeVar

import torch

T = TypeVar("T")


def sync(device: Any = None) -> None:
    """Wait for the device's queued work (a no-op on the CPU and without CUDA)."""
    if device is not None and str(device).startswith("cuda") and torch.cuda.is_available():
        torch.cuda.synchronize(device)


def timed(fn: Callable[[], T], device: Any = None) -> tuple[float, T]:
    """(seconds, result) of one call of `fn`, the device synchronised around it."""
    sync(device)
    start = time.perf_counter()
    out = fn()
    sync(device)
    return time.perf_counter() - start, out


def best_seconds(fn: Callable[[], Any], repeats: int, device: Any = None, warmup: int = 0) -> float:
    """The fastest of `repeats` calls of `fn` (after `warmup` untimed calls), in seconds."""
    for _ in range(warmup):
        fn()
    return min(timed(fn, device)[0] for _ in range(max(repeats, 1)))


def interleaved(
    fns: Sequence[Callable[[], Any]], repeats: int, device: Any = None, warmup: int = 1
) -> list[float]:
    """The fastest seconds of each of `fns`, called round-robin `repeats` times (after
    `warmup` untimed rounds), so that a changing load hits them alike."""
    for _ in range(warmup):
        for fn in fns:
            fn()
    best = [float("inf")] * len(fns)
    for _ in range(max(repeats, 1)):
        for k, fn in enumerate(fns):
            best[k] = min(best[k], timed(fn, device)[0])
    return best


def stopwatch() -> Callable[[], float]:
    """A function that gives the seconds since `stopwatch()` was called, each time it is
    called: latencies read in the middle of a callable (a stream's first and final event)."""
    start = time.perf_counter()
    return lambda: time.perf_counter() - start
