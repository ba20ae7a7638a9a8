"""Shared test fixtures: offline hub settings, few threads, paths to ../shared when present,
and a fresh, empty working directory for every test module and every test.

Commands fall back on `./data`, `./runs/latest` and the records' relative model paths, so a
test run from the checkout would otherwise read whatever a user left there (the README's
pipeline writes `./data` and `./runs`). Tests that need files name them, or write them into
their own working directory.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

import torch

torch.set_num_threads(1)  # tiny test models: one thread is fastest, and robust on busy cores

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared"


@pytest.fixture(scope="module", autouse=True)
def _module_workdir(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """Module-scoped fixtures (trained models, drafts) run in an empty directory of their own."""
    yield from _inside(tmp_path_factory.mktemp("cwd-module"))


@pytest.fixture(autouse=True)
def _workdir(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """Every test runs in an empty directory of its own (not `tmp_path`, which it may list)."""
    yield from _inside(tmp_path_factory.mktemp("cwd"))


def _inside(path: Path) -> Iterator[Path]:
    old = Path.cwd()
    os.chdir(path)
    try:
        yield path
    finally:
        os.chdir(old)


def shared_path(*parts: str) -> Path:
    """Path inside ../shared, or skip the test with a clear reason when it is absent."""
    path = SHARED.joinpath(*parts)
    if not path.exists():
        pytest.skip(f"needs ../shared/{'/'.join(parts)} (present in the team checkout only)")
    return path


@pytest.fixture
def fixture_dir() -> Path:
    """The BD3-LM parity fixture directory."""
    return shared_path("fixtures", "bd3lm-tiny")


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory) -> Path:
    """A small synthetic data directory (L = 32) for the training tests."""
    from sbdcli.data import prepare_synthetic

    out = tmp_path_factory.mktemp("data") / "syn32"
    prepare_synthetic(out, seq_len=32, num_train=512, num_val=32, floor_samples=64, seed=1)
    return out
