"""Tests for reveal.py and the policy values of config.py: spellings, the levels of each
policy (BD3-LM's `_semi_ar_sampler`), the reference schedule's cached level, and the 0.2
fields that name each policy and cache."""

from __future__ import annotations

import pytest
import torch

from sbdcli import config as c
from sbdcli.diffusion.reveal import rule_for
from sbdcli.errors import UserError

SPELLINGS = {
    "steps": c.FixedSteps(),
    "steps:3": c.FixedSteps(3),
    "steps:confident": c.FixedSteps(confident=True),
    "steps:2:confident": c.FixedSteps(2, True),
    "reference": c.ReferenceSchedule(),
    "reference:8": c.ReferenceSchedule(8),
    "threshold:0.9": c.Threshold(0.9),
    "first-hitting": c.FirstHitting(),
}


@pytest.mark.parametrize("text", list(SPELLINGS))
def test_every_spelling_parses_to_its_policy_and_back(text):
    policy = c.parse_reveal(text)
    assert policy == SPELLINGS[text] and type(policy) is type(SPELLINGS[text])
    assert policy.spelling() == text


@pytest.mark.parametrize(
    ("text", "cache"),
    [
        ("none", c.NoCache()),
        ("exact", c.ExactCache()),
        ("approx", c.ApproxCache(4)),
        ("approx:2", c.ApproxCache(2)),
        ("captured", c.CapturedCache()),
    ],
)
def test_every_cache_spelling_parses(text, cache):
    assert c.parse_cache(text) == cache
    assert c.parse_cache(cache.spelling()) == cache


@pytest.mark.parametrize(
    ("text", "match"),
    [
        ("step", "unknown `reveal`"),
        ("steps:0", "integer >= 1"),
        ("steps:x", "integer >= 1"),
        ("steps:2:3", "steps\\[:S\\]"),
        ("threshold", "threshold:TAU"),
        ("threshold:1.5", "must lie in \\(0, 1\\]"),
        ("threshold:nan", "must lie in \\(0, 1\\]"),
        ("first-hitting:4", "write first-hitting"),
    ],
)
def test_bad_spellings_are_one_user_error(text, match):
    with pytest.raises(UserError, match=match):
        c.parse_reveal(text)


@pytest.mark.parametrize("text", ["approx:0", "exact:2", "fast", "approx:1:2"])
def test_bad_cache_spellings_are_one_user_error(text):
    with pytest.raises(UserError, match="`cache`"):
        c.parse_cache(text)


LEGACY = [
    ({}, c.FixedSteps(), c.ExactCache()),
    ({"steps_per_block": 2, "unmask": "confident"}, c.FixedSteps(2, True), c.ExactCache()),
    ({"schedule": "reference", "steps_per_block": 3}, c.ReferenceSchedule(3), c.ExactCache()),
    ({"threshold": 0.5}, c.Threshold(0.5), c.ExactCache()),
    ({"first_hitting": True}, c.FirstHitting(), c.ExactCache()),
    ({"kv_cache": False}, c.FixedSteps(), c.NoCache()),
    ({"cache": "approx"}, c.FixedSteps(), c.ApproxCache(4)),
    ({"cache": "approx", "refresh": 2}, c.FixedSteps(), c.ApproxCache(2)),
    ({"compile": True}, c.FixedSteps(), c.CapturedCache()),
]


@pytest.mark.parametrize(("fields", "reveal", "cache"), LEGACY)
def test_the_fields_of_0_2_name_one_policy_and_one_cache(fields, reveal, cache):
    cfg = c.legacy_sampler(4, **fields)
    assert (cfg.reveal, cfg.cache) == (reveal, cache)
    old = {
        "steps_per_block": None,
        "first_hitting": False,
        "threshold": None,
        "schedule": "fixed",
        "unmask": "random",
        "kv_cache": True,
        "cache": "exact",
        "refresh": 4 if fields.get("cache") == "approx" else None,
        "compile": False,
    }
    old.update(
        {k: v for k, v in fields.items() if k != "refresh"}
        | {k: v for k, v in fields.items() if k == "refresh"}
    )
    params = cfg.params()
    assert {k: params[k] for k in old} == old  # the stage entry 0.2 wrote


