"""Tests for the pipeline package itself: what `sbdcli.pipeline` offers its callers.

The modules have their own tests: test_prompts.py, test_stages.py, test_plans.py.
"""

from __future__ import annotations

import importlib

from sbdcli import pipeline as pl

CALLER_NAMES = {  # names the CLI, demo, experiments/, bench/ and tests use as `pl.X`
    "ModelCache", "ModelRef", "Prompt", "RemaskConfig", "StagePlan", "batched",
    "check_records", "default_model_path", "draft_batch", "draft_prompts", "draft_set",
    "finished", "generate_batch", "load_model_ref", "parse_block", "parse_stages",
    "read_prompts", "remask_batch", "reuse_or_write", "revise_batch", "revise_set",
}  # fmt: skip


def test_package_exports_every_public_name():
    assert CALLER_NAMES - set(pl.__all__) == set()
    assert sorted(pl.__all__) == pl.__all__
    for name in pl.__all__:
        obj = getattr(pl, name)
        module = getattr(obj, "__module__", "")
        if module.startswith("sbdcli.pipeline."):  # defined in a submodule, same object here
            assert getattr(importlib.import_module(module), name) is obj
