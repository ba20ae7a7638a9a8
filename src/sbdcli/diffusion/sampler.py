"""Block-diffusion sampling on token tensors: the draft and the revise stages of SBD.

One engine, `FillEngine`, regenerates the positions flagged in `todo` block by block,
left to right, every other token fixed and visible as context. It is a stepping engine:
iterating it makes one network call per step and yields that call's `CallEvent` (rows
that took part, positions committed, their tokens and snapshot confidences); when it is
exhausted its `result` is the `FillResult`. `cancel(row)` takes a row out of later calls.
`fill_masked` runs an engine to the end, passing each event to a consumer (a progress
display, a live view):
- `draft` = `fill_masked` on a sequence that is all [MASK] after its prompt (BOS first),
  `draft_engine` its stepping form;
- `revise` = `fill_masked` on the `masked` positions of finished sequences; block size
  >= length is one fully bidirectional block ("full"), smaller blocks run semi-AR;
  `revise_engine` its stepping form.

Rules this module fixes (docs/sampling.md explains them):
- **Attention.** Block b (positions [lo, hi)) sees every earlier block and itself. The
  network call is the window of the cache kind (calls.py: `--cache none`, exact,
  approx:R, captured), one `logits(x, lo, hi, sigma)` for all of them; every network call
  denoises, so NFE counts every call. Longer than the trained length L, the window is the
  last L positions ending at the block's end, exactly as if it were the whole sequence.
- **Tokens per call.** The reveal policy (`SamplerConfig.reveal`: `FixedSteps`,
  `ReferenceSchedule`, `Threshold`, `FirstHitting`) says how many masked positions of the
  block a call reveals per sample and which; reveal.py runs it (`rule_for(policy)`): fixed
  counts ceil(r / max(S - s, 1)), BD3-LM's reference law (steps that reveal nothing are
  skipped without a call), every draw with probability >= TAU (at least the most
  confident), or one uniformly chosen position; random positions, or the most probable
  first with `confident`.
- **Waiting.** A sample with nothing left in the current block takes no part in a call:
  it draws nothing from its generator and its `nfe` does not grow.
- **Noise level** (time-conditioned models only): each call passes sigma(t) per sample, t
  from the policy's `level` (BD3-LM's per-call t); with the cache, the clean blocks
  written in a call carry the level they were finished at (docs/sampling.md).
- **Categorical draw.** SUBS: the [MASK] logit is -inf. Logits -> float64 (or float32 as a
  recorded ablation), divided by `temperature`, nucleus-truncated, Gumbel-max with the
  sample's own `torch.Generator`. Nucleus rule (as BD3-LM): sort descending, keep the tokens
  whose cumulative probability is <= top_p, always keep the most likely one; the token
  whose mass crosses top_p is excluded.
- **Snapshot confidence** of a committed token = the model's softmax probability of it at
  temperature 1 with [MASK] suppressed, before temperature and nucleus, at the call that
  committed it. `confidence_nucleus` = its probability under the distribution
  actually sampled (temperature + nucleus, renormalised). `step` = the sample's cumulative
  call count at that call (1-based; 0 for prompt and untouched tokens).
- **Reproducibility.** Every sample has its own generator and its draws depend only on
  its own state, so a batch of n gives the same samples as n batches of 1 (up to float
  rounding of batched matmuls), and cache/no-cache runs draw identical random numbers.
  A cancelled row waits like a sample with nothing left to do, so the other rows are
  bit-identical to a run without the cancel (with the approximate cache a call's query
  width is the batch's largest masked count, so their floats are only as batch invariant
  as that cache).

Not here: record formats and model loading (pipeline/), remasking (remask.py).
The module is long (about 550 lines) because the engine, its per-sample state and the
draw rules are read together; the network call lives in calls.py, the per-call counts in
reveal.py.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import torch

from sbdcli.config import SamplerConfig
from sbdcli.diffusion import precision
from sbdcli.diffusion.calls import check_compile, make_window, model_device
from sbdcli.diffusion.reveal import FixedStepsRule, reference_reveal_probs, rule_for
from sbdcli.diffusion.schedule import LogLinearSchedule
from sbdcli.errors import UserError

__all__ = [
    "CallEvent",
    "FillEngine",
    "FillResult",
    "SamplerConfig",
    "draft",
    "draft_engine",
    "draft_inputs",
    "fill_masked",
    "make_generator",
    "nucleus_keep",
    "reference_reveal_probs",
    "revise",
    "revise_engine",
    "sample_categorical",
]

DTYPES = {"float64": torch.float64, "float32": torch.float32}
"""The torch dtype of each `SamplerConfig.dtype` name."""


@dataclass
class FillResult:
    """Output of `fill_masked` for a batch of n sequences of length T."""

    tokens: torch.Tensor  # (n, T) long
    confidence: torch.Tensor  # (n, T) float64, 1.0 where nothing was committed
    confidence_nucleus: torch.Tensor  # (n, T) float64
    step: torch.Tensor  # (n, T) long, 0 where nothing was committed
    nfe: torch.Tensor  # (n,) long: network calls that revealed tokens of this sample
    stop: torch.Tensor  # (n,) long: index of the first generated EOS (-1: none / not asked)
    committed: torch.Tensor  # (n, T) bool: positions written by this call
    cancelled: torch.Tensor  # (n,) bool: rows taken out by `FillEngine.cancel`


# --------------------------------------------------------------------------- randomness
def make_generator(seed: int, stage: str, index: int, rid: str, device: Any = "cpu") -> Any:
    """A generator seeded from (seed, stage name, stage index, record id) by sha256.

    Keyed by the record id so a record's draws do not depend on its batch; keyed by the
    stage so the draft and a later revise with the same --seed draw independent numbers.
    """
    digest = hashlib.sha256(f"{seed}|{stage}|{index}|{rid}".encode()).digest()
    gen = torch.Generator(device=device)
    gen.manual_seed(int.from_bytes(digest[:8], "little") & ((1 << 63) - 1))
    return gen


def nucleus_keep(probs: torch.Tensor, top_p: float) -> torch.Tensor:
    """Nucleus (top-p) support, BD3-LM rule: keep sorted tokens with cumsum <= p, plus the top.

    probs (..., V) -> bool (..., V). The token whose cumulative mass crosses p is dropped.
    """
    if top_p >= 1.0:
        return torch.ones_like(probs, dtype=torch.bool)
    sorted_p, order = probs.sort(dim=-1, descending=True)
    keep_sorted = sorted_p.cumsum(dim=-1) <= top_p
    keep_sorted[..., 0] = True
    return torch.zeros_like(keep_sorted).scatter(-1, order, keep_sorted)


def sample_categorical(
    logits: torch.Tensor, generator: Any, cfg: SamplerConfig, mask_id: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Draw one token per row of logits (k, V) with uniforms from `generator`; see `gumbel_max`."""
    dtype = DTYPES[cfg.dtype]
    u = torch.rand(logits.shape, generator=generator, dtype=dtype, device=logits.device)
    return gumbel_max(logits, u, cfg, mask_id)