@pytest.mark.parametrize(
    "fields",
    [
        {"threshold": 0.5, "first_hitting": True},
        {"threshold": 0.5, "steps_per_block": 2},
        {"schedule": "reference", "first_hitting": True},
        {"schedule": "reference", "threshold": 0.5},
        {"kv_cache": False, "cache": "approx"},
        {"compile": True, "kv_cache": False},
        {"compile": True, "cache": "approx"},
    ],
)
def test_two_policies_or_caches_at_once_are_refused(fields):
    with pytest.raises(UserError, match="exclude each other"):
        c.legacy_sampler(4, **fields)


def test_stage_keys_keep_their_order():
    keys = list(c.SamplerConfig(4).params())
    assert keys == [
        "steps_per_block", "first_hitting", "threshold", "schedule", "top_p", "temperature",
        "dtype", "unmask", "kv_cache", "cache", "refresh", "compile",
    ]  # fmt: skip


def test_call_levels_follow_the_reference_sampler():
    """bd3lms `_semi_ar_sampler` (commit 1c3e8f43d88dfbcee5ff2aa6932a9e74b31ae1d7): first
    hitting t <- t u^(1/r); S fixed steps t = linspace(1, 0, S)[i]; threshold: r / block."""
    remaining = torch.tensor([4, 0, 2])
    clock = (torch.tensor([1, 0, 3]), torch.tensor([2, 0, 7]))
    t0 = torch.tensor([0.9, 0.4, 1.0], dtype=torch.float64)
    gens = [torch.Generator().manual_seed(i) for i in range(3)]
    fh = rule_for(c.FirstHitting()).level(t0, remaining, clock, 4, gens)
    u0 = float(torch.rand((), generator=torch.Generator().manual_seed(0), dtype=torch.float64))
    u2 = float(torch.rand((), generator=torch.Generator().manual_seed(2), dtype=torch.float64))
    assert fh.tolist() == pytest.approx([0.9 * u0 ** (1 / 4), 0.4, u2 ** (1 / 2)])
    grid = torch.linspace(1.0, 0.0, 5).tolist()
    fixed = rule_for(c.FixedSteps(5)).level(t0, remaining, clock, 4, [])
    assert fixed.tolist() == pytest.approx([grid[1], 0.4, grid[3]])  # calls 1 and 3
    ref = rule_for(c.ReferenceSchedule(5)).level(t0, remaining, clock, 4, [])
    assert ref.tolist() == pytest.approx([grid[2], 0.4, 0.0])  # steps 2 and 7 (past the end)
    tau = rule_for(c.Threshold(0.5)).level(t0, remaining, clock, 4, [])
    assert tau.tolist() == pytest.approx([1.0, 0.4, 0.5])


def test_reference_schedule_caches_a_block_at_its_revealing_step():
    t = torch.tensor([1.0, 0.5, 0.25], dtype=torch.float64)
    steps, active = torch.tensor([3, 1, 9]), torch.tensor([True, False, True])
    grid = torch.linspace(1.0, 0.0, 5).tolist()
    ref = rule_for(c.ReferenceSchedule(5))
    assert ref.settles and ref.settle(t, steps, active, 4).tolist() == pytest.approx(
        [grid[2], 0.5, 0.0]
    )
    fixed = rule_for(c.FixedSteps(5))
    assert not fixed.settles and torch.equal(fixed.settle(t, steps, active, 4), t)


def test_counts_per_call_of_each_policy():
    remaining = torch.tensor([5, 0, 2])
    clock = (torch.tensor([1, 0, 3]), torch.zeros(3, dtype=torch.long))
    assert rule_for(c.FixedSteps(4)).count(remaining, clock, 8, []).tolist() == [2, 0, 2]
    assert rule_for(c.FixedSteps()).count(remaining, clock, 8, []).tolist() == [1, 0, 1]
    assert rule_for(c.FirstHitting()).count(remaining, clock, 8, []).tolist() == [1, 0, 1]
    assert rule_for(c.Threshold(0.2)).count(remaining, clock, 8, []).tolist() == [5, 0, 2]
