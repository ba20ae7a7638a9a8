"""The sampler's network call: one window class per cache kind behind `logits(x, lo, hi, sigma)`.

A window computes the raw logits of one block [lo, hi) of x (n, T) given everything before
it, for the sampler engine (sampler.py), which never asks how:
- `RecomputeWindow` (`--cache none`, and any cache over one block): every call runs the
  whole visible window with a block-causal mask (the reference path); under the captured
  cache the call goes through the captured forward.
- `ExactWindow` (`--cache exact`): an exact KV cache of earlier blocks. The clean
  keys/values of earlier blocks not yet cached are written in the same call that denoises
  the block (input concat(clean pending, noisy block), `cache_commit` = the pending
  length), so NFE counts every network call; when the sliding window moves, the cache is
  rebuilt inside the next call.
- `ApproxWindow` (`--cache approx:R`): the exact window, plus inside the current block the
  calls between refreshes run only the positions masked at the previous call (queried
  first, padding sent to one spare cache slot) and reuse the others' stored keys/values.
- `CapturedWindow` (`--cache captured`, CUDA only): the exact window whose cached call runs
  at a fixed shape (the whole slab, invalid slots masked) through torch.compile with CUDA
  graphs (`check_compile` refuses it elsewhere).

Every window suppresses a BOS distinct from EOS (never sampled), records the noise level
each block was called at (time-conditioned models) and drops cancelled rows. Given
`readout` (the positions a call will commit, known before it under a random order), the
eager windows ask the model for those positions' logits only (its last layer and output
layer run there alone); the captured window computes its fixed shape and picks them.

Not here: which positions a call reveals (reveal.py), the draw and the block loop
(sampler.py), the attention and cache tensors themselves (model/).
"""

from __future__ import annotations

import math
import weakref
from collections.abc import Callable
from typing import Any

import torch

from sbdcli.config import ApproxCache, CacheKind, CapturedCache, NoCache, SamplerConfig
from sbdcli.errors import UserError


def model_device(model: Any) -> torch.device:
    """The device of the model's first parameter (CPU for parameter-free test doubles)."""
    for param in model.parameters():
        return param.device
    return torch.device("cpu")


