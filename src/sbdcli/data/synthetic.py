"""The embedded `topic-markov` language: construction, exact likelihood, sampling.

A document is a row [BOS, x_1, ..., x_{L-1}] over content tokens 0..V-1 (BOS = V,
MASK = V+1, vocab_size = V+2). One topic z ~ Uniform(K) is drawn per document, then
x_1 ~ pi_z and x_i ~ T_z[x_{i-1}]. Every distribution row is (1 - eps) * s + eps / V where
s puts Dirichlet(alpha) weights on `fanout` distinct successors drawn at random. The topic
is a global latent a myopic left-to-right drafter can break, and the likelihood is exact:

    log p(x) = logsumexp_z( log_prior_z + log_init_z(x_1) + sum_i log_trans_z(x_{i-1}, x_i) )

`Oracle` holds the three float64 tables, scores rows exactly, samples rows in float64, and
reports its own reference numbers (the NLL floor of fresh true samples). It is not a data
directory writer (`sbdcli.data`) and knows nothing about models.
"""

from __future__ import annotations

import dataclasses
import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from sbdcli.artifacts import load_tensors, save_tensors
from sbdcli.errors import UserError

ORACLE_SCHEMA = "sbd.oracle"
ORACLE_FILE = "oracle.safetensors"
LANGUAGE = "topic-markov"
SERIAL_ELEMENTS = 1 << 14  # elements per sampling op: below torch's parallel grain size


@dataclass(frozen=True)
class TopicMarkovSpec:
    """Parameters of the `topic-markov` language (the defaults are the embedded language)."""

    vocab: int = 64
    """V: number of content tokens (BOS = V, MASK = V + 1)."""
    topics: int = 8
    """K: number of topics; one is drawn uniformly per document."""
    fanout: int = 6
    """Distinct successors that carry the Dirichlet weight in every distribution row."""
    alpha: float = 0.3
    """Dirichlet concentration of the successor weights (small = peaked rows)."""
    eps: float = 0.02
    """Smoothing mass spread uniformly over all V tokens."""

    def __post_init__(self) -> None:
        checks = [
            (self.vocab >= 2, "vocab must be >= 2"),
            (self.topics >= 1, "topics must be >= 1"),
            (1 <= self.fanout <= self.vocab, "fanout must lie in [1, vocab]"),
            (self.alpha > 0 and math.isfinite(self.alpha), "alpha must be > 0"),
            (0.0 <= self.eps <= 1.0, "eps must lie in [0, 1]"),
        ]
        for ok, message in checks:
            if not ok:
                raise UserError(f"invalid topic-markov language: {message}")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def sparse_rows(n_rows: int, spec: TopicMarkovSpec, generator: torch.Generator) -> torch.Tensor:
    """Distribution rows (1 - eps) * s + eps / V with s ~ Dirichlet(alpha) on `fanout` tokens.

    Returns float64 (n_rows, V); every row sums to 1.
    """
    v, f = spec.vocab, spec.fanout
    keys = torch.rand(n_rows, v, generator=generator, dtype=torch.float64)  # (R, V)
    successors = keys.argsort(dim=1)[:, :f]  # (R, f) distinct random tokens
    # Dirichlet(alpha) = normalised Gamma(alpha) draws. torch.distributions cannot take a
    # generator, so call the kernel it uses (the same op) with ours.
    conc = torch.full((n_rows, f), spec.alpha, dtype=torch.float64)
    gamma = torch._standard_gamma(conc, generator=generator)  # (R, f)
    total = gamma.sum(dim=1, keepdim=True)
    weights = torch.where(total > 0, gamma / total.clamp_min(1e-300), 1.0 / f)  # (R, f)
    s = torch.zeros(n_rows, v, dtype=torch.float64).scatter_(1, successors, weights)
    return (1.0 - spec.eps) * s + spec.eps / v  # (R, V)


