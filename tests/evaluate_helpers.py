"""Shared helpers of the evaluation tests: records, a tiny GPT-2, a tiny denoiser, runs.

Used by tests/test_metrics.py, test_grouping.py, test_judges.py, test_hf_judge.py,
test_perplexity.py, test_genppl.py and test_cli_evaluate.py. Not a test module itself.
"""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import torch

EOT = "<|endoftext|>"


def make_record(tokens, prompt_len=1, stages=None, model="nowhere@000000000000", **extra):
    rec = {
        "id": extra.pop("id", "r"),
        "tokens": list(tokens),
        "confidence": [1.0] * len(tokens),
        "masked": [],
        "prompt_len": prompt_len,
        "nfe": extra.pop("nfe", 8),
        "stages": stages if stages is not None else [{"name": "draft", "block_size": 4}],
        "text": extra.pop("text", ""),
        "model": model,
    }
    rec.update(extra)
    return rec


def build_tiny_gpt2(out: Path, n_positions: int = 32) -> Path:
    """A random 2-layer GPT-2 with a byte-level BPE trained on a few strings, saved locally."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import GPT2Config, GPT2LMHeadModel, PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=300,
        special_tokens=[EOT],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(["the cat sat on the mat", "a dog ran in the park"] * 5, trainer)
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token=EOT, eos_token=EOT)
    torch.manual_seed(0)
    cfg = GPT2Config(
        vocab_size=len(fast),
        n_positions=n_positions,
        n_embd=32,
        n_layer=2,
        n_head=2,
        bos_token_id=fast.eos_token_id,
        eos_token_id=fast.eos_token_id,
    )
    GPT2LMHeadModel(cfg).save_pretrained(out)
    fast.save_pretrained(out)
    return out


def make_synth_run(run: Path) -> Path:
    """A fake run directory whose data/ is a tiny prepared synthetic language."""
    from sbdcli.data import prepare_synthetic

    prepare_synthetic(run / "data", seq_len=16, num_train=8, num_val=8, floor_samples=256)
    return run


def tiny_denoiser(vocab=12, length=16, seed=0):
    from sbdcli.config import ModelConfig
    from sbdcli.model import Denoiser

    cfg = ModelConfig(vocab_size=vocab, mask_id=vocab - 1, seq_len=length, n_layers=2,
                      d_model=32, n_heads=2, cond_dim=16, dropout=0.0, bos_id=vocab - 2,
                      eos_id=vocab - 2)  # fmt: skip
    torch.manual_seed(seed)
    model = Denoiser(cfg)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.2 * torch.randn_like(p))
    return model.eval()


def stepwise_causal_logprobs(model, x0: torch.Tensor) -> torch.Tensor:
    """log p(x_i | x_<i) one position at a time: [x_<i, MASK] in a causal pass (B, L-1)."""
    mask = model.config.mask_id
    out = []
    with torch.no_grad():
        for i in range(1, x0.shape[1]):
            inp = torch.cat([x0[:, :i], torch.full_like(x0[:, :1], mask)], dim=1)
            logits = model.sample_logits(inp, 1)[:, -1].double()  # (B, V)
            logits[:, mask] = -math.inf
            out.append(logits.log_softmax(-1).gather(-1, x0[:, i : i + 1])[:, 0])
    return torch.stack(out, dim=1)


def save_sbd_run(run: Path, model, data_dir: Path, block: int) -> Path:
    """A minimal sbd run directory: model.safetensors + config.json + a data/ copy."""
    from sbdcli.model.checkpoint import save_sbd_model

    run.mkdir(parents=True)
    save_sbd_model(model, run / "model.safetensors", {})
    cfg = {"model": model.config.to_dict(), "data": {"dir": str(data_dir)},
           "train": {"block_small": block, "block_large": block, "mix_lambda": 0.0}}  # fmt: skip
    (run / "config.json").write_text(json.dumps(cfg))
    shutil.copytree(data_dir, run / "data", ignore=shutil.ignore_patterns("*.safetensors"))
    return run