def gumbel_max(
    logits: torch.Tensor, u: torch.Tensor, cfg: SamplerConfig, mask_id: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Gumbel-max draw from q = nucleus(softmax(z / temperature)), z = SUBS(logits).

    logits (k, V) raw, u (k, V) uniforms in the sampling dtype -> token (k,) long,
    confidence (k,) float64 = p(token) at temperature 1 with [MASK] suppressed, before the
    nucleus; confidence_nucleus (k,) float64 = q(token). argmax(log q - log(-log u)) is an
    exact draw from q (the Gumbel-max trick).
    """
    dtype = DTYPES[cfg.dtype]
    z = logits.to(dtype)
    z[..., mask_id] = -math.inf  # SUBS: [MASK] is never predicted
    log_p = torch.log_softmax(z, dim=-1)  # (k, V) model probabilities
    z_t = z / cfg.temperature
    keep = nucleus_keep(torch.softmax(z_t, dim=-1), cfg.top_p)
    log_q = torch.log_softmax(z_t.masked_fill(~keep, -math.inf), dim=-1)
    gumbel = -torch.log(-torch.log(u.to(dtype).clamp_min(torch.finfo(dtype).tiny)))
    token = torch.argmax(log_q + gumbel, dim=-1)  # (k,)
    conf = log_p.gather(-1, token[:, None]).squeeze(-1).exp().double()
    conf_n = log_q.gather(-1, token[:, None]).squeeze(-1).exp().double()
    return token, conf, conf_n


def _check_lengths(model: Any, length: int, block: int) -> None:
    max_len = model.config.seq_len
    if length > max_len and block > max_len:
        raise UserError(
            f"a block of {block} tokens exceeds the model's trained length {max_len}: a "
            f"sequence of {length} tokens needs a block size <= {max_len} (sliding window)"
        )


class _State:
    """Per-sample bookkeeping of one `fill_masked` call."""

    def __init__(
        self, x: torch.Tensor, todo: torch.Tensor, step_offset: torch.Tensor, mask_id: int
    ) -> None:
        n, length = x.shape
        self.x, self.todo, self.mask_id = x, todo, mask_id
        device = x.device
        self.committed = torch.zeros_like(todo)
        self.conf = torch.ones(n, length, dtype=torch.float64, device=device)
        self.conf_n = torch.ones(n, length, dtype=torch.float64, device=device)
        self.step = torch.zeros(n, length, dtype=torch.long, device=device)
        self.nfe = torch.zeros(n, dtype=torch.long)
        self.offset = step_offset.to(torch.long).cpu()


def _uniforms(gens: Sequence[Any], counts: list[int], cols: int, dtype: Any, device: Any) -> Any:
    """Per-sample uniforms (counts[i], cols) from sample i's own generator, stacked row-major."""
    parts = [
        torch.rand((c, cols), generator=gens[i], dtype=dtype, device=device)
        for i, c in enumerate(counts)
        if c > 0
    ]
    return torch.cat(parts)


READOUT_QUANTUM = 4
"""Read-out widths are padded to a multiple of this. A CPU matmul gives a row the same
result in any batch only when the row count is a multiple of 4 (measured with MKL: 1, 2 or
3 rows round differently), so a padded width keeps a row's result independent of how many
rows share its batch, as the full block (4 or 8 inputs per row) always did."""


@dataclass
class _Plan:
    """What one call commits, as far as it is known before the call: tokens per sample k
    (n,), and under a random order (chosen independently of the logits) the positions
    (rows, cols) and `readout` (n, width) block-relative columns to compute (max k padded
    to a multiple of `READOUT_QUANTUM`; None where that is the whole block)."""

    k: torch.Tensor
    rows: torch.Tensor | None = None
    cols: torch.Tensor | None = None
    readout: torch.Tensor | None = None
    slots: torch.Tensor | None = None  # column of each (row, col) in `readout`


def _plan(
    todo: torch.Tensor,
    clock: tuple[torch.Tensor, torch.Tensor],
    rule: FixedStepsRule,
    gens: Sequence[Any],
) -> _Plan:
    """The call's tokens per sample (`rule.count`) and, under a random order, its positions.

    todo (n, N) bool: the block's masked positions; clock = (calls, steps): each sample's
    calls and reference-schedule steps in this block. random: sample i draws N uniform keys
    and reveals its k_i masked positions with the smallest keys, so the logits are needed
    only there. Otherwise the positions are chosen from the draws, after the call.
    """
    n, block = todo.shape
    k = rule.count(todo.sum(dim=1).cpu(), clock, block, gens)  # (n,)
    if not rule.random_order:
        return _Plan(k)
    device = todo.device
    counts = k.to(device)
    keys = _uniforms(gens, [block if int(c) else 0 for c in k], 1, torch.float64, device)
    full = torch.full((n, block), 2.0, dtype=torch.float64, device=device)
    full[counts > 0] = keys.view(-1, block)
    rank = full.masked_fill(~todo, 3.0).argsort(dim=1).argsort(dim=1)
    rows, cols = (todo & (rank < counts[:, None])).nonzero(as_tuple=True)
    width = -(-max(1, int(k.max())) // READOUT_QUANTUM) * READOUT_QUANTUM
    if width >= block:  # nothing to save: every position, as without a plan
        return _Plan(k, rows, cols, None, cols)
    slots = torch.arange(len(rows), device=device) - (counts.cumsum(0) - counts)[rows]
    readout = torch.zeros(n, width, dtype=torch.long, device=device)
    readout[rows, slots] = cols
    return _Plan(k, rows, cols, readout, slots)


def _choose(
    todo: torch.Tensor,
    plan: _Plan,
    logits: torch.Tensor,
    cfg: SamplerConfig,
    rule: FixedStepsRule,
    gens: Any,
    mask_id: int,
) -> tuple[torch.Tensor, ...]:
    """Positions to reveal in a block and their draws: (rows, cols, token, conf, conf_n).

    todo (n, N) bool. random order: the plan's positions, `logits` (n, max k, V) read out
    there, Gumbel noise drawn for them only. Otherwise `logits` is (n, N, V): a draw for
    every masked position, and `rule.keep` chooses among the draws by their rank (0 = the
    most probable; ties: leftmost): the k_i best (confident), or those above a threshold
    and the best.
    """
    n, block = todo.shape
    vocab, device = logits.shape[-1], logits.device
    dtype, k = DTYPES[cfg.dtype], plan.k
    if plan.rows is not None and plan.cols is not None:
        u = _uniforms(gens, k.tolist(), vocab, dtype, device)
        draws = gumbel_max(logits[plan.rows, plan.slots], u, cfg, mask_id)
        return plan.rows, plan.cols, *draws
    rows, cols = todo.nonzero(as_tuple=True)
    u = _uniforms(gens, todo.sum(dim=1).tolist(), vocab, dtype, device)
    tok, conf, conf_n = gumbel_max(logits[rows, cols], u, cfg, mask_id)
    score = torch.full((n, block), -1.0, dtype=torch.float64, device=device)
    score[rows, cols] = conf
    rank = (-score).argsort(dim=1, stable=True).argsort(dim=1)
    keep = rule.keep(conf, rank[rows, cols], k.to(device)[rows])
    return rows[keep], cols[keep], tok[keep], conf[keep], conf_n[keep]


def _reveal(
    state: _State,
    logits: torch.Tensor,
    window: tuple[int, int],
    plan: _Plan,
    cfg: SamplerConfig,
    rule: FixedStepsRule,
    gens: Sequence[Any],
) -> tuple[torch.Tensor, tuple[torch.Tensor, ...]]:
    """One call's commits in the block window = [lo, hi) for every sample, as `plan` says.

    Returns active (n,) bool and the commits (rows, positions, tokens, confidences), sorted
    by row, then position.
    """
    lo, hi = window
    active = plan.k > 0
    todo = state.todo[:, lo:hi]
    rows, cols, tok, conf, conf_n = _choose(todo, plan, logits, cfg, rule, gens, state.mask_id)
    state.nfe += active.long()
    pos = lo + cols
    state.x[rows, pos] = tok
    state.todo[rows, pos] = False
    state.committed[rows, pos] = True
    state.conf[rows, pos] = conf
    state.conf_n[rows, pos] = conf_n
    state.step[rows, pos] = (state.offset + state.nfe).to(pos.device)[rows]
    return active, (rows, pos, tok, conf)


def _stop_at_eos(state: _State, hi: int, eos_id: int, stop: torch.Tensor) -> None:
    """After a block: samples that generated EOS in [0, hi) stop (their later work is dropped)."""
    hits = (state.x[:, :hi] == eos_id) & state.committed[:, :hi]  # (n, hi)
    for i in range(state.x.shape[0]):
        if stop[i] < 0 and bool(hits[i].any()):
            stop[i] = int(hits[i].nonzero()[0, 0])
            state.todo[i, hi:] = False


@dataclass(frozen=True)
class CallEvent:
    """What one network call of a `FillEngine` committed (one event per call).

    `rows` are the batch rows that took part (ascending); `positions[j]`, `tokens[j]` and
    `confidences[j]` belong to row `rows[j]`: the sequence positions the call committed
    (ascending), their token ids and their snapshot confidences. The call worked on the
    block [lo, hi). `call` counts the engine's network calls from 1.
    """

    call: int
    lo: int
    hi: int
    rows: tuple[int, ...]
    positions: tuple[tuple[int, ...], ...]
    tokens: tuple[tuple[int, ...], ...]
    confidences: tuple[tuple[float, ...], ...]


def _event(call: int, lo: int, hi: int, commits: tuple[torch.Tensor, ...]) -> CallEvent:
    """A `CallEvent` from one call's commits (rows, positions, tokens, confidences)."""
    rows, pos, tok, conf = (t.tolist() for t in commits)
    grouped: dict[int, tuple[list[int], list[int], list[float]]] = {}
    for r, p, t, c in zip(rows, pos, tok, conf, strict=True):
        entry = grouped.setdefault(r, ([], [], []))
        entry[0].append(p)
        entry[1].append(t)
        entry[2].append(c)
    parts = list(grouped.values())
    return CallEvent(
        call=call,
        lo=lo,
        hi=hi,
        rows=tuple(grouped),
        positions=tuple(tuple(e[0]) for e in parts),
        tokens=tuple(tuple(e[1]) for e in parts),
        confidences=tuple(tuple(e[2]) for e in parts),
    )


class FillEngine:
    """The sampler in stepping form: iterate it to get one `CallEvent` per network call.

    Regenerates the positions `todo` (n, T) bool of `tokens` (n, T) block by block; every
    other position is fixed context and block b sees blocks < b and itself. Calls are made
    while any sample has masked positions in the current block; a sample's `nfe` counts the
    calls in which it revealed tokens. `eos_id`: a sample stops after the block in which it
    generated EOS (`stop` holds its index). When the iteration ends, `result` holds the
    `FillResult`. `cancel(row)` takes a row out from the next call on (its positions not
    yet committed stay [MASK], `result.cancelled` marks it); every other row's result is
    bit-identical to a run without the cancel, as each row draws from its own generator.
    See the module docstring for the rules.
    """

    def __init__(
        self,
        model: Any,
        tokens: torch.Tensor,
        todo: torch.Tensor,
        cfg: SamplerConfig,
        generators: Sequence[Any],
        *,
        step_offset: torch.Tensor | None = None,
        eos_id: int | None = None,
    ) -> None:
        n, length = tokens.shape
        self.block = length if cfg.block_size <= 0 or cfg.block_size >= length else cfg.block_size
        _check_lengths(model, length, self.block)
        check_compile(cfg, tokens.device)
        self.model, self.cfg, self.generators, self.eos_id = model, cfg, generators, eos_id
        self.rule = rule_for(cfg.reveal)
        x = tokens.clone()
        x[todo] = model.config.mask_id
        offset = step_offset if step_offset is not None else torch.zeros(n, dtype=torch.long)
        self.state = _State(x, todo.clone(), offset, model.config.mask_id)
        self.cancelled = torch.zeros(n, dtype=torch.bool)
        net = precision.for_calls(model, cfg.precision, tokens.device)  # bf16: bf16 weights
        self.window = make_window(cfg.cache, net, n, length, self.block)
        cache = getattr(self.window, "cache", None)
        if cache is not None and precision.resolve(cfg.precision, tokens.device) == "bf16":
            cache.to_dtype(torch.bfloat16)  # what bf16 calls make: no cast per call
        self.result: FillResult | None = None
        self._events = self._run()

    def __iter__(self) -> FillEngine:
        return self

    def __next__(self) -> CallEvent:
        return next(self._events)

    def cancel(self, row: int) -> None:
        """Take `row` out of every later call; its result is marked cancelled."""
        with torch.inference_mode():  # the window's state was made inside the engine's calls
            self.cancelled[row] = True
            self.state.todo[row] = False
            self.window.drop(row)

    def run(self, on_event: Callable[[CallEvent], None] | None = None) -> FillResult:
        """Make every call (passing each event to `on_event`) and return the result."""
        for event in self:
            if on_event is not None:
                on_event(event)
        assert self.result is not None
        return self.result

    @torch.inference_mode()
    def _run(self) -> Iterator[CallEvent]:
        """The block loop: one event per network call, then `result` is set."""
        state, length, calls_made = self.state, self.state.x.shape[1], 0
        n = state.x.shape[0]
        stop = torch.full((n,), -1, dtype=torch.long)
        for lo in range(0, length, self.block):
            hi = min(length, lo + self.block)
            for commits in self._block(lo, hi):
                calls_made += 1
                yield _event(calls_made, lo, hi, commits)
            if self.eos_id is not None:
                _stop_at_eos(state, hi, self.eos_id, stop)
        self.result = FillResult(
            tokens=state.x,
            confidence=state.conf,
            confidence_nucleus=state.conf_n,
            step=state.step,
            nfe=state.nfe,
            stop=stop,
            committed=state.committed,
            cancelled=self.cancelled.clone(),
        )

    def _block(self, lo: int, hi: int) -> Iterator[tuple[torch.Tensor, ...]]:
        """The calls of block [lo, hi): yields each call's commits."""
        state, cfg, gens, n = self.state, self.cfg, self.generators, self.state.x.shape[0]
        timed = bool(getattr(self.model.config, "time_conditioning", False))
        calls = torch.zeros(n, dtype=torch.long)  # calls each sample spent on this block
        steps = torch.zeros(n, dtype=torch.long)  # reference-schedule steps it used
        level = state.todo[:, lo:hi].any(dim=1).double().cpu()  # t: 1, or 0 if nothing to do
        while bool(state.todo[:, lo:hi].any()):
            sigma = None
            if timed:  # the noise level of this call (schedule.call_level, docs/sampling.md)
                left = state.todo[:, lo:hi].sum(dim=1).cpu()
                level = self.rule.level(level, left, (calls, steps), hi - lo, gens)
                sigma = LogLinearSchedule().sigma(level.float()).to(state.x.device)
            plan = _plan(state.todo[:, lo:hi], (calls, steps), self.rule, gens)
            logits = self._call(lo, hi, sigma, plan)
            active, commits = _reveal(state, logits, (lo, hi), plan, cfg, self.rule, gens)
            calls += active.long()
            if timed and self.rule.settles:  # cached at the step that revealed (reference)
                level = self.rule.settle(level, steps, active, hi - lo)
                self.window.record(lo, hi, LogLinearSchedule().sigma(level.float()))
            yield commits

    def _call(self, lo: int, hi: int, sigma: torch.Tensor | None, plan: _Plan) -> torch.Tensor:
        """The network call of block [lo, hi) at the configured precision: logits (n, k, V)
        at the plan's read-out positions, or (n, hi - lo, V) where it has none."""
        with precision.network(self.cfg.precision, self.state.x.device):
            return self.window.logits(self.state.x, lo, hi, sigma, plan.readout)


def fill_masked(
    model: Any,
    tokens: torch.Tensor,
    todo: torch.Tensor,
    cfg: SamplerConfig,
    generators: Sequence[Any],
    *,
    step_offset: torch.Tensor | None = None,
    eos_id: int | None = None,
    progress: Callable[[CallEvent], None] | None = None,
) -> FillResult:
    """Regenerate the positions `todo` (n, T) bool of `tokens` (n, T) block by block.

    Runs a `FillEngine` to the end; `progress` receives each call's `CallEvent`.
    """
    engine = FillEngine(
        model, tokens, todo, cfg, generators, step_offset=step_offset, eos_id=eos_id
    )
    return engine.run(progress)


# --------------------------------------------------------------------------- stages
def draft_inputs(
    model: Any, prompts: Sequence[Sequence[int]], length: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """(tokens, todo), both (n, length), of a draft: each prompt, then [MASK] to be filled."""
    device = model_device(model)
    n = len(prompts)
    tokens = torch.full((n, length), model.config.mask_id, dtype=torch.long, device=device)
    todo = torch.ones(n, length, dtype=torch.bool, device=device)
    for i, prompt in enumerate(prompts):
        if not 1 <= len(prompt) <= length:
            raise UserError(f"prompt {i} has {len(prompt)} tokens; the length is {length}")
        tokens[i, : len(prompt)] = torch.tensor(list(prompt), dtype=torch.long)
        todo[i, : len(prompt)] = False
    return tokens, todo


def draft_engine(
    model: Any,
    prompts: Sequence[Sequence[int]],
    length: int,
    cfg: SamplerConfig,
    generators: Sequence[Any],
    *,
    eos_id: int | None = None,
) -> FillEngine:
    """Stage 1 in stepping form: the engine that drafts `length` tokens after each prompt."""
    tokens, todo = draft_inputs(model, prompts, length)
    return FillEngine(model, tokens, todo, cfg, generators, eos_id=eos_id)


def draft(
    model: Any,
    prompts: Sequence[Sequence[int]],
    length: int,
    cfg: SamplerConfig,
    generators: Sequence[Any],
    *,
    eos_id: int | None = None,
    progress: Callable[[CallEvent], None] | None = None,
) -> FillResult:
    """Stage 1: sample len(prompts) sequences of `length` tokens after fixed prompt prefixes.

    Each prompt is a token list starting with BOS (a bare [BOS] for unconditional samples);
    prompt tokens keep confidence 1.0 and step 0. `progress` receives each `CallEvent`.
    """
    return draft_engine(model, prompts, length, cfg, generators, eos_id=eos_id).run(progress)


def revise(
    model: Any,
    tokens: torch.Tensor,
    masked: torch.Tensor,
    cfg: SamplerConfig,
    generators: Sequence[Any],
    *,
    step_offset: torch.Tensor | None = None,
    progress: Callable[[CallEvent], None] | None = None,
) -> FillResult:
    """Stage k > 1: regenerate exactly the `masked` (n, T) bool positions of finished `tokens`.

    `revise_engine` is its stepping form; `progress` receives each `CallEvent`.
    """
    return revise_engine(model, tokens, masked, cfg, generators, step_offset=step_offset).run(
        progress
    )


def revise_engine(
    model: Any,
    tokens: torch.Tensor,
    masked: torch.Tensor,
    cfg: SamplerConfig,
    generators: Sequence[Any],
    *,
    step_offset: torch.Tensor | None = None,
) -> FillEngine:
    """Stage k > 1 in stepping form: the engine that regenerates the `masked` positions."""
    return FillEngine(model, tokens, masked, cfg, generators, step_offset=step_offset)
