"""Work split across processes: who this process is, which units it does, results in order.

Under `torchrun` or `accelerate launch` (environment variables WORLD_SIZE, RANK,
LOCAL_RANK, MASTER_ADDR, MASTER_PORT) `world()` joins the process group over gloo, which
carries Python objects between CPU processes whatever device the model is on. A job is a
sequence of units (a batch of prompts, a batch of records, a judge's chunk of samples);
`map_ordered` deals them out strided, unit k to process k mod P, one round of P units at a
time, and hands the results back in unit order, so a unit is computed exactly as a single
process computes it (same batch, same per-record random streams) and only the order of
work changes. A unit that raises on any process makes every process raise the error of
the first failing unit (the one a single process would have met first), so no process
waits for a result that never comes. Without a launcher everything runs in this process.

Not here: what a unit is or does (pipeline/, evaluate/), writing output (only process 0
writes, through artifacts/), training's data parallelism (train/ uses accelerate). It
never prints. Layer 2, beside artifacts/: it needs only errors and torch, and every layer
that does work (pipeline/, evaluate/, cli/) may split that work.
"""

from __future__ import annotations

import atexit
import functools
import os
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import Any, TypeVar

from sbdcli.errors import UserError

U = TypeVar("U")
R = TypeVar("R")


@dataclass(frozen=True)
class World:
    """This process's place among the processes of one launch (size 1 without a launcher)."""

    rank: int = 0
    size: int = 1
    local_rank: int = 0

    @property
    def main(self) -> bool:
        """The process that writes output and prints."""
        return self.rank == 0


def _env_int(name: str, default: int) -> int:
    value = os.environ.get(name)
    if value is None or value == "":
        return default
    try:
        return int(value)
    except ValueError:
        raise UserError(f"environment variable {name}={value!r} is not an integer") from None


@functools.cache
def world() -> World:
    """This process's World; joins the (gloo) process group when launched with several."""
    size = _env_int("WORLD_SIZE", 1)
    w = World(_env_int("RANK", 0), size, _env_int("LOCAL_RANK", 0))
    if size > 1:
        _join(w)
    return w


def _join(w: World) -> None:
    import torch.distributed as dist

    if dist.is_initialized():
        return
    missing = [v for v in ("MASTER_ADDR", "MASTER_PORT") if not os.environ.get(v)]
    if missing:
        raise UserError(
            f"WORLD_SIZE is {w.size} but {' and '.join(missing)} is not set: start several "
            "processes with torchrun or accelerate launch"
        )
    dist.init_process_group("gloo", rank=w.rank, world_size=w.size)
    atexit.register(_leave)


def _leave() -> None:
    """Leave the process group before the interpreter ends (gloo aborts the process else)."""
    import torch.distributed as dist

    if dist.is_initialized():
        dist.destroy_process_group()


def device_for(device: str, w: World) -> str:
    """`device` for this process: with several processes, 'auto' and 'cuda' mean its own GPU."""
    if w.size == 1 or device not in ("auto", "cuda"):
        return device
    import torch

    if not torch.cuda.is_available():
        return "cpu" if device == "auto" else device
    return f"cuda:{w.local_rank % torch.cuda.device_count()}"


def require_files(w: World, *, input: str | None = None, output: str | None = None) -> None:
    """With several processes stdin and stdout ('-') cannot be shared: -i / -o FILE required.

    `None` means the command has no such option.
    """
    if w.size == 1:
        return
    for path, flag, stream in ((input, "-i", "stdin"), (output, "-o", "stdout")):
        if path == "-":
            raise UserError(
                f"with {w.size} processes, pass {flag} FILE: the processes cannot share {stream}"
            )


def check_enough(w: World, units: int, records: int, unit: str) -> None:
    """Refuse a launch with more processes than units of work (some would do nothing)."""
    if units >= w.size:
        return
    if records < w.size:
        raise UserError(f"{w.size} processes but only {records} records: use fewer processes")
    raise UserError(
        f"{w.size} processes but only {units} {unit} of work for {records} records: use "
        "fewer processes or a smaller --batch-size"
    )


def rounds(units: Iterable[U], size: int) -> Iterator[list[U]]:
    """Consecutive lists of `size` units (the last may be shorter)."""
    batch: list[U] = []
    for unit in units:
        batch.append(unit)
        if len(batch) == size:
            yield batch
            batch = []
    if batch:
        yield batch


def map_ordered(
    fn: Callable[[U], R], units: Iterable[U], w: World, *, everywhere: bool = False
) -> Iterator[R]:
    """`fn(unit)` for every unit, results in unit order: on process 0 (all processes when
    `everywhere`); the other processes yield nothing. Unit k is computed by process k mod P.

    Every process must pass the same units in the same order. When a unit raises, every
    process raises: the failing process its own exception, the others the message of the
    first failing unit, as a UserError when that was one (a RuntimeError otherwise).
    """
    if w.size == 1:
        yield from map(fn, units)
        return
    for group in rounds(units, w.size):
        mine = _attempt(fn, group[w.rank]) if w.rank < len(group) else ("none", None)
        outcomes = _exchange(mine, w, everywhere)
        if outcomes is None:
            continue
        yield from (payload for kind, payload in outcomes if kind == "ok")


def _attempt(fn: Callable[[U], R], unit: U) -> tuple[str, Any]:
    try:
        return "ok", fn(unit)
    except Exception as exc:  # shared below; re-raised on this process
        return "error", exc


def _exchange(mine: tuple[str, Any], w: World, everywhere: bool) -> list[tuple[str, Any]] | None:
    """Every process's outcome of one round (on process 0, or everywhere); raises the first
    error on all processes."""
    import torch.distributed as dist

    sent = ("error", _describe(mine[1])) if mine[0] == "error" else mine
    outcomes: list[Any] | None = None
    if everywhere:
        outcomes = [None] * w.size
        dist.all_gather_object(outcomes, sent)
        error = _first_error(outcomes)
    else:
        outcomes = [None] * w.size if w.main else None
        dist.gather_object(sent, outcomes, dst=0)
        box = [_first_error(outcomes) if outcomes is not None else None]
        dist.broadcast_object_list(box, src=0)
        error = box[0]
    if error is not None:
        if mine[0] == "error":
            raise mine[1]
        message, user = error
        raise UserError(message) if user else RuntimeError(message)
    return outcomes


def _describe(exc: BaseException) -> tuple[str, bool]:
    """What the other processes report for `exc`: (message, whether a UserError)."""
    if isinstance(exc, UserError):
        return str(exc), True
    return f"process {world().rank} failed: {type(exc).__name__}: {exc}", False


def _first_error(outcomes: list[Any]) -> tuple[str, bool] | None:
    for kind, payload in outcomes:
        if kind == "error":
            return payload
    return None
