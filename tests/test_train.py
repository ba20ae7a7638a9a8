"""Tests for train.py and trainstate.py: mix-scale draws, schedule, EMA, data order, noise,
exact resume, accumulation and data-parallel equivalence, run directory, no pickle.

Everything runs the real Denoiser and the real `loss.block_nelbo` on a small synthetic
data directory (L = 32) written by `sbdcli.data.prepare_synthetic`.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from sbdcli import artifacts
from sbdcli.config import TrainConfig, train_config
from sbdcli.diffusion.loss import block_nelbo
from sbdcli.errors import UserError
from sbdcli.train import draw_noise, resume_config, setup, train
from sbdcli.train.state import (
    EMA,
    BlockSizeSampler,
    DataOrder,
    flatten_optimizer_state,
    lr_at,
    resolve_block_sizes,
    unflatten_optimizer_state,
)

HERE = Path(__file__).resolve().parent


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory) -> Path:
    from sbdcli.data import prepare_synthetic

    out = tmp_path_factory.mktemp("data") / "syn32"
    prepare_synthetic(out, seq_len=32, num_train=512, num_val=32, floor_samples=64, seed=1)
    return out


def tiny(**overrides) -> TrainConfig:
    base = {"steps": 6, "batch_size": 4, "val_every": 3, "save_every": 0, "val_rows": 8}
    base.update(device="cpu", warmup=2, lr=5e-3, block_large=1024, mix_lambda=0.5)
    base.update(overrides)
    return train_config("tiny", **base)


def metrics(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


# --------------------------------------------------------------------------- pieces
def test_block_sizes_clamp_to_length_and_must_divide():
    assert resolve_block_sizes(4, 1024, 128) == (4, 128, ["block size 1024 >= L = 128: "
                                                          "using one global block"])  # fmt: skip
    assert resolve_block_sizes(4, 128, 128) == (4, 128, [])
    with pytest.raises(UserError, match="does not divide"):
        resolve_block_sizes(3, 128, 128)


def test_mix_scale_draw_frequencies_match_lambda():
    draws = 20_000
    for lam in (0.1, 0.3):
        sampler = BlockSizeSampler(4, 128, lam, seed=7)
        sizes = [sampler.draw() for _ in range(draws)]
        assert set(sizes) == {4, 128}
        freq = sizes.count(128) / draws
        assert abs(freq - lam) < 5 * math.sqrt(lam * (1 - lam) / draws)
    assert {BlockSizeSampler(4, 128, 0.0, 1).draw() for _ in range(200)} == {4}
    assert {BlockSizeSampler(4, 128, 1.0, 1).draw() for _ in range(200)} == {128}


def test_block_sampler_is_seeded_and_resumes_from_its_state():
    a, b = BlockSizeSampler(4, 32, 0.5, 3), BlockSizeSampler(4, 32, 0.5, 3)
    first = [a.draw() for _ in range(50)]
    assert first == [b.draw() for _ in range(50)]
    state = a.state()
    rest = [a.draw() for _ in range(50)]
    c = BlockSizeSampler(4, 32, 0.5, 999)
    c.load_state(state)
    assert [c.draw() for _ in range(50)] == rest
    assert first != [BlockSizeSampler(4, 32, 0.5, 4).draw() for _ in range(50)]


def test_lr_schedule_warmup_constant_and_cosine():
    assert lr_at(0, 1.0, 4, 20, "constant", 0.1) == pytest.approx(0.25)
    assert lr_at(3, 1.0, 4, 20, "constant", 0.1) == pytest.approx(1.0)
    assert lr_at(15, 1.0, 4, 20, "constant", 0.1) == 1.0
    assert lr_at(4, 1.0, 4, 20, "cosine", 0.1) == pytest.approx(1.0)
    mid = 4 + 8  # halfway through the decay: r + (1 - r) / 2
    assert lr_at(mid, 1.0, 4, 20, "cosine", 0.1) == pytest.approx(0.55)
    assert lr_at(20, 1.0, 4, 20, "cosine", 0.1) == pytest.approx(0.1)
    assert lr_at(0, 2.0, 0, 10, "constant", 0.0) == 2.0


def test_ema_matches_explicit_recurrence_and_swaps_back():
    p = torch.nn.Parameter(torch.zeros(3))
    ema = EMA({"w": p}, decay=0.9, warmup=True)
    expected = torch.zeros(3)
    for n, value in enumerate([1.0, 2.0, 3.0, 4.0]):
        with torch.no_grad():
            p.fill_(value)
        d = min(0.9, (1 + n) / (10 + n))
        expected = d * expected + (1 - d) * value
        ema.update({"w": p})
    assert torch.allclose(ema.shadow["w"], expected)
    with ema.swapped_into({"w": p}):
        assert torch.allclose(p, expected)
    assert torch.equal(p.detach(), torch.full((3,), 4.0))
    plain = EMA({"w": p}, decay=0.5, warmup=False)
    assert plain.current_decay() == 0.5


def test_data_order_is_a_permutation_per_epoch_and_position_based():
    order = DataOrder(10, seed=2)
    epoch0, epoch1 = order.rows(0, 10), order.rows(10, 10)
    assert sorted(epoch0.tolist()) == list(range(10)) == sorted(epoch1.tolist())
    assert not torch.equal(epoch0, epoch1)
    span = DataOrder(10, seed=2).rows(7, 6)  # crosses the epoch boundary
    assert torch.equal(span, torch.cat([epoch0[7:], epoch1[:3]]))


def test_optimizer_state_round_trips_through_safetensors_and_json(tmp_path):
    from torch.distributed.checkpoint.state_dict import (
        get_optimizer_state_dict,
        set_optimizer_state_dict,
    )

    def make():
        torch.manual_seed(0)
        model = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.Linear(4, 2))
        return model, torch.optim.AdamW(model.parameters(), lr=1e-2, betas=(0.8, 0.95))

    def step(model, opt, seed):
        torch.manual_seed(seed)
        opt.zero_grad()
        model(torch.randn(5, 3)).pow(2).sum().backward()
        opt.step()

    model, opt = make()
    step(model, opt, 1)
    tensors, meta = flatten_optimizer_state(get_optimizer_state_dict(model, opt))
    artifacts.save_tensors(tmp_path / "o.safetensors", tensors, "t")
    artifacts.write_json(tmp_path / "o.json", meta)
    loaded, _ = artifacts.load_tensors(tmp_path / "o.safetensors")
    restored = unflatten_optimizer_state(loaded, artifacts.read_json(tmp_path / "o.json"))
    model2, opt2 = make()
    model2.load_state_dict(model.state_dict())
    set_optimizer_state_dict(model2, opt2, restored)
    assert opt2.param_groups[0]["betas"] == (0.8, 0.95)
    step(model, opt, 2)
    step(model2, opt2, 2)
    for a, b in zip(model.parameters(), model2.parameters(), strict=True):
        assert torch.equal(a, b)


def test_draw_noise_equals_the_draws_block_nelbo_makes(data_dir):
    """Drawing the global batch's noise up front must not change the estimator."""
    from sbdcli.config import preset
    from sbdcli.data import load_split
    from sbdcli.model import Denoiser

    x0 = load_split(data_dir, "train")[:6]  # (6, 32)
    model = Denoiser(preset("tiny", vocab_size=66, mask_id=65, seq_len=32)).eval()
    for block in (4, 32):
        out = block_nelbo(model, x0, block, generator=torch.Generator().manual_seed(3))
        t, masked = draw_noise(6, 32, block, torch.Generator().manual_seed(3), (1e-3, 1.0), False)
        assert torch.equal(t, out.t) and torch.equal(masked, out.masked)
        assert not masked[:, 0].any()


