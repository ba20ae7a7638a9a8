"""Block-diffusion attention: masks, the SDPA / FlexAttention kernels, and the KV cache.

What is here
- `block_diff_mask(L, B)`: the (2L, 2L) boolean mask of BD3-LM's vectorised training pass
  over concat(x_t, x_0) (True = may attend), and `block_causal_mask(L, B)` for sampling.
  Both are built once per (L, B, device) and cached; never mutate the returned tensors.
- `attend(q, k, v, mask)`: scaled dot-product attention with a boolean mask (never an
  additive float mask: on CPU that is ~2.4x slower), a `HalvesMask` (the training mask
  split so the x_0 queries skip the x_t keys they can never see), or a FlexAttention
  `BlockMask`.
- `flex_block_mask(L, B, device)`: the same training mask as a cached FlexAttention
  `BlockMask` (CUDA only; `flex_available(device)` says whether it can be used).
- `KVCache`: preallocated per-layer keys/values for block-by-block sampling, and two views
  of it that a network call can use in its place: `ScatterView` (the approximate cache:
  a call's inputs overwrite their own slots, the queries attend to every stored slot) and
  `StackView` (a pure, fixed-shape call for torch.compile: the whole slab is read, nothing
  is written, the new keys/values are returned).

What is not here: the network (denoiser.py) and anything about noise or losses.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F

__all__ = [
    "HalvesMask",
    "KVCache",
    "ScatterView",
    "StackView",
    "attend",
    "block_causal_mask",
    "block_diff_mask",
    "flex_available",
    "flex_block_mask",
]


# --------------------------------------------------------------------------- masks
def _check_block(length: int, block_size: int) -> None:
    if block_size < 1 or length % block_size != 0:
        raise ValueError(f"block size {block_size} must be >= 1 and divide length {length}")


def _block_diff_rule(q_idx: torch.Tensor, kv_idx: torch.Tensor, n: int, block: int) -> torch.Tensor:
    """BD3-LM training mask M = M_BD | M_OBC | M_BC on indices into concat(x_t, x_0).

    With blk(i) the block index inside its half and c(i) = [i >= n] (i is in the clean half):
    M_BD  (block diagonal):      blk(q) == blk(k) and c(q) == c(k);
    M_OBC (offset block causal): blk(q) >  blk(k) and c(k) and not c(q);
    M_BC  (block causal):        blk(q) >= blk(k) and c(k) and c(q).
    Works elementwise on broadcastable index tensors (also inside FlexAttention).
    """
    clean_q, clean_k = q_idx >= n, kv_idx >= n
    blk_q = torch.where(clean_q, q_idx - n, q_idx) // block
    blk_k = torch.where(clean_k, kv_idx - n, kv_idx) // block
    # no == between booleans: inductor's range analysis rejects it inside torch.compile
    diagonal = (blk_q == blk_k) & ((clean_q & clean_k) | ~(clean_q | clean_k))
    offset_causal = (blk_q > blk_k) & clean_k & ~clean_q
    causal = (blk_q >= blk_k) & clean_k & clean_q
    return diagonal | offset_causal | causal


@functools.lru_cache(maxsize=64)
def _block_diff_mask_cached(length: int, block_size: int, device: str) -> torch.Tensor:
    idx = torch.arange(2 * length, device=device)
    return _block_diff_rule(idx[:, None], idx[None, :], length, block_size)


@functools.lru_cache(maxsize=64)
def _block_causal_mask_cached(length: int, block_size: int, device: str) -> torch.Tensor:
    blk = torch.arange(length, device=device) // block_size
    return blk[:, None] >= blk[None, :]


@torch.compiler.disable  # cached in eager; not traced by torch.compile
def block_diff_mask(length: int, block_size: int, device: Any = "cpu") -> torch.Tensor:
    """Training mask for concat(x_t, x_0) of length 2L (True = may attend): bool (2L, 2L).

    noisy->noisy: same block; noisy->clean: strictly earlier blocks; clean->clean: same or
    earlier blocks; clean->noisy: never. Cached per (L, B, device); treat as read-only.
    """
    _check_block(length, block_size)
    return _block_diff_mask_cached(length, block_size, str(torch.device(device)))


@torch.compiler.disable  # cached in eager; not traced by torch.compile
def block_causal_mask(length: int, block_size: int, device: Any = "cpu") -> torch.Tensor:
    """Sampling mask over one clean stream: query i sees key j iff blk(j) <= blk(i). (L, L).

    This is the clean->clean quadrant of `block_diff_mask`. Cached; treat as read-only.
    `length` need not be a multiple of `block_size` (a partial last block is allowed).
    """
    if block_size < 1:
        raise ValueError("block size must be >= 1")
    return _block_causal_mask_cached(length, block_size, str(torch.device(device)))


# --------------------------------------------------------------------------- FlexAttention
def flex_available(device: Any) -> bool:
    """True when FlexAttention can run here: a CUDA device and a torch that ships it."""
    if torch.device(device).type != "cuda":
        return False
    try:
        from torch.nn.attention import flex_attention  # noqa: F401
    except ImportError:
        return False
    return True


@functools.lru_cache(maxsize=64)
def _flex_block_mask_cached(length: int, block_size: int, q_len: int, device: str) -> Any:
    from torch.nn.attention.flex_attention import create_block_mask

    def mask_mod(b: Any, h: Any, q_idx: torch.Tensor, kv_idx: torch.Tensor) -> torch.Tensor:
        return _block_diff_rule(q_idx, kv_idx, length, block_size)

    return create_block_mask(
        mask_mod, B=None, H=None, Q_LEN=q_len, KV_LEN=2 * length, device=device
    )


@torch.compiler.disable  # cached in eager; not traced by torch.compile
def flex_block_mask(length: int, block_size: int, device: Any, q_len: int | None = None) -> Any:
    """The training mask as a cached FlexAttention BlockMask; `q_len` rows (default 2L)."""
    _check_block(length, block_size)
    rows = 2 * length if q_len is None else q_len
    return _flex_block_mask_cached(length, block_size, rows, str(torch.device(device)))


@functools.lru_cache(maxsize=1)
def _compiled_flex() -> Any:
    from torch.nn.attention.flex_attention import flex_attention

    return torch.compile(flex_attention, dynamic=False)


# --------------------------------------------------------------------------- kernels
@dataclass(frozen=True)
class HalvesMask:
    """`block_diff_mask(L, B)` as its two useful halves, for dense (SDPA) kernels.

    x_0 queries never see x_t keys (rows L.. of the mask are False on columns ..L), so
    their attention runs over the L clean keys only: 3L^2 score entries instead of 4L^2.
    `noisy`: (L, 2L) rows of the x_t queries; `clean`: (L, L) x_0 queries on x_0 keys.
    """

    length: int
    noisy: torch.Tensor
    clean: torch.Tensor

    @classmethod
    @torch.compiler.disable  # cached in eager; not traced by torch.compile
    def of(cls, length: int, block_size: int, device: Any) -> HalvesMask:
        """The cached halves of `block_diff_mask(length, block_size)` (do not mutate)."""
        return _halves_cached(length, block_size, str(torch.device(device)))


@functools.lru_cache(maxsize=64)
def _halves_cached(length: int, block_size: int, device: str) -> HalvesMask:
    full = block_diff_mask(length, block_size, device)
    return HalvesMask(length, full[:length], full[length:, length:].contiguous())


def attend(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor | Any | None
) -> torch.Tensor:
    """softmax(q k^T / sqrt(Dh) + log[mask]) v for q (B,H,N,Dh), k/v (B,H,T,Dh) -> (B,H,N,Dh).

    `mask` is None (all visible), a boolean tensor broadcastable to (B,H,N,T) (True = may
    attend), a `HalvesMask` (T = 2L keys; N = 2L queries, or the L x_t queries alone), or
    a FlexAttention BlockMask (then the compiled FlexAttention kernel runs).
    """
    if isinstance(mask, HalvesMask):
        n = mask.length
        top = F.scaled_dot_product_attention(q[:, :, :n], k, v, attn_mask=mask.noisy)
        if q.shape[2] == n:
            return top
        kc, vc = k[:, :, n:], v[:, :, n:]
        bottom = F.scaled_dot_product_attention(q[:, :, n:], kc, vc, attn_mask=mask.clean)
        return torch.cat((top, bottom), dim=2)
    if mask is None or isinstance(mask, torch.Tensor):
        if mask is not None and mask.dtype != torch.bool:
            raise TypeError("attention masks must be boolean (True = may attend)")
        return F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
    return _compiled_flex()(q, k, v, block_mask=mask)


Query = int | torch.Tensor | None
"""Which inputs of a call are read out: all (None), the first n, or (B, k) indices."""


def take(t: torch.Tensor, query: Query, dim: int) -> torch.Tensor:
    """The `query` entries of t along `dim` (1: (B, N, ...); 2: (B, H, N, ...)).

    A broadcast dim of size 1 (per-sample modulations) stays as it is; t's batch dim may be
    1 while the indices have B rows.
    """
    if query is None or t.shape[dim] == 1:
        return t
    if isinstance(query, int):
        return t.narrow(dim, 0, query)
    idx = query.view(
        query.shape[0], *([1] * (dim - 1)), query.shape[1], *([1] * (t.dim() - dim - 1))
    )
    shape = list(t.shape)
    shape[0], shape[dim] = query.shape[0], query.shape[1]
    return t.expand(query.shape[0], *t.shape[1:]).gather(dim, idx.expand(shape))


def readout_mask(mask: Any, query: Query) -> Any:
    """The rows of an attention mask that the `query` inputs use (None stays None)."""
    if mask is None or query is None:
        return mask
    if not isinstance(mask, torch.Tensor):
        raise ValueError("reading out some positions needs a boolean tensor mask (or None)")
    if isinstance(query, int):
        return mask[..., :query, :] if mask.dim() >= 2 and mask.shape[-2] > 1 else mask
    if mask.dim() == 2:  # (N, S) -> (B, 1, k, S)
        return mask[query][:, None]
    if mask.dim() == 4 and mask.shape[-2] > 1:  # (B or 1, H or 1, N, S) -> (B, H or 1, k, S)
        return take(mask.transpose(1, 2), query, 1).transpose(1, 2)
    return mask


# --------------------------------------------------------------------------- KV cache
class KVCache:
    """Preallocated keys/values of committed tokens, one slab per layer.

    `k[layer]`, `v[layer]`: (batch, n_heads, max_len, head_dim); the first `length` positions
    are valid. Keys are stored after rotary embedding (they carry their absolute positions).
    A sliding window must rebuild the cache (`truncate(0)` and re-encode the window): the
    deeper layers' entries of kept tokens still depend on the tokens that were dropped.
    """

    def __init__(
        self,
        n_layers: int,
        batch: int,
        n_heads: int,
        head_dim: int,
        max_len: int,
        device: Any = "cpu",
        dtype: torch.dtype = torch.float32,
    ) -> None:
        shape = (n_layers, batch, n_heads, max_len, head_dim)
        self.k = torch.zeros(shape, device=device, dtype=dtype)  # (layers, B, H, max_len, Dh)
        self.v = torch.zeros(shape, device=device, dtype=dtype)
        self.length = 0
        self.max_len = max_len
        self.batch = batch

    def __len__(self) -> int:
        return self.length

    def to_dtype(self, dtype: torch.dtype) -> None:
        """Store keys/values in `dtype` from now on (e.g. bf16 for bf16 calls); empty only."""
        if self.length:
            raise ValueError("only an empty KV cache changes its dtype")
        self.k = torch.zeros_like(self.k, dtype=dtype)
        self.v = torch.zeros_like(self.v, dtype=dtype)

    def keys_values(
        self, layer: int, k_new: torch.Tensor, v_new: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Cached entries of `layer` followed by the new ones: (B, H, length + N, Dh) each.

        Without autograd and with room left, the new entries are written in place after
        the valid ones (no copy of the cache); they only become valid after `append`/`advance`.
        """
        end = self.length + k_new.shape[2]
        if k_new.shape[0] != self.batch:
            raise ValueError(f"KV cache holds batch {self.batch}, got {k_new.shape[0]}")
        if end <= self.max_len and not torch.is_grad_enabled():
            self.k[layer, :, :, self.length : end] = k_new
            self.v[layer, :, :, self.length : end] = v_new
            return self.k[layer, :, :, :end], self.v[layer, :, :, :end]
        k_all = torch.cat([self.k[layer, :, :, : self.length], k_new.to(self.k.dtype)], dim=2)
        v_all = torch.cat([self.v[layer, :, :, : self.length], v_new.to(self.v.dtype)], dim=2)
        return k_all, v_all

    def append(self, ks: list[torch.Tensor], vs: list[torch.Tensor]) -> None:
        """Append per-layer keys/values (each (B, H, n, Dh)) after the valid entries."""
        n = ks[0].shape[2]
        if self.length + n > self.max_len:
            raise ValueError(f"KV cache full: {self.length} + {n} > max_len {self.max_len}")
        for layer, (k, v) in enumerate(zip(ks, vs, strict=True)):
            self.k[layer, :, :, self.length : self.length + n] = k.detach()
            self.v[layer, :, :, self.length : self.length + n] = v.detach()
        self.length += n

    def advance(self, n: int) -> None:
        """Make the next `n` slots valid (their keys/values were written in place)."""
        if self.length + n > self.max_len:
            raise ValueError(f"KV cache full: {self.length} + {n} > max_len {self.max_len}")
        self.length += n

    def put(self, offset: int, k: torch.Tensor, v: torch.Tensor) -> None:
        """Write stacked keys/values (layers, B, H, N, Dh) at slots [offset, offset + N)."""
        end = offset + k.shape[3]
        if end > self.max_len:
            raise ValueError(f"KV cache has {self.max_len} slots, writing up to {end}")
        self.k[:, :, :, offset:end] = k
        self.v[:, :, :, offset:end] = v

    def scattering(self, slots: torch.Tensor, visible: int) -> ScatterView:
        """A `ScatterView` of this cache (the approximate cache's call)."""
        return ScatterView(self, slots, visible)

    def truncate(self, n: int) -> None:
        """Keep only the first `n` cached positions (n <= length)."""
        if not 0 <= n <= self.length:
            raise ValueError(f"cannot truncate a cache of length {self.length} to {n}")
        self.length = n