class Window:
    """What every window shares: the model, the block size, the rows still live, the level
    each block was last called at, and the token never sampled."""

    def __init__(self, model: Any, n: int, length: int, block: int) -> None:
        self.model, self.block, self.length = model, block, length
        self.max_len = model.config.seq_len
        self.live = torch.ones(n, dtype=torch.bool, device=model_device(model))  # not cancelled
        self.levels: torch.Tensor | None = None  # (n, T) sigma each block was last called at
        bos, eos = getattr(model.config, "bos_id", None), getattr(model.config, "eos_id", None)
        # A BOS distinct from EOS only ever opens a row in training data: never sample it.
        self.suppress = bos if bos is not None and bos != eos else None

    def logits(
        self,
        x: torch.Tensor,
        lo: int,
        hi: int,
        sigma: torch.Tensor | None = None,
        readout: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Raw logits (n, hi - lo, V) for block [lo, hi) of x (n, T); `sigma` (n,): this call's
        noise level per sample, for time-conditioned models (None: not passed). `readout`
        (n, k) block-relative positions: only their logits (n, k, V), in that order (the
        model's last layer and output layer run only there where it can)."""
        raise NotImplementedError

    def record(self, lo: int, hi: int, sigma: torch.Tensor) -> None:
        """Set the level (n,) block [lo, hi) is cached at (cached windows; no-op before any)."""
        if self.levels is not None:
            self.levels[:, lo:hi] = sigma.to(self.levels.device)[:, None]

    def drop(self, row: int) -> None:
        """A cancelled row: its positions are no longer queried."""
        self.live[row] = False

    def _finish(self, out: torch.Tensor) -> torch.Tensor:
        if self.suppress is not None:
            out[..., self.suppress] = -math.inf
        return out

    def _block_causal(self, idx: torch.Tensor) -> torch.Tensor | None:
        """Query i may see key j iff blk(j) <= blk(i); None when everything is visible."""
        blk = idx // self.block
        mask = blk[None, :] <= blk[:, None]  # (N, N)
        return None if bool(mask.all()) else mask


class RecomputeWindow(Window):
    """No cache: every call recomputes the visible window [max(0, hi - L), hi)."""

    def __init__(
        self,
        model: Any,
        n: int,
        length: int,
        block: int,
        forward: Callable[..., Any] | None = None,
    ) -> None:
        super().__init__(model, n, length, block)
        self.forward = forward  # the captured forward, or None (the model's own)

    def logits(
        self,
        x: torch.Tensor,
        lo: int,
        hi: int,
        sigma: torch.Tensor | None = None,
        readout: torch.Tensor | None = None,
    ) -> torch.Tensor:
        start = max(0, hi - self.max_len)  # sliding window [start, hi)
        kw = {} if sigma is None else {"sigma": sigma}
        idx = torch.arange(start, hi, device=x.device)
        args = (x[:, start:hi], idx - start, self._block_causal(idx))
        if self.forward is None and readout is not None:
            return self._finish(self.model(*args, readout=readout + (lo - start), **kw))
        if self.forward is None:
            out = self.model(*args, **kw)
        else:
            out = _replay(self.forward, *args, **kw)
        return self._finish(take(out[:, lo - start :], readout))


class ExactWindow(Window):
    """Exact KV cache of earlier blocks; each call recomputes its own block."""

    SPARE = 0
    """Cache slots past the sequence (the approximate window sends padding to one)."""

    def __init__(self, model: Any, n: int, length: int, block: int) -> None:
        super().__init__(model, n, length, block)
        self.cache = model.new_cache(n, min(length, self.max_len) + self.SPARE)
        self.start = 0  # absolute index of the first cached token
        self.end = 0  # absolute index after the last cached token

    def logits(
        self,
        x: torch.Tensor,
        lo: int,
        hi: int,
        sigma: torch.Tensor | None = None,
        readout: torch.Tensor | None = None,
    ) -> torch.Tensor:
        return self._cached(x, lo, hi, max(0, hi - self.max_len), sigma, readout)

    def _cached(
        self,
        x: torch.Tensor,
        lo: int,
        hi: int,
        start: int,
        sigma: torch.Tensor | None,
        readout: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """The exact cached call: pending clean blocks and block [lo, hi) in one call."""
        if start != self.start:  # the window slid: rebuild the cache inside this call
            self.cache.truncate(0)
            self.start = self.end = start
        pending = lo - self.end
        idx = torch.arange(self.end, hi, device=x.device)
        mask = self._block_causal(idx)
        if mask is not None and self.cache.length > 0:
            seen = torch.ones(len(idx), self.cache.length, dtype=torch.bool, device=x.device)
            mask = torch.cat((seen, mask), dim=1)  # (C + N, T_cache + C + N)
        kw = {} if sigma is None else {"sigma": self._levels(x, sigma, lo, hi)}
        out = self._call(x[:, self.end : hi], idx - start, mask, pending, kw, readout)
        self.end = lo
        return self._finish(out)

    def _call(
        self,
        tokens: torch.Tensor,
        pos: torch.Tensor,
        mask: torch.Tensor | None,
        pending: int,
        kw: dict[str, Any],
        readout: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """The model on the cached call's inputs; keeps the first `pending` rows' keys.
        Returns the block's logits (n, N, V), or (n, k, V) at `readout`."""
        if readout is not None:
            return self.model(
                tokens, pos, mask, self.cache, pending, readout=readout + pending, **kw
            )
        return self.model(tokens, pos, mask, self.cache, pending, **kw)[:, pending:]

    def _levels(self, x: torch.Tensor, sigma: torch.Tensor, lo: int, hi: int) -> torch.Tensor:
        """Per-token levels (n, hi - end) of a cached call: clean pending blocks at the level of
        their last call (BD3-LM writes a block's cache at that level; 0 if never called), the
        block [lo, hi) at this call's level, which is recorded."""
        if self.levels is None:
            self.levels = torch.zeros(x.shape, dtype=sigma.dtype, device=sigma.device)
        self.levels[:, lo:hi] = sigma[:, None]
        return self.levels[:, self.end : hi].clone()


class ApproxWindow(ExactWindow):
    """The exact window; inside a block, calls between refreshes run only the positions
    masked at the previous call and reuse the stored keys/values of the others."""

    SPARE = 1

    def __init__(self, model: Any, n: int, length: int, block: int, refresh: int) -> None:
        super().__init__(model, n, length, block)
        self.refresh = refresh
        self.block_lo, self.calls = -1, 0  # the current block, its calls so far
        self.prev: torch.Tensor | None = None  # (n, N) masked at the previous call
        self.queries: torch.Tensor | None = None  # the previous call's `prev`

    def logits(
        self,
        x: torch.Tensor,
        lo: int,
        hi: int,
        sigma: torch.Tensor | None = None,
        readout: torch.Tensor | None = None,
    ) -> torch.Tensor:
        start = max(0, hi - self.max_len)
        if self._approximate(x, lo, hi, start):
            return self._partial(x, lo, hi, start, sigma, readout)
        return self._cached(x, lo, hi, start, sigma, readout)

    def drop(self, row: int) -> None:
        super().drop(row)
        if self.prev is not None:
            self.prev[row] = False

    def _approximate(self, x: torch.Tensor, lo: int, hi: int, start: int) -> bool:
        """Whether this call of block [lo, hi) may reuse stored keys/values (not the block's
        first call, nor one of every `refresh`); remembers its masked set."""
        fresh = lo != self.block_lo or start != self.start
        if fresh:
            self.block_lo, self.calls = lo, 0
        partial = not fresh and self.calls % self.refresh != 0
        self.calls += 1
        masked = (x[:, lo:hi] == self.model.config.mask_id) & self.live[:, None]
        self.queries, self.prev = self.prev, masked
        return partial

    def _partial(
        self,
        x: torch.Tensor,
        lo: int,
        hi: int,
        start: int,
        sigma: torch.Tensor | None,
        readout: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Only the positions masked at the previous call (still masked, or just committed)
        are run; they overwrite their stored keys/values and attend to all stored ones
        (every other position keeps the keys/values of an earlier call). `readout`: as in
        `logits` (still masked, so among the queried positions)."""
        prev = self.queries  # (n, N) bool
        assert prev is not None
        n, width = prev.shape
        count = int(prev.sum(dim=1).max())
        order = (~prev).to(torch.int8).argsort(dim=1, stable=True)[:, :count]  # queried first
        valid = prev.gather(1, order)
        spare = self.cache.max_len - 1
        slots = torch.where(valid, order + (lo - start), spare)  # padding -> the spare slot
        kw: dict[str, Any] = {}
        if sigma is not None:
            self._levels(x, sigma, lo, hi)  # records the block's level for later calls
            kw["sigma"] = sigma
        view = self.cache.scattering(slots, hi - start)
        args = (x[:, lo:hi].gather(1, order), order + (lo - start), None, view, 0)
        if readout is not None:  # where each read-out position stands among the queries
            rank = torch.zeros_like(prev, dtype=torch.long).scatter_(
                1, order, torch.arange(count, device=order.device).expand(n, -1)
            )
            return self._finish(self.model(*args, readout=rank.gather(1, readout), **kw))
        out = self.model(*args, **kw)
        full = out.new_zeros(n, width, out.shape[-1])
        full.scatter_(1, order[..., None].expand_as(out), out)  # padding lands on unused rows
        return self._finish(full)


class CapturedWindow(ExactWindow):
    """The exact window whose cached call runs at a fixed shape through a captured step."""

    def __init__(
        self, model: Any, n: int, length: int, block: int, step: Callable[..., Any]
    ) -> None:
        super().__init__(model, n, length, block)
        self.step = step

    def _call(
        self,
        tokens: torch.Tensor,
        pos: torch.Tensor,
        mask: torch.Tensor | None,
        pending: int,
        kw: dict[str, Any],
        readout: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """The whole slab with its invalid slots masked, through `self.step` (the model's
        `fixed_step`, captured by torch.compile); the new keys/values are written back.
        Every position is computed (one captured shape); `readout` picks afterwards."""
        cache, width = self.cache, tokens.shape[1]
        device = tokens.device
        inner = torch.ones(width, width, dtype=torch.bool, device=device)
        if mask is not None:
            inner = mask[:, -width:]
        valid = torch.arange(cache.max_len, device=device) < cache.length
        full = torch.cat((valid[None].expand(width, -1), inner), dim=1)  # (N, S + N)
        out, k_new, v_new = _replay(self.step, tokens, pos, full, cache.k, cache.v, **kw)
        cache.put(cache.length, k_new, v_new)
        cache.advance(pending)
        return take(out[:, pending:], readout)


def take(out: torch.Tensor, readout: torch.Tensor | None) -> torch.Tensor:
    """The `readout` (n, k) positions of block logits (n, N, V), or all of them."""
    if readout is None:
        return out
    return out.gather(1, readout[..., None].expand(-1, -1, out.shape[-1]))


def make_window(cache: CacheKind, model: Any, n: int, length: int, block: int) -> Window:
    """The window of a cache kind for n sequences of `length` in `block`s (one block over
    the whole sequence has no earlier blocks to cache: it recomputes, unless approximate)."""
    if isinstance(cache, ApproxCache):
        return ApproxWindow(model, n, length, block, cache.refresh)
    captured = isinstance(cache, CapturedCache)
    if isinstance(cache, NoCache) or block >= length:
        return RecomputeWindow(model, n, length, block, _captured(model)[1] if captured else None)
    if captured:
        return CapturedWindow(model, n, length, block, _captured(model)[0])
    return ExactWindow(model, n, length, block)


# --------------------------------------------------------------------------- captured calls
_COMPILED: weakref.WeakKeyDictionary[Any, Any] = weakref.WeakKeyDictionary()


def check_compile(cfg: SamplerConfig, device: Any) -> None:
    """Refuse the captured cache off CUDA: on a CPU it is not faster (docs/sampling.md)."""
    if not isinstance(cfg.cache, CapturedCache):
        return
    kind = str(device)
    if kind == "auto":
        kind = "cuda" if torch.cuda.is_available() else "cpu"
    if torch.device(kind).type != "cuda":
        raise UserError(
            f"`cache` captured needs a CUDA device: it captures the cached call as CUDA "
            f"graphs, which do not exist on {kind} (choose another cache or pass --device cuda)"
        )


def _captured(model: Any) -> tuple[Any, Any]:
    """(fixed_step, forward) of the model captured by torch.compile, made once per model:
    the fixed-shape cached call, and the cache-free call (one fixed-shape window per block)."""
    if model not in _COMPILED:
        opts: dict[str, Any] = {"mode": "reduce-overhead", "dynamic": False}
        _COMPILED[model] = (
            torch.compile(model.fixed_step, **opts),
            torch.compile(model.forward, **opts),
        )
    return _COMPILED[model]


def _replay(call: Callable[..., Any], *args: Any, **kw: Any) -> Any:
    """One captured call; its outputs are cloned (a CUDA graph overwrites them next time)."""
    mark = getattr(torch.compiler, "cudagraph_mark_step_begin", None)
    if mark is not None and args[0].is_cuda:
        mark()  # the previous call's outputs are no longer read
    out = call(*args, **kw)
    if isinstance(out, tuple):
        return tuple(t.clone() for t in out)
    return out.clone()
