"""Tests for diffusion/calls.py: one window class per cache kind, all answering the same
`logits(x, lo, hi)`; the exact cache gives the recomputed logits, block after block."""

from __future__ import annotations

import pytest
import torch

from fake_model import tiny_denoiser
from sbdcli.config import ApproxCache, CapturedCache, ExactCache, NoCache
from sbdcli.diffusion import calls


@pytest.mark.parametrize(
    ("cache", "block", "kind"),
    [
        (NoCache(), 4, calls.RecomputeWindow),
        (ExactCache(), 4, calls.ExactWindow),
        (ExactCache(), 32, calls.RecomputeWindow),  # one block: nothing earlier to cache
        (ApproxCache(3), 4, calls.ApproxWindow),
        (ApproxCache(3), 32, calls.ApproxWindow),
    ],
)
def test_each_cache_kind_has_its_window(cache, block, kind):
    window = calls.make_window(cache, tiny_denoiser(), 2, 32, block)
    assert type(window) is kind
    assert getattr(window, "refresh", 3) == 3


def test_captured_cache_uses_the_captured_calls(monkeypatch):
    model = tiny_denoiser()
    monkeypatch.setattr(calls, "_captured", lambda m: ("step", "forward"))
    cached = calls.make_window(CapturedCache(), model, 2, 32, 4)
    single = calls.make_window(CapturedCache(), model, 2, 32, 32)
    assert type(cached) is calls.CapturedWindow and cached.step == "step"
    assert type(single) is calls.RecomputeWindow and single.forward == "forward"


def test_exact_and_recomputed_windows_give_the_same_logits():
    model = tiny_denoiser()
    gen = torch.Generator().manual_seed(0)
    x = torch.randint(0, 30, (2, 32), generator=gen)
    exact = calls.make_window(ExactCache(), model, 2, 32, 8)
    plain = calls.make_window(NoCache(), model, 2, 32, 8)
    with torch.inference_mode():
        for lo in range(0, 32, 8):
            a, b = exact.logits(x, lo, lo + 8), plain.logits(x, lo, lo + 8)
            assert a.shape == (2, 8, model.config.vocab_size)
            torch.testing.assert_close(a, b, rtol=0, atol=1e-5)
