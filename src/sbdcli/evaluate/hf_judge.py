"""Gen PPL judge backed by a local Hugging Face causal LM (GPT-2 Large for OpenWebText work).

Protocol (docs/evaluation.md):
- Text: with the records' codec (their run's tokenizer), each sample's model-vocabulary
  tokens after BOS are split at BOS/EOS ids, each piece decoded and retokenised with the
  judge's tokenizer (no special tokens added) and the pieces joined with the judge's EOS id;
  the prompt (positions < prompt_len) is retokenised separately and is context only.
  Without a codec, the record's `text` is retokenised as a whole (all of it scored).
- The judge's BOS (its `bos_token_id`, else its EOS; GPT-2: `<|endoftext|>`) is prepended,
  never scored, so the first generated token is scored too.
- EOS: `skip` (default, BD3-LM's rule) keeps every judge EOS in the input as context and
  never scores it; `cut` ends the sample before its first generated EOS.
- Windows (Hugging Face perplexity guide): `context` tokens (the model's maximum, 1024 for
  GPT-2) and stride `stride` (512) beyond it; each token is scored once, in the first
  window that contains it after the previous window's end, with >= context - stride tokens
  of left context.
- Batched: windows sorted by length (longest first), right-padded with an attention mask;
  the LM head runs only at scored positions (checked equal to the full logits at load).
  fp32, eval mode, inference mode.

It implements the `Judge` protocol of judges.py; it is not the place for the oracle or
sbd block-1 judges (judges.py) and it never prints. transformers is imported inside the
functions that need it: a heavy, optional dependency (the `eval` extra).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from sbdcli.config import GenPplOptions
from sbdcli.diffusion.precision import network
from sbdcli.diffusion.precision import resolve as resolve_precision
from sbdcli.errors import UserError
from sbdcli.evaluate.metrics import Advance, Scores, VocabInfo

HEAD_CHUNK = 2048
"""Positions per LM-head call (bounds the (M, V) logits buffer)."""


def windows(n: int, context: int, stride: int) -> list[tuple[int, int, int]]:
    """Sliding windows over n tokens: (begin, end, first_target), the HF perplexity guide.

    Window [begin, end) is the model input; targets are positions [first_target, end),
    each predicted from the logits at position p - 1 inside the window.
    """
    if context < 2 or not 1 <= stride < context:
        raise UserError(
            f"need `context` >= 2 and 1 <= `stride` < `context` (got {context}, {stride})"
        )
    out, prev_end = [], 0
    for begin in range(0, max(n, 0), stride):
        end = min(begin + context, n)
        out.append((begin, end, max(prev_end, begin + 1)))
        prev_end = end
        if end == n:
            break
    return out


def _short(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0][:200] if text else type(exc).__name__


@contextlib.contextmanager
def _quiet_transformers() -> Iterator[None]:
    """No transformers progress bars or info logs while loading (restored afterwards)."""
    from transformers.utils import logging as hf_logging  # heavy optional dependency

    bars, level = hf_logging.is_progress_bar_enabled(), hf_logging.get_verbosity()
    hf_logging.disable_progress_bar()
    hf_logging.set_verbosity_error()
    try:
        yield
    finally:
        hf_logging.set_verbosity(level)
        if bars:
            hf_logging.enable_progress_bar()


def load_causal_lm(path: str | Path, device: str = "cpu") -> tuple[Any, Any]:
    """(model, tokenizer) from a local transformers directory, fp32, eval; else UserError."""
    p = Path(path)
    if not (p / "config.json").is_file():
        raise UserError(f"evaluator {p}: no config.json, not a Hugging Face model directory")
    # heavy optional dependency (the `eval` extra): imported only when a judge is loaded
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer
    from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING_NAMES

    try:
        cfg = AutoConfig.from_pretrained(p, local_files_only=True)
    except Exception as exc:
        raise UserError(f"evaluator {p}: unreadable config.json ({_short(exc)})") from None
    if cfg.model_type not in MODEL_FOR_CAUSAL_LM_MAPPING_NAMES:
        raise UserError(
            f"evaluator {p}: model type '{cfg.model_type}' is not a causal language model"
        )
    with _quiet_transformers():
        try:
            model = AutoModelForCausalLM.from_pretrained(
                p, dtype=torch.float32, local_files_only=True
            )
        except Exception as exc:
            raise UserError(f"evaluator {p}: cannot load the causal LM ({_short(exc)})") from None
    try:
        tokenizer = AutoTokenizer.from_pretrained(p, local_files_only=True)
    except Exception as exc:
        raise UserError(f"evaluator {p}: no usable tokenizer ({_short(exc)})") from None
    return model.to(device).eval(), tokenizer


def model_context(model: Any, tokenizer: Any) -> int:
    """The judge's maximum sequence length (GPT-2: n_positions = 1024)."""
    cfg = model.config
    for name in ("max_position_embeddings", "n_positions", "n_ctx"):
        value = getattr(cfg, name, None)
        if isinstance(value, int) and value > 1:
            return value
    value = getattr(tokenizer, "model_max_length", None)
    if isinstance(value, int) and 1 < value < 1_000_000:
        return value
    raise UserError("cannot tell the evaluator's context length; pass `context`")


