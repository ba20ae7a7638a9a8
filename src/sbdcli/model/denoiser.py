"""The BD3-LM denoiser: a diffusion transformer (DiT) with adaLN-Zero and rotary positions.

The network is architecturally identical to the published BD3-LM / MDLM checkpoints and its
parameter names equal theirs minus the `backbone.` prefix, so their state dicts load as is:
`vocab_embed.embedding`, `sigma_map.mlp.{0,2}`, `rotary_emb.inv_freq` (buffer),
`blocks.{i}.{norm1,attn_qkv,attn_out,norm2,mlp.0,mlp.2,adaLN_modulation}`,
`output_layer.{norm_final,linear,adaLN_modulation}`.

One block (c = SiLU(sigma_map(sigma)), sigma = 0 without time conditioning; sigma is one
noise level per sample (B,), or per token (B, N) so that one KV-cache call can encode clean
context at the level it was finished at and the noisy block at the current one):
    shift1, scale1, gate1, shift2, scale2, gate2 = adaLN_modulation(c)
    h = LN(x) * (1 + scale1) + shift1;  q, k, v = split(h W_qkv)  (rotary on q and k)
    x = x + gate1 * dropout(attention(q, k, v) W_out)
    x = x + gate2 * dropout(MLP(LN(x) * (1 + scale2) + shift2))
and the head is linear(LN(x) * (1 + scale) + shift) with LN a float32 non-affine LayerNorm
times a learned weight. `forward` returns raw logits (no SUBS); losses live in diffusion/loss.py,
masks and the KV cache in attention.py, sampling in diffusion/sampler.py.
"""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from sbdcli.config import ModelConfig
from sbdcli.model.attention import (
    HalvesMask,
    KVCache,
    Query,
    StackView,
    attend,
    block_causal_mask,
    flex_available,
    flex_block_mask,
    readout_mask,
    take,
)

__all__ = ["Denoiser"]

ATTN_BACKENDS = ("auto", "sdpa", "flex")


