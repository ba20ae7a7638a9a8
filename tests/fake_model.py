"""Test doubles of the denoiser for sampler and remask tests (no real network).

`FakeDenoiser` honours the model contract `forward(tokens, positions, attn_mask, kv_cache,
cache_commit, sigma, readout) -> logits (B, N or k, V)` with integer arithmetic, so a
KV-cached and an uncached run are bit-identical, while every logit depends on exactly
which (token, position) pairs the query may see: a cache holding the wrong keys, or a
wrong mask, changes the numbers. `CopyRightDenoiser` predicts the token to the right of
each position when it is visible, so it shows whether a sampler lets a block see its right
context.
"""

from __future__ import annotations

from collections.abc import Iterator
from types import SimpleNamespace

import pytest
import torch


def read_out(logits: torch.Tensor, readout: torch.Tensor | None) -> torch.Tensor:
    """The model contract's `readout` (B, k): only those input positions' logits (B, k, V)."""
    if readout is None:
        return logits
    return logits.gather(1, readout[..., None].expand(-1, -1, logits.shape[-1]))


class FakeCache:
    """Stores the (token, position) 'keys' of committed inputs per batch row."""

    def __init__(self, batch: int, max_len: int) -> None:
        self.tok = torch.zeros(batch, max_len, dtype=torch.long)
        self.pos = torch.zeros(batch, max_len, dtype=torch.long)
        self.length = 0
        self.max_len = max_len
        self.commits: list[int] = []

    def truncate(self, n: int) -> None:
        assert 0 <= n <= self.length
        self.length = n

    def keep_last(self, n: int) -> None:
        start = self.length - n
        self.tok[:, :n] = self.tok[:, start : self.length].clone()
        self.pos[:, :n] = self.pos[:, start : self.length].clone()
        self.length = n

    def append(self, tok: torch.Tensor, pos: torch.Tensor) -> None:
        n = tok.shape[1]
        assert self.length + n <= self.max_len, "fake cache overflow"
        self.tok[:, self.length : self.length + n] = tok
        self.pos[:, self.length : self.length + n] = pos
        self.length += n
        self.commits.append(n)


class FakeDenoiser(torch.nn.Module):
    """logits[q, v] = (sum_{visible j} W[tok_j, v] (1 + pos_j mod 3) + P[pos_q, v]) mod 97 / s.

    Integer sums are exact in any order, so cached and uncached paths agree bit for bit.
    """

    def __init__(
        self,
        vocab_size: int = 12,
        seq_len: int = 32,
        seed: int = 0,
        scale: float = 12.0,
        bos_id: int | None = None,
        eos_id: int | None = None,
    ) -> None:
        super().__init__()
        mask_id = vocab_size - 1
        bos = vocab_size - 2 if bos_id is None else bos_id
        self.config = SimpleNamespace(
            vocab_size=vocab_size,
            mask_id=mask_id,
            seq_len=seq_len,
            bos_id=bos,
            eos_id=eos_id,
            time_conditioning=False,
        )
        gen = torch.Generator().manual_seed(seed)
        self.W = torch.randint(0, 97, (vocab_size, vocab_size), generator=gen)
        self.P = torch.randint(0, 97, (4096, vocab_size), generator=gen)
        self.scale = scale
        self.calls: list[dict] = []
        self.dummy = torch.nn.Parameter(torch.zeros(1))

    def new_cache(self, batch: int, max_len: int | None = None) -> FakeCache:
        return FakeCache(batch, max_len or self.config.seq_len)

    def forward(
        self,
        tokens: torch.Tensor,
        positions: torch.Tensor | None = None,
        attn_mask: torch.Tensor | None = None,
        kv_cache: FakeCache | None = None,
        cache_commit: int = 0,
        sigma: torch.Tensor | None = None,
        readout: torch.Tensor | None = None,
    ) -> torch.Tensor:
        b, n = tokens.shape
        t = 0 if kv_cache is None else kv_cache.length
        if positions is None:
            positions = torch.arange(t, t + n)
        pos = positions.expand(b, n) if positions.dim() == 1 else positions
        assert int(pos.max()) < self.config.seq_len, "position beyond the trained length"
        key_tok, key_pos = tokens, pos
        if kv_cache is not None:
            key_tok = torch.cat((kv_cache.tok[:, :t], tokens), dim=1)
            key_pos = torch.cat((kv_cache.pos[:, :t], pos), dim=1)
        visible = torch.ones(b, n, t + n, dtype=torch.bool)
        if attn_mask is not None:
            m = attn_mask[:, 0] if attn_mask.dim() == 4 else attn_mask  # drop the head dim
            visible = visible & m.expand(b, n, t + n)
        contrib = self.W[key_tok] * (1 + key_pos % 3)[..., None]  # (b, K, V)
        h = torch.einsum("bqk,bkv->bqv", visible.long(), contrib) + self.P[pos]
        self.calls.append({"n": n, "cache": t, "commit": cache_commit})
        self.calls[-1]["readout"] = None if readout is None else readout.shape[1]
        if kv_cache is not None and cache_commit > 0:
            kv_cache.append(tokens[:, :cache_commit], pos[:, :cache_commit])
        return read_out((h % 97).float() / self.scale, readout)

    def probs_at(
        self, tokens: torch.Tensor, visible: torch.Tensor, query: int, sampler: bool = False
    ) -> torch.Tensor:
        """Independent reference: SUBS probabilities (float64) at `query` of one sequence
        tokens (T,) given a boolean `visible` (T,) set of keys, positions = indices.
        `sampler`: as the sampler draws, a BOS distinct from EOS suppressed too."""
        idx = visible.nonzero().squeeze(1)
        contrib = self.W[tokens[idx]] * (1 + idx % 3)[:, None]
        h = contrib.sum(0) + self.P[query]
        logits = ((h % 97).float() / self.scale).double()
        logits[self.config.mask_id] = float("-inf")
        bos, eos = self.config.bos_id, self.config.eos_id
        if sampler and bos is not None and bos != eos:
            logits[bos] = float("-inf")
        return torch.softmax(logits, dim=-1)