class HFJudge:
    """Score samples with a transformers causal LM on retokenised text (module docstring).

    A `judges.Judge`: records are checked per group in `score` (against the codec's vocabulary).
    """

    kind = "transformers"

    def __init__(
        self,
        path: str | Path,
        *,
        device: str = "cpu",
        batch_size: int = 16,
        context: int | None = None,
        stride: int = 512,
        codec: Any = None,
        special_ids: Sequence[int] = (),
        eos: str = "skip",
        precision: str = "fp32",
    ) -> None:
        self.path, self.device, self.batch_size = Path(path), device, max(1, batch_size)
        self.precision = resolve_precision(precision, device)
        self.model, self.tokenizer = load_causal_lm(path, device)
        self.context = context or model_context(self.model, self.tokenizer)
        self.stride = stride if stride < self.context else max(1, self.context // 2)
        self.codec, self.special, self.eos = codec, set(special_ids), eos
        self.eos_id = self.tokenizer.eos_token_id
        bos = self.tokenizer.bos_token_id
        self.bos_id = bos if bos is not None else self.eos_id
        self.judge_special = {i for i in (self.eos_id, self.bos_id) if i is not None}
        self.vocab = int(self.model.get_input_embeddings().weight.shape[0])
        self.base, self.head = self._split_head()
        self.notes: list[str] = []

    def describe(self) -> dict[str, Any]:
        return {
            "kind": "transformers",
            "path": str(self.path),
            "model_type": self.model.config.model_type,
            "context": self.context,
            "stride": self.stride,
            "dtype": "float32",
            **({"precision": self.precision} if self.precision != "fp32" else {}),
            "bos_prepended": self.bos_id,
            "text_from": "tokens decoded with the run's codec" if self.codec else "record text",
        }

    def check(self, records: Sequence[dict[str, Any]], info: VocabInfo) -> None:
        """Nothing up front: `score` checks each group against the codec's vocabulary."""

    def extras(self, records: Sequence[dict[str, Any]], opts: GenPplOptions) -> dict[str, Any]:
        return {}

    # ------------------------------------------------------------------ text → judge ids
    def _encode(self, text: str) -> list[int]:
        return list(self.tokenizer(text, add_special_tokens=False)["input_ids"])

    def _retok(self, tokens: Sequence[int]) -> list[int]:
        """Decode model-vocab tokens piecewise (split at BOS/EOS) and retokenise."""
        out: list[int] = []
        piece: list[int] = []
        for t in [*tokens, None]:
            if t is None or t in self.special:
                if piece:
                    out += self._encode(self.codec.decode(piece))
                piece = []
                if t is not None and self.eos_id is not None:
                    out.append(self.eos_id)
            else:
                piece.append(t)
        return out

    def judge_sequence(self, rec: dict[str, Any]) -> tuple[list[int], list[bool]]:
        """(judge ids, scored flags) for one record, BOS prepended; see the module docstring."""
        if self.codec is None:
            ids = self._encode(rec["text"])
            if not ids or ids[0] != self.bos_id:
                ids = [self.bos_id, *ids]
            gen_from = 1
        else:
            tokens, p = rec["tokens"], max(rec["prompt_len"], 1)
            gen = list(tokens[p:])
            if self.eos == "cut":
                stop = next((j for j, t in enumerate(gen) if t in self.special), len(gen))
                gen = gen[:stop]
            prompt_ids = self._retok(tokens[1:p])
            ids = [self.bos_id, *prompt_ids, *self._retok(gen)]
            gen_from = 1 + len(prompt_ids)
        scored = [j >= gen_from and t not in self.judge_special for j, t in enumerate(ids)]
        if self.eos == "cut":
            hit = next((j for j in range(gen_from, len(ids)) if ids[j] in self.judge_special), None)
            if hit is not None:
                scored[hit:] = [False] * (len(ids) - hit)
        return ids, scored

    # ------------------------------------------------------------------ scoring
    def score(self, records: Sequence[dict[str, Any]], progress: Advance = None) -> Scores:
        if self.codec is not None:
            self._check_vocab(records)
        pairs = [self.judge_sequence(r) for r in records]
        nll, ntok = self.score_ids([p[0] for p in pairs], [p[1] for p in pairs], progress)
        return Scores(nll, ntok, list(self.notes))

    def _check_vocab(self, records: Sequence[dict[str, Any]]) -> None:
        size = getattr(self.codec, "vocab_size", None)
        for i, rec in enumerate(records):
            bad = [t for t in rec["tokens"] if size is not None and not 0 <= t < size]
            if bad:
                raise UserError(
                    f"record {i} (id {rec['id']!r}): token id {bad[0]} is outside the "
                    f"vocabulary of the records' tokenizer (size {size}): different tokenizer"
                )

    def score_ids(
        self,
        seqs: Sequence[Sequence[int]],
        scored: Sequence[Sequence[bool]],
        progress: Advance = None,
    ) -> tuple[np.ndarray, np.ndarray]:
        """Summed NLL (n,) float64 and scored-token counts (n,) of judge-id sequences.

        Results stay on the device until the end (no synchronisation per batch), so the
        host builds batch k + 1 while the device computes batch k.
        """
        arrays = [np.asarray(s, dtype=np.int64) for s in seqs]
        ntok = np.array([int(np.sum(s)) for s in scored], dtype=np.int64)
        items = self._plan(arrays, scored)
        total = torch.zeros(len(seqs), dtype=torch.float64, device=self.device)
        left = np.bincount([it[1] for it in items], minlength=len(seqs))
        if progress and (left == 0).any():
            progress(int((left == 0).sum()))
        for start in range(0, len(items), self.batch_size):
            chunk = items[start : start + self.batch_size]
            padded = any(it[0] < chunk[0][0] for it in chunk)
            ids, attn, rows, src, tgt, owners = (
                torch.from_numpy(a).to(self.device, non_blocking=True)
                for a in _batch_arrays(arrays, chunk)
            )
            mask = attn if padded else None  # no padding: plain causal attention (faster)
            total.index_add_(0, owners, self._nll(ids, mask, rows, src, tgt).double())
            for it in chunk:
                left[it[1]] -= 1
                if progress and left[it[1]] == 0:
                    progress(1)
        return total.cpu().numpy(), ntok

    def _plan(
        self, arrays: Sequence[np.ndarray], scored: Sequence[Sequence[bool]]
    ) -> list[tuple[int, int, int, int, np.ndarray]]:
        """Windows with at least one scored target, longest first: (len, seq, b, e, targets)."""
        items = []
        for i, ids in enumerate(arrays):
            if ids.size and (ids.min() < 0 or ids.max() >= self.vocab):
                bad = int(ids[(ids < 0) | (ids >= self.vocab)][0])
                raise UserError(f"sample {i}: judge token id {bad} outside its vocabulary")
            flags = np.asarray(scored[i], dtype=bool)
            for b, e, f in windows(len(ids), self.context, self.stride):
                targets = np.arange(f, e)[flags[f:e]]
                if targets.size:
                    items.append((e - b, i, b, e, targets))
        items.sort(key=lambda it: (-it[0], it[1]))
        return items

    @torch.inference_mode()
    def _nll(
        self,
        ids: torch.Tensor,
        attn: torch.Tensor | None,
        rows: torch.Tensor,
        src: torch.Tensor,
        tgt: torch.Tensor,
    ) -> torch.Tensor:
        """-log p(tgt_m | window prefix) for M selected positions: float32 (M,) on device.

        ids (B, T) right-padded with attention mask attn (B, T), or None when unpadded.
        The network runs at the judge's precision; the cross entropy is float32.
        """
        with network(self.precision, ids.device):
            return self._nll_at_precision(ids, attn, rows, src, tgt)

    def _nll_at_precision(
        self,
        ids: torch.Tensor,
        attn: torch.Tensor | None,
        rows: torch.Tensor,
        src: torch.Tensor,
        tgt: torch.Tensor,
    ) -> torch.Tensor:
        if self.head is not None:
            h = self.base(input_ids=ids, attention_mask=attn, use_cache=False).last_hidden_state
            sel = h[rows, src]  # (M, d)
            head = self.head
        else:
            logits = self.model(input_ids=ids, attention_mask=attn, use_cache=False).logits
            sel = logits[rows, src]  # (M, V)
            head = torch.nn.Identity()
        step = HEAD_CHUNK * (4 if ids.is_cuda else 1)
        out = []
        for s in range(0, sel.shape[0], step):
            lg = head(sel[s : s + step]).float()  # (m, V)
            with torch.autocast(ids.device.type, enabled=False):
                out.append(F.cross_entropy(lg, tgt[s : s + step], reduction="none"))
        return torch.cat(out)

    @torch.inference_mode()
    def _split_head(self) -> tuple[Any, Any]:
        """(body, LM head) when head(body(x)) equals the model's logits, else (None, None)."""
        body = getattr(self.model, "base_model", None)
        head = self.model.get_output_embeddings()
        if body is None or head is None or body is self.model:
            return None, None
        x = torch.arange(1, 9, device=self.device)[None] % self.vocab
        try:
            full = self.model(input_ids=x, use_cache=False).logits
            split = head(body(input_ids=x, use_cache=False).last_hidden_state)
        except Exception:
            return None, None
        ok = full.shape == split.shape and torch.allclose(full, split, atol=1e-4, rtol=1e-4)
        return (body, head) if ok else (None, None)


def _batch_arrays(
    arrays: Sequence[np.ndarray], chunk: list[tuple[int, int, int, int, np.ndarray]]
) -> tuple[np.ndarray, ...]:
    """Right-padded ids (B, T), attention mask (B, T), and per target: row, source position
    (the logits that predict it), target id and owning sample."""
    width = max(it[0] for it in chunk)
    ids = np.zeros((len(chunk), width), dtype=np.int64)
    attn = np.zeros((len(chunk), width), dtype=np.int64)
    for r, (n, i, b, e, _) in enumerate(chunk):
        ids[r, :n] = arrays[i][b:e]
        attn[r, :n] = 1
    rows = np.concatenate([np.full(it[4].size, r) for r, it in enumerate(chunk)])
    src = np.concatenate([it[4] - it[2] - 1 for it in chunk])
    tgt = np.concatenate([arrays[it[1]][it[4]] for it in chunk])
    owners = np.concatenate([np.full(it[4].size, it[1]) for it in chunk])
    return ids, attn, rows, src, tgt, owners