def modulate(x: torch.Tensor, shift: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """adaLN modulation x * (1 + scale) + shift; shift/scale (B or 1, 1, D)."""
    return x * (1 + scale) + shift


def rotate_half(x: torch.Tensor) -> torch.Tensor:
    """GPT-NeoX rotary helper: (x1, x2) -> (-x2, x1) on the two halves of the last dim."""
    x1, x2 = x.chunk(2, dim=-1)
    return torch.cat((-x2, x1), dim=-1)


def apply_rotary(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """RoPE (rotate-half form): x * cos + rotate_half(x) * sin; x (B, H, N, Dh)."""
    return x * cos.to(x.dtype) + rotate_half(x) * sin.to(x.dtype)


class LayerNorm(nn.Module):
    """Non-affine LayerNorm computed in float32, times a learned weight (no bias)."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(dim))
        self.dim = dim

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.layer_norm(x.float(), (self.dim,)) * self.weight


class Rotary(nn.Module):
    """Rotary angles theta_{p,j} = p * base^(-2j/Dh), duplicated over both halves."""

    def __init__(self, head_dim: int, base: float = 10000.0) -> None:
        super().__init__()
        inv_freq = 1.0 / (base ** (torch.arange(0, head_dim, 2).float() / head_dim))
        self.register_buffer("inv_freq", inv_freq)

    def forward(self, positions: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """cos, sin of shape (N, Dh) for positions (N,), or (B, 1, N, Dh) for (B, N)."""
        freqs = positions.to(self.inv_freq.dtype)[..., None] * self.inv_freq  # (..., N, Dh/2)
        emb = torch.cat((freqs, freqs), dim=-1)
        if emb.dim() == 3:
            emb = emb[:, None]
        return emb.cos(), emb.sin()


class TimestepEmbedder(nn.Module):
    """sigma -> MLP(sinusoidal features): the DiT timestep embedding (width cond_dim)."""

    def __init__(self, cond_dim: int, freq_dim: int = 256) -> None:
        super().__init__()
        self.freq_dim = freq_dim
        self.mlp = nn.Sequential(
            nn.Linear(freq_dim, cond_dim), nn.SiLU(), nn.Linear(cond_dim, cond_dim)
        )

    def features(self, sigma: torch.Tensor) -> torch.Tensor:
        """[cos(sigma w_j), sin(sigma w_j)], w_j = 10000^(-j/half): (B,) -> (B, freq_dim)."""
        half = self.freq_dim // 2
        freqs = torch.exp(
            -math.log(10000.0) * torch.arange(half, dtype=torch.float32, device=sigma.device) / half
        )
        args = sigma.float()[:, None] * freqs[None]
        emb = torch.cat((torch.cos(args), torch.sin(args)), dim=-1)
        if self.freq_dim % 2:
            emb = torch.cat((emb, torch.zeros_like(emb[:, :1])), dim=-1)
        return emb

    def forward(self, sigma: torch.Tensor) -> torch.Tensor:
        return self.mlp(self.features(sigma))


class EmbeddingLayer(nn.Module):
    """Token embedding table stored as a bare parameter `embedding` (V, D), as in BD3-LM."""

    def __init__(self, dim: int, vocab_size: int) -> None:
        super().__init__()
        self.embedding = nn.Parameter(torch.empty(vocab_size, dim))
        nn.init.kaiming_uniform_(self.embedding, a=math.sqrt(5))

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        return F.embedding(tokens, self.embedding)


class DiTBlock(nn.Module):
    """One adaLN-Zero transformer block (attention + GELU-tanh MLP)."""

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        d = config.d_model
        self.n_heads, self.head_dim, self.dropout = config.n_heads, config.head_dim, config.dropout
        self.norm1 = LayerNorm(d)
        self.attn_qkv = nn.Linear(d, 3 * d, bias=False)
        self.attn_out = nn.Linear(d, d, bias=False)
        self.norm2 = LayerNorm(d)
        self.mlp = nn.Sequential(
            nn.Linear(d, config.mlp_ratio * d),
            nn.GELU(approximate="tanh"),
            nn.Linear(config.mlp_ratio * d, d),
        )
        self.adaLN_modulation = nn.Linear(config.cond_dim, 6 * d)

    def qkv(self, h: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> list[torch.Tensor]:
        """q, k, v (B, H, N, Dh) from modulated input h (B, N, D); [q|k|v] layout, RoPE on q, k."""
        b, n, _ = h.shape
        q, k, v = self.attn_qkv(h).view(b, n, 3, self.n_heads, self.head_dim).permute(2, 0, 3, 1, 4)
        return [apply_rotary(q, cos, sin), apply_rotary(k, cos, sin), v]

    def modulations(self, c: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """shift1, scale1, gate1, shift2, scale2, gate2, each (B or 1, 1 or N, D), from c."""
        return tuple(self.adaLN_modulation(c).chunk(6, dim=2))

    def forward(
        self,
        x: torch.Tensor,
        c: torch.Tensor,
        cos: torch.Tensor,
        sin: torch.Tensor,
        mask: Any,
        cache: KVCache | None = None,
        layer: int = 0,
        query: Query = None,
        mods: tuple[torch.Tensor, ...] | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """x (B, N, D) -> (x' (B, Nq, D), k (B,H,N,Dh), v (B,H,N,Dh)).

        `query`: which inputs go on past attention (their keys/values are still made for
        all): None (all), an int n (the first n), or (B, k) indices (Nq = n or k).
        `mods`: `modulations(c)` computed beforehand (c is then unused).
        """
        shift1, scale1, gate1, shift2, scale2, gate2 = self.modulations(c) if mods is None else mods
        q, k, v = self.qkv(modulate(self.norm1(x), shift1, scale1), cos, sin)
        k_all, v_all = (k, v) if cache is None else cache.keys_values(layer, k, v)
        if query is not None:
            q, x = take(q, query, 2), take(x, query, 1)
            gate1, shift2, scale2, gate2 = (
                take(m, query, 1) for m in (gate1, shift2, scale2, gate2)
            )
        o = attend(q, k_all.to(q.dtype), v_all.to(q.dtype), mask)  # (B, H, n, Dh)
        o = o.transpose(1, 2).reshape(x.shape[0], x.shape[1], -1)
        p, train = self.dropout, self.training
        x = x + gate1 * F.dropout(self.attn_out(o), p, train)
        h = modulate(self.norm2(x), shift2, scale2)
        x = x + gate2 * F.dropout(self.mlp(h), p, train)
        return x, k, v


class FinalLayer(nn.Module):
    """adaLN-modulated final norm, then an untied Linear(D, V) with bias."""

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.norm_final = LayerNorm(config.d_model)
        self.linear = nn.Linear(config.d_model, config.vocab_size)
        self.adaLN_modulation = nn.Linear(config.cond_dim, 2 * config.d_model)

    def modulations(self, c: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """shift, scale (B or 1, 1 or N, D) from c."""
        return tuple(self.adaLN_modulation(c).chunk(2, dim=2))

    def forward(
        self, x: torch.Tensor, c: torch.Tensor, mods: tuple[torch.Tensor, ...] | None = None
    ) -> torch.Tensor:
        shift, scale = self.modulations(c) if mods is None else mods
        return self.linear(modulate(self.norm_final(x), shift, scale))


class Denoiser(nn.Module):
    """BD3-LM / MDLM DiT denoiser: tokens -> raw logits (B, N, V) float32.

    `attn_backend` ("auto", "sdpa", "flex") picks the kernel of the vectorised training pass;
    "auto" uses FlexAttention with a cached BlockMask on CUDA and SDPA elsewhere.
    `sampling_eps` is the clipped noise interval carried with checkpoints (BD3-LM var_min).
    """

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.config = config
        self.attn_backend = "auto"
        self.sampling_eps: tuple[float, float] = (1e-3, 1.0)
        self.checkpoint_header: dict[str, Any] = {}  # set by checkpoint.load_model
        self._constant_key: Any = None  # see constant_modulations
        self._constant_mods: list[tuple[torch.Tensor, ...]] = []
        self.vocab_embed = EmbeddingLayer(config.d_model, config.vocab_size)
        self.sigma_map = TimestepEmbedder(config.cond_dim, config.freq_dim)
        self.rotary_emb = Rotary(config.head_dim, config.rope_base)
        self.blocks = nn.ModuleList(DiTBlock(config) for _ in range(config.n_layers))
        self.output_layer = FinalLayer(config)
        self._zero_init()

    # ----------------------------------------------------------------------- init
    @torch.no_grad()
    def _zero_init(self) -> None:
        """adaLN-Zero: every modulation layer and the output layer start at zero.

        Everything else keeps the reference init (PyTorch Linear defaults, kaiming-uniform
        embedding). Each block is then the identity and the logits are uniform at step 0.
        On the tiny preset this trained faster than a GPT-2-style N(0, 0.02) init with open
        gates (block NELBO on a sparse Markov language: 1.73 vs 2.47 nats after 240 steps).
        """
        layers = [block.adaLN_modulation for block in self.blocks]
        layers += [self.output_layer.adaLN_modulation, self.output_layer.linear]
        for lin in layers:
            nn.init.zeros_(lin.weight)
            nn.init.zeros_(lin.bias)

    # ----------------------------------------------------------------------- core pass
    def conditioning(self, sigma: torch.Tensor | None, device: torch.device) -> torch.Tensor:
        """c = SiLU(sigma_map(sigma)) (B or 1, 1 or N, cond_dim) from sigma () / (B,) / (B, N).

        Without time conditioning sigma is replaced by 0 (c is then a learned constant).
        """
        if sigma is None or not self.config.time_conditioning:
            sigma = torch.zeros(1, device=device)
        sigma = sigma.to(device)
        grid = sigma.reshape(-1, 1) if sigma.dim() < 2 else sigma  # (B, 1) or (B, N)
        c = F.silu(self.sigma_map(grid.reshape(-1)))
        return c.view(grid.shape[0], grid.shape[1], -1)

    def constant_modulations(self, device: torch.device) -> list[tuple[torch.Tensor, ...]] | None:
        """Every block's and the head's adaLN modulations of a model that is not
        time-conditioned (c is then a learned constant), made once and reused by calls
        without gradients; None where they must be computed per call (gradients on, time
        conditioning, inside torch.compile, which captures them in its graph). Remade when
        the weights change (in-place updates bump their version), the device or the
        autocast dtype changes."""
        if self.config.time_conditioning or torch.is_grad_enabled():
            return None
        if torch.compiler.is_compiling():
            return None
        mods = [*self.blocks, self.output_layer]
        if not all(type(m) in (DiTBlock, FinalLayer) for m in mods):
            return None  # wrapped for sharding (FSDP2 subclasses it): weights exist in forward only
        params = [p for m in mods for p in m.adaLN_modulation.parameters()]
        params += list(self.sigma_map.parameters())
        try:  # in-place updates bump a version; swapped-in tensors change the pointer
            versions = tuple((p._version, p.data_ptr()) for p in params)
        except RuntimeError:  # parameters made under inference_mode have no version counter
            return None
        autocast = torch.is_autocast_enabled(device.type)
        key = (device, torch.get_autocast_dtype(device.type) if autocast else None, versions)
        if self._constant_key != key:
            c = self.conditioning(None, device)
            self._constant_mods = [m.modulations(c) for m in mods]
            self._constant_key = key
        return self._constant_mods

    def forward(
        self,
        tokens: torch.Tensor,
        positions: torch.Tensor | None = None,
        attn_mask: Any = None,
        kv_cache: KVCache | None = None,
        cache_commit: int = 0,
        sigma: torch.Tensor | None = None,
        n_out: int | None = None,
        readout: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Raw logits (B, n_out or k or N, V) float32 for tokens (B, N) long.

        positions: (N,) or (B, N); default T..T+N-1 with T the cache length.
        attn_mask: bool broadcastable to (B, H, N, T+N) (True = may attend), a FlexAttention
        BlockMask, or None (all visible). With `kv_cache` the inputs attend to the T cached
        positions followed by themselves, and afterwards the keys/values of the first
        `cache_commit` inputs are appended to the cache. `n_out`: only the first n_out
        positions are read out (the last layer skips the other queries); `readout` (B, k)
        long: only these input positions of each row are read out, in this order (the
        last layer and the output layer run on k positions per row; exclusive with n_out).
        sigma: the noise level per sample (B,) or per input token (B, N) (ignored without
        time conditioning).
        """
        if n_out is not None and readout is not None:
            raise ValueError("n_out and readout exclude each other")
        query: Query = n_out if readout is None else readout
        last = readout_mask(attn_mask, query)
        return self._run(tokens, positions, attn_mask, last, kv_cache, cache_commit, sigma, query)

    def _run(
        self,
        tokens: torch.Tensor,
        positions: torch.Tensor | None,
        mask: Any,
        last_mask: Any,
        cache: KVCache | None,
        commit: int,
        sigma: torch.Tensor | None,
        query: Query,
    ) -> torch.Tensor:
        start = 0 if cache is None else cache.length
        if positions is None:
            positions = torch.arange(start, start + tokens.shape[1], device=tokens.device)
        cos, sin = self.rotary_emb(positions)
        constant = self.constant_modulations(tokens.device)
        c = self.conditioning(sigma, tokens.device) if constant is None else None
        x = self.vocab_embed(tokens)  # (B, N, D)
        ks, vs = [], []
        for i, block in enumerate(self.blocks):
            is_last = i == len(self.blocks) - 1
            m, nq = (last_mask, query) if is_last else (mask, None)
            mods = None if constant is None else constant[i]
            x, k, v = block(x, c, cos, sin, m, cache, i, nq, mods)  # type: ignore[arg-type]
            if cache is not None and commit > 0:
                ks.append(k[:, :, :commit])
                vs.append(v[:, :, :commit])
        if ks:
            cache.append(ks, vs)  # type: ignore[union-attr]
        if constant is not None:
            return self.output_layer(x, c, constant[-1]).float()  # type: ignore[arg-type]
        return self.output_layer(x, take(c, query, 1)).float()  # type: ignore[arg-type]

    # ----------------------------------------------------------------------- passes
    def _use_flex(self, device: torch.device) -> bool:
        if self.attn_backend not in ATTN_BACKENDS:
            raise ValueError(f"attn_backend must be one of {ATTN_BACKENDS}")
        if self.attn_backend == "sdpa":
            return False
        available = flex_available(device)
        if self.attn_backend == "flex" and not available:
            raise RuntimeError("FlexAttention needs a CUDA device and torch >= 2.5")
        return available

    def train_logits(
        self,
        x_t: torch.Tensor,
        x_0: torch.Tensor,
        block_size: int,
        sigma: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Raw logits (B, L, V) of the vectorised training pass, x_t half.

        Block size B < L: one pass over concat(x_t, x_0) (2L tokens, position i twice) with
        `block_diff_mask`. B >= L: plain bidirectional attention on x_t alone (MDLM).
        """
        length, device = x_t.shape[1], x_t.device
        pos = torch.arange(length, device=device)
        if block_size >= length:
            return self._run(x_t, pos, None, None, None, 0, sigma, None)
        tokens = torch.cat((x_t, x_0), dim=1)  # (B, 2L)
        positions = torch.cat((pos, pos))
        if self._use_flex(device):
            full = flex_block_mask(length, block_size, device)
            last = flex_block_mask(length, block_size, device, q_len=length)
        else:
            full = last = HalvesMask.of(length, block_size, device)
        return self._run(tokens, positions, full, last, None, 0, sigma, length)

    def sample_logits(
        self, tokens: torch.Tensor, block_size: int, sigma: torch.Tensor | None = None
    ) -> torch.Tensor:
        """Raw logits (B, N, V) of one block-causal pass over a single stream (no cache)."""
        n = tokens.shape[1]
        mask = None if block_size >= n else block_causal_mask(n, block_size, tokens.device)
        pos = torch.arange(n, device=tokens.device)
        return self._run(tokens, pos, mask, mask, None, 0, sigma, None)

    def fixed_step(
        self,
        tokens: torch.Tensor,
        positions: torch.Tensor,
        attn_mask: torch.Tensor,
        cache_k: torch.Tensor,
        cache_v: torch.Tensor,
        sigma: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """A cached call whose shapes never depend on the cache's fill (for torch.compile).

        tokens (B, N) attend to the whole slab `cache_k`/`cache_v` (layers, B, H, S, Dh),
        then to themselves; `attn_mask` (N, S + N) bool hides the invalid slots. Nothing is
        written: returns logits (B, N, V) and the inputs' keys and values (layers, B, H, N, Dh).
        """
        view: Any = StackView(cache_k, cache_v)
        logits = self._run(tokens, positions, attn_mask, attn_mask, view, 0, sigma, None)
        return logits, torch.stack(view.new_k), torch.stack(view.new_v)

    def new_cache(self, batch: int, max_len: int | None = None) -> KVCache:
        """An empty KV cache for this model (float32, on the model's device)."""
        param = self.vocab_embed.embedding
        cfg = self.config
        return KVCache(
            cfg.n_layers,
            batch,
            cfg.n_heads,
            cfg.head_dim,
            max_len if max_len is not None else cfg.seq_len,
            device=param.device,
            dtype=param.dtype,
        )
