"""Tests for model/checkpoint.py: loading sbd / BD3-LM / MDLM checkpoints, saving, BD3-LM export."""

from __future__ import annotations

import json
import shutil

import pytest
import torch
from safetensors.torch import load_file, save_file

import sbdcli
from sbdcli.config import ModelConfig
from sbdcli.errors import UserError
from sbdcli.model import Denoiser
from sbdcli.model.checkpoint import export_bd3lm, load_model, save_sbd_model


def random_model(seed: int = 0, **overrides) -> Denoiser:
    values = dict(vocab_size=32, mask_id=31, seq_len=16, n_layers=2, d_model=32, n_heads=2)
    values.update(cond_dim=16, dropout=0.0)
    values.update(overrides)
    model = Denoiser(ModelConfig(**values))
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 0.3)
    return model.eval()


def same_function(a: Denoiser, b: Denoiser) -> bool:
    """Equal weights and equal logits (up to float32 kernel rounding)."""
    sa, sb = a.state_dict(), b.state_dict()
    if set(sa) != set(sb) or not all(torch.equal(sa[k], sb[k]) for k in sa):
        return False
    x = torch.randint(0, 31, (2, 16), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        diff = a.train_logits(x, x.flip(1), 4) - b.train_logits(x, x.flip(1), 4)
    return float(diff.abs().max()) < 1e-5


def hf_dir(tmp_path, model: Denoiser, config: dict, name: str = "hf"):
    """A BD3-LM/MDLM style directory written by hand (independent of export_bd3lm)."""
    out = tmp_path / name
    out.mkdir()
    (out / "config.json").write_text(json.dumps(config))
    state = {f"backbone.{k}": v.contiguous() for k, v in model.state_dict().items()}
    save_file(state, str(out / "model.safetensors"), metadata={"format": "pt"})
    return out


MDLM_CONFIG = {
    "model_type": "mdlm",
    "vocab_size": 32,
    "model_length": 16,
    "hidden_dim": 32,
    "cond_dim": 16,
    "n_blocks": 2,
    "n_heads": 2,
    "dropout": 0.1,
    "time_conditioning": False,
}


# --------------------------------------------------------------------------- loading
def test_load_fixture_matches_reference_logits(fixture_dir):
    model = sbdcli.load_model(str(fixture_dir))
    assert not model.training
    cfg = model.config
    assert (cfg.vocab_size, cfg.mask_id, cfg.seq_len, cfg.d_model) == (1024, 1023, 32, 64)
    assert (cfg.n_layers, cfg.n_heads, cfg.cond_dim, cfg.time_conditioning) == (2, 4, 32, False)
    assert model.sampling_eps == pytest.approx((1e-3, 0.999))
    inputs = load_file(str(fixture_dir / "inputs.safetensors"))
    ref = load_file(str(fixture_dir / "outputs.safetensors"))["train_logits"]
    with torch.no_grad():
        logits = model.train_logits(inputs["xt"], inputs["x0"], 4)
    assert float((logits - ref).abs().max()) < 1e-4


def test_load_mdlm_layout(tmp_path):
    src = random_model(2)
    loaded = load_model(hf_dir(tmp_path, src, MDLM_CONFIG))
    assert loaded.config.dropout == 0.1 and loaded.config.mask_id == 31
    assert same_function(src, loaded)


def test_load_accepts_aliases_and_missing_rotary_buffer(tmp_path):
    src = random_model(3)
    config = dict(MDLM_CONFIG)
    config["hidden_size"] = config.pop("hidden_dim")
    out = hf_dir(tmp_path, src, config)
    state = load_file(str(out / "model.safetensors"))
    del state["backbone.rotary_emb.inv_freq"]
    save_file(state, str(out / "model.safetensors"))
    assert same_function(src, load_model(out))


def test_save_and_load_sbd_model(tmp_path):
    src = random_model(4)
    src.sampling_eps = (0.2, 0.8)
    path = save_sbd_model(src, tmp_path / "model.safetensors", {"step": 7})
    loaded = load_model(path)
    assert loaded.config == src.config and loaded.sampling_eps == (0.2, 0.8)
    assert loaded.checkpoint_header["step"] == 7
    assert same_function(src, loaded)
    run = tmp_path / "run"  # a run directory holds model.safetensors (+ config.json)
    run.mkdir()
    shutil.copy(path, run / "model.safetensors")
    (run / "config.json").write_text(json.dumps({"model": src.config.to_dict()}))
    assert same_function(src, sbdcli.load_model(str(run)))


def test_per_block_clip_header_picks_smallest_block(tmp_path):
    src = random_model(5)
    header = {"sampling_eps": {"16": [0.001, 1.0], "4": [0.3, 0.8]}, "block_sizes": [4, 16]}
    loaded = load_model(save_sbd_model(src, tmp_path / "m.safetensors", header))
    assert loaded.sampling_eps == (0.3, 0.8)


# --------------------------------------------------------------------------- export
def test_export_round_trip(tmp_path):
    src = random_model(6)
    src.sampling_eps = (0.25, 0.75)
    run = tmp_path / "run"
    run.mkdir()
    save_sbd_model(src, run / "model.safetensors", {"block_sizes": [4, 16]})
    out = export_bd3lm(run, tmp_path / "hf")
    config = json.loads((out / "config.json").read_text())
    assert config["model_type"] == "bd3lm" and config["block_size"] == 4
    assert (config["hidden_dim"], config["n_blocks"], config["n_heads"]) == (32, 2, 2)
    assert (config["sampling_eps_min"], config["sampling_eps_max"]) == (0.25, 0.75)
    state = load_file(str(out / "model.safetensors"))
    names = {k for k in state if k.startswith("backbone.")}
    assert names == {f"backbone.{k}" for k in src.state_dict()}
    assert float(state["sampling_eps_max"]) == 0.75
    back = load_model(out)
    assert same_function(src, back) and back.sampling_eps == (0.25, 0.75)


def test_export_refuses_existing_dir_and_non_bd3lm_shapes(tmp_path):
    src = random_model(7)
    (tmp_path / "busy").mkdir()
    (tmp_path / "busy" / "x").write_text("keep me")
    with pytest.raises(UserError):
        export_bd3lm(src, tmp_path / "busy")
    assert (tmp_path / "busy" / "x").read_text() == "keep me"
    export_bd3lm(src, tmp_path / "busy", overwrite=True)
    assert (tmp_path / "busy" / "config.json").is_file()
    with pytest.raises(UserError, match="mlp_ratio"):
        export_bd3lm(random_model(mlp_ratio=2), tmp_path / "other")


# --------------------------------------------------------------------------- errors
def test_load_errors_are_user_errors(tmp_path):
    with pytest.raises(UserError, match="not found"):
        load_model(tmp_path / "nothing")
    (tmp_path / "empty").mkdir()
    with pytest.raises(UserError, match="no model.safetensors"):
        load_model(tmp_path / "empty")
    (tmp_path / "pickled").mkdir()
    (tmp_path / "pickled" / "pytorch_model.bin").write_bytes(b"\x80\x04")
    with pytest.raises(UserError, match="safetensors only"):
        load_model(tmp_path / "pickled")
    (tmp_path / "notes.txt").write_text("hi")
    with pytest.raises(UserError):
        load_model(tmp_path / "notes.txt")


def test_unknown_layouts_are_rejected(tmp_path):
    src = random_model(8)
    with pytest.raises(UserError, match="model_type"):
        load_model(hf_dir(tmp_path, src, {**MDLM_CONFIG, "model_type": "llama"}, "a"))
    with pytest.raises(UserError, match="shape"):
        load_model(hf_dir(tmp_path, src, {**MDLM_CONFIG, "cond_dim": 8}, "b"))
    with pytest.raises(UserError, match="causal"):
        load_model(hf_dir(tmp_path, src, {**MDLM_CONFIG, "causal": True}, "c"))
    with pytest.raises(UserError, match="n_heads"):
        load_model(
            hf_dir(tmp_path, src, {k: v for k, v in MDLM_CONFIG.items() if k != "n_heads"}, "d")
        )
    odd = hf_dir(tmp_path, src, MDLM_CONFIG, "e")
    state = load_file(str(odd / "model.safetensors"))
    state["backbone.extra.weight"] = torch.zeros(1)
    save_file(state, str(odd / "model.safetensors"))
    with pytest.raises(UserError, match="unexpected"):
        load_model(odd)


# --------------------------------------------------------------------------- time conditioning
def test_time_conditioned_checkpoints_load_and_export_their_flag(tmp_path):
    src = random_model(9, time_conditioning=True)
    loaded = load_model(hf_dir(tmp_path, src, {**MDLM_CONFIG, "time_conditioning": True}))
    assert loaded.config.time_conditioning is True and same_function(src, loaded)
    out = export_bd3lm(src, tmp_path / "exported")
    from safetensors import safe_open

    with safe_open(str(out / "model.safetensors"), framework="pt") as handle:
        assert handle.metadata()["time_conditioning"] == "true"
    back = load_model(out)
    assert back.config.time_conditioning is True and same_function(src, back)


def test_flag_disagreeing_with_the_exported_weights_is_refused(tmp_path):
    for flag in (True, False):
        out = export_bd3lm(random_model(10, time_conditioning=flag), tmp_path / f"e{flag}")
        config = json.loads((out / "config.json").read_text())
        config["time_conditioning"] = not flag
        (out / "config.json").write_text(json.dumps(config))
        with pytest.raises(UserError, match="time_conditioning") as info:
            load_model(out)
        assert "\n" not in str(info.value)


def test_time_conditioning_flag_must_be_a_boolean(tmp_path):
    src = random_model(11)
    with pytest.raises(UserError, match="true or false"):
        load_model(hf_dir(tmp_path, src, {**MDLM_CONFIG, "time_conditioning": "false"}))


def test_run_config_disagreeing_with_the_model_header_is_refused(tmp_path):
    src = random_model(12, time_conditioning=True)
    run = tmp_path / "run"
    run.mkdir()
    save_sbd_model(src, run / "model.safetensors")
    model_cfg = src.config.to_dict()
    (run / "config.json").write_text(json.dumps({"model": model_cfg}))
    assert load_model(run).config.time_conditioning is True
    (run / "config.json").write_text(
        json.dumps({"model": {**model_cfg, "time_conditioning": False}})
    )
    with pytest.raises(UserError, match="time_conditioning"):
        load_model(run)


def test_bad_time_flag_exits_2_in_one_line(tmp_path, capsys):
    from sbdcli.cli import main

    out = export_bd3lm(random_model(13, time_conditioning=True), tmp_path / "hf")
    config = json.loads((out / "config.json").read_text())
    (out / "config.json").write_text(json.dumps({**config, "time_conditioning": False}))
    with pytest.raises(SystemExit) as info:
        main(["export", str(out), str(tmp_path / "again")])
    assert info.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "time_conditioning" in err[0]
    assert not (tmp_path / "again").exists()


def test_a_hub_name_that_is_not_here_gets_a_download_hint(monkeypatch):
    from sbdcli.model.checkpoint import model_not_found

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    name = "kuleshov-group/bd3lm-owt-block_size16"
    with pytest.raises(UserError) as info:
        load_model(name)
    msg = str(info.value)
    assert "\n" not in msg and msg.startswith(f"model not found: {name}")
    assert f"hf download {name} --local-dir bd3lm-owt-block_size16" in msg
    assert "then -m bd3lm-owt-block_size16" in msg and "HF_HUB_OFFLINE is set" in msg
    monkeypatch.delenv("HF_HUB_OFFLINE")
    assert "HF_HUB_OFFLINE" not in str(model_not_found(name))
    for local in ("no/such/run", "./nope", "nope"):  # not hub-shaped: the plain message
        assert str(model_not_found(local)) == f"model not found: {local}"