# --------------------------------------------------------------------------- the loop
def test_tiny_model_loss_drops_on_synthetic_data(tmp_path):
    """A deterministic-chain member of the topic-markov family (1 topic, 1 successor): the
    NELBO can only fall far below its start by using context, and it does in 40 steps."""
    from sbdcli.data import prepare_synthetic
    from sbdcli.data.synthetic import TopicMarkovSpec

    chain = TopicMarkovSpec(vocab=16, topics=1, fanout=1, eps=0.0)
    prepare_synthetic(tmp_path / "chain", chain, 32, num_train=512, num_val=32, floor_samples=8)
    cfg = tiny(steps=40, batch_size=16, val_rows=32, val_every=0, lr=3e-3, warmup=10, ema=0.0)
    trainer = setup(cfg, tmp_path / "chain", tmp_path / "run")
    start = trainer.validate()  # the same corruption as the final validation
    summary = trainer.fit()
    for block in (4, 32):
        assert summary.val[block] < 0.5 * start[block], (start, summary.val)
    assert summary.reference["oracle_floor"] == 0.0  # the chain is deterministic


def test_resume_after_interrupt_reproduces_the_uninterrupted_run(tmp_path, data_dir):
    cfg = tiny(global_batch=8, mix_lambda=0.5)  # accumulation 2, both block sizes
    full = tmp_path / "full"
    train(cfg, data_dir, full, runs_root=tmp_path)

    part = tmp_path / "part"

    def interrupt(info):
        if info.step == 3:
            os.kill(os.getpid(), signal.SIGINT)  # the loop stops at the step boundary

    with pytest.raises(KeyboardInterrupt):
        train(cfg, data_dir, part, runs_root=tmp_path, progress=interrupt)
    assert json.loads((part / "state" / "trainer.json").read_text())["step"] == 3
    assert len(metrics(part)) == 3
    train(resume_config(part), data_dir, part, resume=True, runs_root=tmp_path)

    keys = ("step", "loss", "block_size", "lr", "tokens", "grad_norm", "val_nelbo")
    got = [{k: r.get(k) for k in keys} for r in metrics(part)]
    want = [{k: r.get(k) for k in keys} for r in metrics(full)]
    assert got == want
    assert {r["block_size"] for r in got} == {4, 32}
    for name in ("model", "ema", "optimizer"):
        a = load_file(full / "state" / f"{name}.safetensors")
        b = load_file(part / "state" / f"{name}.safetensors")
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_resume_refuses_changed_optimisation(tmp_path, data_dir):
    run = tmp_path / "r"
    train(tiny(steps=2, val_every=0), data_dir, run, runs_root=tmp_path)
    assert resume_config(run, steps=4).steps == 4
    with pytest.raises(UserError, match="--lr"):
        resume_config(run, lr=1.0)
    with pytest.raises(UserError, match="--mix/--block"):
        resume_config(run, block_small=8)
    with pytest.raises(UserError, match="nothing to resume"):
        setup(tiny(), data_dir, tmp_path / "none", resume=True)