class CopyRightDenoiser(FakeDenoiser):
    """Predicts, at every position, the token just to its right when that key is visible and
    not [MASK] (probability ~1); otherwise a flat distribution over the content tokens."""

    def forward(
        self,
        tokens: torch.Tensor,
        positions: torch.Tensor | None = None,
        attn_mask: torch.Tensor | None = None,
        kv_cache: FakeCache | None = None,
        cache_commit: int = 0,
        sigma: torch.Tensor | None = None,
        readout: torch.Tensor | None = None,
    ) -> torch.Tensor:
        b, n = tokens.shape
        t = 0 if kv_cache is None else kv_cache.length
        pos = positions.expand(b, n) if positions.dim() == 1 else positions
        key_tok, key_pos = tokens, pos
        if kv_cache is not None:
            key_tok = torch.cat((kv_cache.tok[:, :t], tokens), dim=1)
            key_pos = torch.cat((kv_cache.pos[:, :t], pos), dim=1)
        visible = torch.ones(b, n, t + n, dtype=torch.bool)
        if attn_mask is not None:
            m = attn_mask[:, 0] if attn_mask.dim() == 4 else attn_mask  # drop the head dim
            visible = visible & m.expand(b, n, t + n)
        right = (key_pos[:, None, :] == pos[:, :, None] + 1) & visible  # (b, n, K)
        right = right & (key_tok != self.config.mask_id)[:, None, :]
        logits = torch.zeros(b, n, self.config.vocab_size)
        onehot = torch.nn.functional.one_hot(key_tok, self.config.vocab_size).float()
        logits += 30.0 * torch.einsum("bqk,bkv->bqv", right.float(), onehot)
        if kv_cache is not None and cache_commit > 0:
            kv_cache.append(tokens[:, :cache_commit], pos[:, :cache_commit])
        return read_out(logits, readout)


def tiny_denoiser(seq_len: int = 32, vocab_size: int = 40, seed: int = 0) -> torch.nn.Module:
    """A small random real `Denoiser` whose logits depend on the context.

    The "scratch" init zeroes the output layer (constant logits); here every weight is
    redrawn so cache and mask mistakes change the numbers. BOS = vocab - 2, MASK = vocab - 1.
    """
    from sbdcli.config import ModelConfig
    from sbdcli.model import Denoiser

    torch.manual_seed(seed)
    cfg = ModelConfig(
        vocab_size=vocab_size,
        mask_id=vocab_size - 1,
        seq_len=seq_len,
        n_layers=2,
        d_model=32,
        n_heads=4,
        cond_dim=16,
        dropout=0.0,
        bos_id=vocab_size - 2,
        eos_id=None,
    )
    model = Denoiser(cfg)
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn(p.shape, generator=gen) * 0.3)
    return model.eval()


@pytest.fixture(autouse=True)
def one_thread() -> Iterator[None]:
    """Run a test with one torch thread: these tests multiply tiny matrices, where one thread
    is fastest, and two threads on oversubscribed shared cores can be 50x slower."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