class ScatterView:
    """The approximate cache of one call: inputs write their keys/values into given slots.

    `slots` (B, N) long: the slab index each input's keys/values are written to (a slot
    past `visible`, e.g. the cache's spare last slot, discards them: padding); queries
    attend to slots [0, visible) of the slab: stored entries of positions that were not
    recomputed, and the fresh ones just written. Nothing else of the cache changes.
    """

    def __init__(self, cache: KVCache, slots: torch.Tensor, visible: int) -> None:
        if visible > cache.max_len - 1:
            raise ValueError(f"{visible} visible slots leave no spare slot in {cache.max_len}")
        self.cache, self.slots, self.visible = cache, slots, visible
        self.length = visible  # unused: the caller passes the positions

    def keys_values(
        self, layer: int, k_new: torch.Tensor, v_new: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Write k_new/v_new (B, H, N, Dh) at their slots; the visible slab (B, H, visible, Dh)."""
        index = self.slots[:, None, :, None].expand_as(k_new)
        k, v = self.cache.k[layer], self.cache.v[layer]
        k.scatter_(2, index, k_new.to(k.dtype))
        v.scatter_(2, index, v_new.to(v.dtype))
        return k[:, :, : self.visible], v[:, :, : self.visible]


class StackView:
    """A pure cached call of fixed shape: keys = the whole slab followed by the new inputs.

    `k`, `v` (layers, B, H, S, Dh) are read, never written (a mask must hide the slab's
    invalid slots); the new keys/values of every layer are kept in `new_k`/`new_v` for the
    caller to write back. Shapes never depend on how much of the cache is valid, so one
    captured graph (torch.compile / CUDA graphs) serves every call of a given input length.
    """

    def __init__(self, k: torch.Tensor, v: torch.Tensor) -> None:
        self.k, self.v = k, v
        self.length = 0  # unused: the caller passes the positions
        self.new_k: list[torch.Tensor] = []
        self.new_v: list[torch.Tensor] = []

    def keys_values(
        self, layer: int, k_new: torch.Tensor, v_new: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """(B, H, S + N, Dh) each: the slab of `layer`, then the new entries."""
        self.new_k.append(k_new)
        self.new_v.append(v_new)
        k_all = torch.cat((self.k[layer], k_new.to(self.k.dtype)), dim=2)
        v_all = torch.cat((self.v[layer], v_new.to(self.v.dtype)), dim=2)
        return k_all, v_all
