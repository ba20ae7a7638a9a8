"""A request's `sbd` object names a reveal policy and a cache as `sbd generate` does: the
`reveal`/`cache` spellings, or the 0.2 names (threshold, steps_per_block, kv_cache, refresh,
...) that map to the same configurations; conflicting settings are a 400 naming the field."""

from __future__ import annotations

from pathlib import Path

import pytest

pytest.importorskip("fastapi", reason="the serve extra (pip install 'sbdcli[serve]')")

from sbdcli import pipeline as pl
from sbdcli.config import ApproxCache, ExactCache, FixedSteps, NoCache, Threshold
from sbdcli.serve.jobs import Job, Limits, make_job
from sbdcli.serve.schemas import ApiError, CompletionRequest
from serve_helpers import make_run


@pytest.fixture(scope="module")
def ref(tmp_path_factory) -> pl.ModelRef:
    root: Path = tmp_path_factory.mktemp("serve-jobs")
    return pl.load_model_ref(str(make_run(root)))


def job(ref: pl.ModelRef, sbd: dict) -> Job:
    req = CompletionRequest.model_validate({"prompt": "w1", "seed": 3, "sbd": sbd})
    return make_job(req, ref, Limits(), "cmpl-x")


SPELLINGS = [
    ({"threshold": 0.3}, {"reveal": "threshold:0.3"}),
    ({"steps_per_block": 2, "unmask": "confident"}, {"reveal": "steps:2:confident"}),
    ({"schedule": "reference"}, {"reveal": "reference"}),
    ({"first_hitting": True}, {"reveal": "first-hitting"}),
    ({"kv_cache": False}, {"cache": "none"}),
    ({"cache": "approx", "refresh": 2}, {"cache": "approx:2"}),
]


@pytest.mark.parametrize(("old", "new"), SPELLINGS, ids=[str(o) for o, _ in SPELLINGS])
def test_old_names_and_new_spellings_make_the_same_job(ref, old, new):
    a, b = job(ref, old), job(ref, new)
    assert a.key == b.key


def test_the_draft_runs_exact_where_revise_runs_approx(ref):
    j = job(ref, {"reveal": "threshold:0.5", "cache": "approx:3", "revise_steps_per_block": None})
    assert j.draft_cfg.cache == ExactCache() and j.draft_cfg.reveal == Threshold(0.5)
    assert [s.revise.cache for s in j.plan] == [ApproxCache(3)]
    steps = job(ref, {"reveal": "steps:2", "revise_steps_per_block": 5, "kv_cache": False})
    assert steps.draft_cfg.reveal == FixedSteps(2) and steps.draft_cfg.cache == NoCache()
    assert [s.revise.reveal for s in steps.plan] == [FixedSteps(5)]


@pytest.mark.parametrize(
    ("sbd", "param"),
    [
        ({"reveal": "threshold:0.5", "threshold": 0.5}, "sbd.reveal"),
        ({"reveal": "stepz"}, "sbd.reveal"),
        ({"cache": "none", "refresh": 2}, "sbd.cache"),
        ({"cache": "captured"}, "sbd.cache"),  # CPU model: no CUDA graphs
        ({"threshold": 0.5, "revise_steps_per_block": 2}, "sbd.threshold"),
        ({"reveal": "threshold:0.5", "revise_steps_per_block": 2}, "sbd.reveal"),
    ],
)
def test_conflicting_settings_are_a_400_naming_the_field(ref, sbd, param):
    with pytest.raises(ApiError) as info:
        job(ref, sbd)
    assert info.value.status == 400 and info.value.param == param
    assert "`" not in info.value.message