def test_accumulation_matches_one_big_batch(tmp_path, data_dir):
    """1 process x 4 rows x 2 accumulation == 1 process x 8 rows (same loss, same grads)."""
    grads = []
    for name, batch in (("acc", 4), ("big", 8)):
        trainer = setup(tiny(batch_size=batch, global_batch=8), data_dir, tmp_path / name)
        loss = trainer.forward_backward(trainer.sampler.draw())
        grads.append((loss, {n: p.grad.clone() for n, p in trainer.denoiser.named_parameters()}))
    (loss_a, ga), (loss_b, gb) = grads
    assert loss_a == pytest.approx(loss_b, rel=1e-5)
    for name in ga:
        assert torch.allclose(ga[name], gb[name], rtol=1e-4, atol=1e-6), name


@pytest.mark.slow
def test_two_processes_match_one_process(tmp_path, data_dir):
    """torchrun 2 processes x 4 rows gives the first step of 1 process x 8 rows (gloo DDP)."""
    script = str(HERE / "ddp_first_step.py")
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    two, one = tmp_path / "two", tmp_path / "one"
    launch = [sys.executable, "-m", "torch.distributed.run", "--standalone"]
    cmd = [*launch, "--nproc_per_node", "2", script, str(data_dir), str(two), "4"]
    for _ in range(2):  # one retry: torchrun's local rendezvous can flake on a busy host
        done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=240)
        if done.returncode == 0:
            break
        shutil.rmtree(two, ignore_errors=True)
    assert done.returncode == 0, f"torchrun failed twice:\n{done.stderr[-3000:]}"
    single = [sys.executable, script, str(data_dir), str(one), "8"]
    done = subprocess.run(single, env=env, capture_output=True, text=True, timeout=240)
    assert done.returncode == 0, done.stderr[-3000:]
    (a, ha), (b, hb) = (artifacts.load_tensors(p / "grads.safetensors") for p in (two, one))
    assert (ha["processes"], hb["processes"]) == (2, 1)
    assert json.loads((two / "run" / "config.json").read_text())["processes"] == 2
    assert float(a["__loss__"]) == pytest.approx(float(b["__loss__"]), rel=1e-5)
    for name in b:
        assert torch.allclose(a[name], b[name], rtol=1e-4, atol=1e-6), name


# --------------------------------------------------------------------------- run directory
def test_run_directory_layout_latest_link_and_ema_weights(tmp_path, data_dir):
    import sbdcli

    runs = tmp_path / "runs"
    summary = train(tiny(steps=3, ema=0.9), data_dir, runs_root=runs)
    run = summary.run_dir
    assert run.parent == runs and run.name.startswith("tiny-")
    assert (runs / "latest").is_symlink() and (runs / "latest").resolve() == run.resolve()
    names = {p.relative_to(run).as_posix() for p in run.rglob("*") if p.is_file()}
    assert {"model.safetensors", "config.json", "metrics.jsonl"} <= names
    assert {"data/manifest.json", "data/oracle.safetensors"} <= names
    state = ("trainer.json", "model", "ema", "optimizer", "rng")
    assert {f"state/{n if n.endswith('json') else n + '.safetensors'}" for n in state} <= names
    config = json.loads((run / "config.json").read_text())
    assert config["processes"] == 1 and config["train"]["steps"] == 3
    assert config["model"]["vocab_size"] == 66 and Path(config["data"]["dir"]).samefile(data_dir)
    assert [r["processes"] for r in metrics(run)] == [1, 1, 1]
    model = sbdcli.load_model(str(run))
    ema = load_file(run / "state" / "ema.safetensors")
    raw = load_file(run / "state" / "model.safetensors")
    state = model.state_dict()
    assert all(torch.equal(state[k], ema[k]) for k in ema)
    assert any(not torch.equal(ema[k], raw[k]) for k in ema)
    with pytest.raises(UserError, match="not empty"):
        setup(tiny(), data_dir, run)