def build_oracle(spec: TopicMarkovSpec, seed: int) -> Oracle:
    """Draw one instance of the language, deterministically from `seed`."""
    gen = torch.Generator().manual_seed(int(seed))
    k, v = spec.topics, spec.vocab
    init = sparse_rows(k, spec, gen)  # (K, V)
    trans = sparse_rows(k * v, spec, gen).view(k, v, v)  # (K, V, V)
    log_prior = torch.full((k,), -math.log(k), dtype=torch.float64)  # uniform topics
    return Oracle(log_prior, init.log(), trans.log(), spec=spec.to_dict(), seed=int(seed))


class Oracle:
    """The exact distribution of a topic-markov language (float64 tables).

    log_prior (K,), log_init (K, V), log_trans (K, V, V); rows of token ids start with BOS.
    """

    def __init__(
        self,
        log_prior: torch.Tensor,
        log_init: torch.Tensor,
        log_trans: torch.Tensor,
        spec: dict[str, Any] | None = None,
        seed: int | None = None,
    ) -> None:
        self.log_prior = log_prior.to(torch.float64)  # (K,)
        self.log_init = log_init.to(torch.float64)  # (K, V)
        self.log_trans = log_trans.to(torch.float64)  # (K, V, V)
        self.spec = dict(spec or {})
        self.seed = seed
        self._cdf_cache: tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None = None
        k, v = self.log_init.shape
        if self.log_prior.shape != (k,) or self.log_trans.shape != (k, v, v):
            raise UserError(
                "oracle tables have inconsistent shapes: "
                f"log_prior {tuple(self.log_prior.shape)}, log_init {(k, v)}, "
                f"log_trans {tuple(self.log_trans.shape)}"
            )

    @property
    def topics(self) -> int:
        return int(self.log_init.shape[0])

    @property
    def vocab(self) -> int:
        """V, the number of content tokens."""
        return int(self.log_init.shape[1])

    @property
    def bos_id(self) -> int:
        return self.vocab

    @property
    def mask_id(self) -> int:
        return self.vocab + 1

    @property
    def vocab_size(self) -> int:
        return self.vocab + 2

    # ------------------------------------------------------------------ scoring
    def _content(self, tokens: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Check rows start with BOS; return clamped content ids (N, L-1) and validity (N,)."""
        if tokens.dim() != 2 or tokens.shape[1] < 1:
            raise UserError(f"oracle expects token rows (N, L), got shape {tuple(tokens.shape)}")
        tokens = tokens.long()
        if not bool((tokens[:, 0] == self.bos_id).all()):
            row = int((tokens[:, 0] != self.bos_id).nonzero()[0, 0])
            raise UserError(f"row {row} does not start with BOS ({self.bos_id})")
        x = tokens[:, 1:]  # (N, L-1)
        valid = ((x >= 0) & (x < self.vocab)).all(dim=1)  # (N,)
        return x.clamp(0, self.vocab - 1), valid

    def topic_log_joint(self, tokens: torch.Tensor) -> torch.Tensor:
        """log p(z, x) for every topic z: (N, L) rows -> float64 (N, K).

        Content ids outside [0, V) (BOS, MASK, ...) have probability zero: -inf.
        """
        x, valid = self._content(tokens)
        n, k = x.shape[0], self.topics
        out = self.log_prior.expand(n, k).clone()  # (N, K)
        if x.shape[1] >= 1:
            out += self.log_init.index_select(1, x[:, 0]).T  # (N, K)
        flat = self.log_trans.flatten(1)  # (K, V*V): entry prev * V + next
        chunk = max(1, (1 << 22) // (k * max(x.shape[1], 1)))
        for start in range(0, n, chunk):
            xs = x[start : start + chunk]
            if xs.shape[1] >= 2:
                pairs = (xs[:, :-1] * self.vocab + xs[:, 1:]).flatten()  # (n * (L-2),)
                steps = flat.index_select(1, pairs).view(k, len(xs), -1)  # (K, n, L-2)
                out[start : start + chunk] += steps.sum(dim=2).T
        return out.masked_fill(~valid[:, None], -math.inf)

    def log_likelihood(self, tokens: torch.Tensor) -> torch.Tensor:
        """Exact log p(x_1..x_{L-1}) of rows [BOS, x_1, ...]: float64 (N,) (topic marginalised)."""
        return torch.logsumexp(self.topic_log_joint(tokens), dim=1)

    def token_log_probs(self, tokens: torch.Tensor) -> torch.Tensor:
        """log p(x_i | x_<i) by forward filtering over topics: float64 (N, L), column 0 = 0.

        Sums along a row to `log_likelihood`; shows which tokens the truth finds unlikely.
        An id outside [0, V) gets -inf; later positions condition on its clamped id.
        """
        x, _ = self._content(tokens)
        n = x.shape[0]
        out = torch.zeros(n, x.shape[1] + 1, dtype=torch.float64)  # (N, L)
        joint = self.log_prior.expand(n, self.topics).clone()  # log p(z, x_<i)  (N, K)
        flat = self.log_trans.flatten(1)  # (K, V*V): entry prev * V + next
        for i in range(x.shape[1]):
            if i == 0:
                step = self.log_init.index_select(1, x[:, 0]).T  # (N, K)
            else:
                step = flat.index_select(1, x[:, i - 1] * self.vocab + x[:, i]).T  # (N, K)
            new = joint + step
            out[:, i + 1] = torch.logsumexp(new, 1) - torch.logsumexp(joint, 1)
            joint = new
        bad = (tokens[:, 1:] < 0) | (tokens[:, 1:] >= self.vocab)  # (N, L-1)
        out[:, 1:] = out[:, 1:].masked_fill(bad, -math.inf)
        return out

    # ------------------------------------------------------------------ sampling
    def sample(self, n: int, length: int, generator: torch.Generator) -> torch.Tensor:
        """Draw n true rows [BOS, x_1, ..., x_{length-1}] by float64 inverse CDF: long (n, length).

        All uniforms are drawn up front (column 0 picks the topic); rows are then filled in
        chunks small enough that no op wakes the thread pool (which costs more than the op;
        `index_select`, unlike advanced indexing, stays serial at this size).
        """
        if length < 1 or n < 0:
            raise UserError("sample needs length >= 1 and n >= 0")
        out = torch.full((n, length), self.bos_id, dtype=torch.long)
        if n == 0 or length == 1:
            return out
        u = torch.rand(n, length, generator=generator, dtype=torch.float64)  # (n, L)
        prior_cdf, init_cdf, trans_cdf = self._cdfs()
        chunk = max(1, SERIAL_ELEMENTS // self.vocab)
        for start in range(0, n, chunk):
            rows, uc = out[start : start + chunk], u[start : start + chunk]
            z = _draw(prior_cdf.expand(len(rows), -1), uc[:, 0])  # (c,)
            rows[:, 1] = _draw(init_cdf.index_select(0, z), uc[:, 1])
            for i in range(2, length):
                cdf = trans_cdf.index_select(0, z * self.vocab + rows[:, i - 1])  # (c, V)
                rows[:, i] = _draw(cdf, uc[:, i])
        return out

    def _cdfs(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Cumulative tables for sampling: (K,), (K, V), (K*V, V) with rows (z, prev)."""
        if self._cdf_cache is None:
            self._cdf_cache = (
                self.log_prior.exp().cumsum(0),
                self.log_init.exp().cumsum(1),
                self.log_trans.exp().cumsum(2).flatten(0, 1).contiguous(),
            )
        return self._cdf_cache

    def reference_numbers(
        self, samples: int, length: int, generator: torch.Generator
    ) -> dict[str, Any]:
        """The oracle's own numbers on fresh true samples (the floor any generator meets).

        nll_per_token = -sum log p(x) / (samples * (length - 1)) over content tokens;
        its standard error from the per-row means; unigram_entropy = the mean over rows of
        the entropy (nats) of each row's token histogram (BOS excluded).
        """
        rows = self.sample(samples, length, generator)  # (S, L)
        per_row = -self.log_likelihood(rows) / (length - 1)  # (S,)
        stderr = float(per_row.std() / math.sqrt(samples)) if samples > 1 else float("nan")
        return {
            "nll_per_token": float(per_row.mean()),
            "nll_per_token_stderr": stderr,
            "unigram_entropy": float(unigram_entropy(rows[:, 1:], self.vocab).mean()),
            "samples": int(samples),
            "seq_len": int(length),
        }

    # ------------------------------------------------------------------ files
    def header(self) -> dict[str, Any]:
        return {
            "language": LANGUAGE,
            "spec": self.spec,
            "seed": self.seed,
            "vocab_size": self.vocab_size,
            "bos_id": self.bos_id,
            "mask_id": self.mask_id,
        }

    def save(self, path: str | os.PathLike[str]) -> None:
        """Write `oracle.safetensors`: float64 log_prior [K], log_init [K,V], log_trans [K,V,V]."""
        tensors = {
            "log_prior": self.log_prior,
            "log_init": self.log_init,
            "log_trans": self.log_trans,
        }
        save_tensors(path, tensors, ORACLE_SCHEMA, self.header())


def _draw(cdf: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
    """Inverse-CDF categorical draws: cumulative probs (m, V), uniforms (m,) -> ids (m,).

    index = #{j : cdf_j <= u * total} (= searchsorted right), clamped for rounding.
    """
    idx = (cdf <= u[:, None] * cdf[:, -1:]).sum(dim=1)  # (m,)
    return idx.clamp_max(cdf.shape[1] - 1)


def unigram_entropy(tokens: torch.Tensor, vocab: int) -> torch.Tensor:
    """Entropy (nats) of each row's token histogram: (N, T) -> float64 (N,)."""
    counts = torch.zeros(tokens.shape[0], vocab, dtype=torch.float64)
    counts.scatter_add_(1, tokens.long(), torch.ones_like(tokens, dtype=torch.float64))
    p = counts / counts.sum(dim=1, keepdim=True).clamp_min(1.0)  # (N, V)
    return -(p * p.clamp_min(1e-300).log()).sum(dim=1)


def load_oracle(path: str | os.PathLike[str]) -> Oracle:
    """Load an oracle from its file, a data directory, or a run directory (RUN/data)."""
    p = Path(path)
    if p.is_dir():
        candidates = [p / ORACLE_FILE, p / "data" / ORACLE_FILE]
        found = next((c for c in candidates if c.is_file()), None)
        if found is None:
            raise UserError(f"{p} holds no {ORACLE_FILE} (only synthetic data has an oracle)")
        p = found
    tensors, header = load_tensors(p, schema=ORACLE_SCHEMA)
    missing = {"log_prior", "log_init", "log_trans"} - set(tensors)
    if missing:
        raise UserError(f"{p} lacks oracle tensors: {', '.join(sorted(missing))}")
    oracle = Oracle(
        tensors["log_prior"],
        tensors["log_init"],
        tensors["log_trans"],
        spec=header.get("spec"),
        seed=header.get("seed"),
    )
    rows = torch.cat([oracle.log_init, oracle.log_trans.flatten(0, 1)])  # (K + K*V, V)
    sums = torch.cat([oracle.log_prior.logsumexp(0)[None], rows.logsumexp(dim=1)])
    if not bool((sums.abs() < 1e-9).all()):
        raise UserError(f"{p}: oracle distributions are not normalised")
    return oracle


def oracle_references(
    data_dir: Path, manifest: dict[str, Any], val_rows: torch.Tensor
) -> dict[str, float]:
    """Oracle references for validation NELBO (synthetic data only): the manifest's floor
    (NLL per token of fresh true samples) and the exact oracle NLL per token of the
    validation rows themselves."""
    out: dict[str, float] = {}
    floor = (manifest.get("oracle") or {}).get("nll_per_token")
    if isinstance(floor, (int, float)):
        out["oracle_floor"] = float(floor)
    if (data_dir / ORACLE_FILE).is_file():
        nll = -load_oracle(data_dir / ORACLE_FILE).log_likelihood(val_rows)  # (N,)
        out["oracle_val_nll"] = float(nll.sum() / (val_rows.shape[0] * (val_rows.shape[1] - 1)))
    return out
