"""Tests for `sbd export`: writes a loadable BD3-LM directory; bad inputs exit 2 in one line."""

from __future__ import annotations

import json

import pytest
import torch

from sbdcli.cli import main
from sbdcli.config import ModelConfig
from sbdcli.model import Denoiser
from sbdcli.model.checkpoint import load_model, save_sbd_model


def run_main(argv: list[str]) -> int:
    with pytest.raises(SystemExit) as info:
        main(argv)
    return int(info.value.code or 0)


@pytest.fixture
def run_dir(tmp_path):
    config = ModelConfig(vocab_size=32, mask_id=31, seq_len=16, n_layers=1, d_model=16,
                         n_heads=2, cond_dim=8)  # fmt: skip
    model = Denoiser(config)
    with torch.no_grad():
        model.output_layer.linear.weight.normal_(generator=torch.Generator().manual_seed(0))
    run = tmp_path / "run"
    run.mkdir()
    save_sbd_model(model, run / "model.safetensors", {"block_sizes": [2, 16]})
    return run


def test_export_writes_bd3lm_layout(run_dir, tmp_path, capsys):
    out = tmp_path / "hf"
    assert run_main(["export", "--format", "bd3lm", str(run_dir), str(out)]) == 0
    assert "wrote" in capsys.readouterr().err
    assert json.loads((out / "config.json").read_text())["block_size"] == 2
    original, exported = load_model(run_dir), load_model(out)
    for key, value in original.state_dict().items():
        assert torch.equal(exported.state_dict()[key], value)


def test_export_block_size_option(run_dir, tmp_path):
    out = tmp_path / "hf"
    assert run_main(["export", str(run_dir), str(out), "--block-size", "8"]) == 0
    assert json.loads((out / "config.json").read_text())["block_size"] == 8


@pytest.mark.parametrize(
    "argv",
    [
        ["export", "{tmp}/missing", "{tmp}/out"],
        ["export", "{tmp}", "{tmp}/out"],
        ["export", "--format", "gguf", "{run}", "{tmp}/out"],
        ["export", "{run}", "{run}"],
    ],
)
def test_export_errors_exit_2_in_one_line(argv, run_dir, tmp_path, capsys):
    args = [a.format(tmp=tmp_path, run=run_dir) for a in argv]
    assert run_main(args) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("sbd: error:")
    assert not (tmp_path / "out").exists()