def test_no_pickle_anywhere_in_a_run(tmp_path, data_dir):
    summary = train(tiny(steps=2, save_every=1), data_dir, tmp_path / "run", runs_root=tmp_path)
    for path in summary.run_dir.rglob("*"):
        if not path.is_file():
            continue
        assert path.suffix in {".json", ".jsonl", ".safetensors"}, path
        head = path.read_bytes()[:2]
        assert head[:1] != b"\x80" and head != b"PK", f"{path} looks like a pickle/zip"
        if path.suffix == ".safetensors":
            load_file(path)
        else:
            for line in path.read_text().splitlines() if path.suffix == ".jsonl" else []:
                json.loads(line)


def test_init_from_run_and_vocab_mismatch(tmp_path, data_dir):
    from sbdcli.data import prepare_synthetic
    from sbdcli.data.synthetic import TopicMarkovSpec

    base = train(tiny(steps=2), data_dir, tmp_path / "base", runs_root=tmp_path)
    tuned = setup(tiny(init=str(base.run_dir)), data_dir, tmp_path / "tuned")
    start = load_file(base.run_dir / "model.safetensors")
    assert all(torch.equal(v, tuned.denoiser.state_dict()[k]) for k, v in start.items())
    other = tmp_path / "v32"
    spec = TopicMarkovSpec(vocab=30)
    prepare_synthetic(other, spec, 32, num_train=16, num_val=8, floor_samples=8)
    with pytest.raises(UserError, match="vocab"):
        setup(tiny(init=str(base.run_dir)), other, tmp_path / "bad")


def test_clip_search_sets_the_training_interval_and_checkpoint_header(tmp_path, data_dir):
    from sbdcli.diffusion.loss import clip_intervals

    cfg = tiny(steps=2, val_every=2, val_rows=4, clip_search=True, block_small=8, mix_lambda=0)
    summary = train(cfg, data_dir, tmp_path / "clip", runs_root=tmp_path)
    state = json.loads((summary.run_dir / "state" / "trainer.json").read_text())
    lo, hi = state["eps"]["8"]
    assert (lo, hi) in clip_intervals(8)
    _, header = artifacts.load_tensors(summary.run_dir / "model.safetensors")
    assert header["sampling_eps"] == {"8": [lo, hi]}


def test_noise_interval_per_block_size(tmp_path, data_dir):
    trainer = setup(tiny(eps_min=0.3, large_eps_min=0.01), data_dir, tmp_path / "eps")
    assert trainer.progress_state.eps == {4: [0.3, 1.0], 32: [0.01, 1.0]}
    single = setup(tiny(block_small=8, mix_lambda=0.0, eps_min=0.3), data_dir, tmp_path / "one")
    assert single.progress_state.eps == {8: [0.3, 1.0]}
    assert train_config("tiny").eps_min == 0.25 and train_config("small").eps_min == 1e-3


def test_init_from_a_bd3lm_checkpoint_directory(tmp_path, fixture_dir):
    """`init` accepts the published BD3-LM layout (config.json + backbone.* safetensors)."""
    from sbdcli.data import prepare_synthetic
    from sbdcli.data.synthetic import TopicMarkovSpec

    spec = TopicMarkovSpec(vocab=1022, topics=1)  # vocab 1024 with BOS and [MASK] = 1023
    prepare_synthetic(tmp_path / "d", spec, 32, num_train=16, num_val=4, floor_samples=4)
    trainer = setup(
        tiny(init=str(fixture_dir), steps=1, val_rows=4), tmp_path / "d", tmp_path / "r"
    )
    reference = load_file(fixture_dir / "model.safetensors")
    state = trainer.denoiser.state_dict()
    for name, value in reference.items():
        if name.startswith("backbone."):
            assert torch.equal(state[name.removeprefix("backbone.")], value.float()), name
    trainer.fit()
    saved = json.loads((tmp_path / "r" / "config.json").read_text())["model"]
    assert (saved["n_layers"], saved["d_model"], saved["vocab_size"]) == (2, 64, 1024)


def test_divergence_is_one_clear_error_before_the_update(tmp_path, data_dir):
    trainer = setup(tiny(steps=3), data_dir, tmp_path / "nan")
    before = {n: p.detach().clone() for n, p in trainer.denoiser.named_parameters()}
    trainer.forward_backward = lambda block: float("nan")
    with pytest.raises(UserError, match="diverged: loss nan at step 1"):
        trainer.fit()
    after = dict(trainer.denoiser.named_parameters())
    assert all(torch.equal(before[n], after[n]) for n in before)
