"""Tests for evaluate/perplexity.py: held-out perplexity (B = 1 exact, Monte Carlo error,
the parity fixture) and the input checks."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from conftest import shared_path
from evaluate_helpers import stepwise_causal_logprobs, tiny_denoiser
from sbdcli.errors import UserError
from sbdcli.evaluate import check_ppl_inputs, heldout_perplexity


def test_heldout_ppl_block1_is_the_exact_nll():
    model = tiny_denoiser(seed=1)
    rows = torch.randint(0, 10, (5, 16), generator=torch.Generator().manual_seed(2))
    rows[:, 0] = 10
    res = heldout_perplexity(model, rows, 1, mc=3, batch_size=2)
    exact = -stepwise_causal_logprobs(model, rows).mean().item()
    assert res.exact and res.stderr == 0.0
    assert res.nelbo == pytest.approx(exact, rel=1e-5)
    d = res.to_dict()
    assert d["ppl"] == pytest.approx(math.exp(exact), rel=1e-5)
    assert d["bits_per_token"] == pytest.approx(exact / math.log(2), rel=1e-5)


def test_heldout_ppl_monte_carlo_has_a_standard_error():
    model = tiny_denoiser(seed=1)
    rows = torch.randint(0, 10, (4, 16), generator=torch.Generator().manual_seed(2))
    rows[:, 0] = 10
    res = heldout_perplexity(model, rows, 4, mc=3, batch_size=4, seed=5)
    assert len(res.reps) == 3 and res.stderr > 0
    assert res.stderr == pytest.approx(np.std(res.reps, ddof=1) / math.sqrt(3))
    again = heldout_perplexity(model, rows, 4, mc=3, batch_size=4, seed=5)
    assert again.reps == res.reps  # reproducible from the seed


def test_heldout_ppl_on_parity_fixture_equals_reference_nelbo(fixture_dir):
    from safetensors.torch import load_file

    from sbdcli.model.checkpoint import load_model

    inputs = load_file(str(fixture_dir / "inputs.safetensors"))
    outputs = load_file(str(shared_path("fixtures", "bd3lm-tiny", "outputs.safetensors")))
    model = load_model(str(fixture_dir))
    x0 = inputs["x0"].long()
    res = heldout_perplexity(model, x0, 4, t=inputs["t"], x_t=inputs["xt"].long(), batch_size=1)
    ref = outputs["train_token_nelbo"].double()  # (2, 32), 0 at position 0
    assert ref[:, 0].abs().max() == 0
    assert res.nelbo == pytest.approx(ref[:, 1:].mean().item(), rel=1e-4)


def test_check_ppl_inputs_refuses_rows_that_do_not_fit(tmp_path):
    model = tiny_denoiser(vocab=12, length=16)
    rows = torch.full((2, 16), 10)
    check_ppl_inputs(model, tmp_path, tmp_path, rows, 4)
    with pytest.raises(UserError, match="`block_size` 3 must divide the sequence length 16"):
        check_ppl_inputs(model, tmp_path, tmp_path, rows, 3)
    with pytest.raises(UserError, match="different tokenizer"):
        check_ppl_inputs(model, tmp_path, tmp_path, torch.full((2, 16), 11), 4)  # [MASK]
    with pytest.raises(UserError, match="exceed the model's 16"):
        check_ppl_inputs(model, tmp_path, tmp_path, torch.full((2, 32), 10), 4)
