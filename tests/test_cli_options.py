"""Tests for cli/options.py: options derived from config fields carry the field's default
and docstring, library messages are shown with flags, and an error names the flag."""

from __future__ import annotations

import dataclasses

import click
import pytest
import typer

from sbdcli.cli import app, main
from sbdcli.cli.options import field_docs, flag_for, to_flags
from sbdcli.cli.sampling import SAMPLER_FIELDS
from sbdcli.cli.train import TRAIN_FIELDS
from sbdcli.config import RemaskConfig, SamplerConfig, TrainConfig


def command(name: str) -> click.Command:
    group = typer.main.get_command(app)
    return group.commands[name]  # type: ignore[attr-defined]


def option(cmd: click.Command, flag: str) -> click.Option:
    found = [p for p in cmd.params if flag in [*p.opts, *getattr(p, "secondary_opts", [])]]
    assert found, f"{cmd.name} has no {flag}"
    return found[0]  # type: ignore[return-value]


def test_every_config_field_has_a_docstring():
    for cls in (SamplerConfig, RemaskConfig, TrainConfig):
        missing = {f.name for f in dataclasses.fields(cls)} - set(field_docs(cls))
        assert not missing, f"{cls.__name__} fields without a docstring: {missing}"


@pytest.mark.parametrize("name", ["draft", "revise", "generate"])
def test_sampler_options_take_default_and_help_from_the_config(name):
    cmd = command(name)
    defaults = {f.name: f.default for f in dataclasses.fields(SamplerConfig)}
    for field in SAMPLER_FIELDS:
        opt = option(cmd, flag_for(field))
        default = defaults[field]
        if field == "reveal":  # unset: steps, unless an old flag names another policy
            assert opt.default is None and opt.show_default == "steps"
        elif hasattr(default, "spelling"):  # a cache value: its spelling, and every choice
            assert opt.default == default.spelling() and "approx[:R]" in opt.help
        else:
            assert opt.default == default, (name, field)
        assert opt.help and opt.help.split()[0] in field_docs(SamplerConfig)[field]


def test_kv_cache_keeps_its_negative_flag():
    opt = option(command("draft"), "--no-kv-cache")
    assert (
        opt.default is True and "--kv-cache" in opt.opts and "--no-kv-cache" in opt.secondary_opts
    )


def test_train_options_default_to_none_and_show_preset_defaults():
    cmd = command("train")
    for field in TRAIN_FIELDS:
        opt = option(cmd, flag_for(field))
        assert opt.default is None, field
    assert "tiny 1200" in option(cmd, "--steps").help
    assert option(cmd, "--lr-schedule").show_default == "constant"  # [default: ...], not inline


def test_library_messages_show_flags():
    assert to_flags("`gamma` must lie in [0, 1]") == "--gamma must lie in [0, 1]"
    assert to_flags("cannot change `mix_lambda`") == "cannot change --lambda"
    assert to_flags("`dtype` must be one of float64") == "--sampling-dtype must be one of float64"


def test_a_bad_derived_option_is_one_line_naming_the_flag(capsys):
    with pytest.raises(SystemExit) as info:
        main(["remask", "--gamma", "1.5", "-i", "-"])
    assert info.value.code == 2
    err = capsys.readouterr().err.strip()
    assert "--gamma must lie in [0, 1], got 1.5" in err and len(err.splitlines()) == 1


@pytest.mark.parametrize(
    ("path", "cls", "fields"),
    [
        (["eval", "genppl"], "GenPplOptions", "GENPPL_FIELDS"),
        (["demo"], "DemoConfig", "DEMO_FIELDS"),
    ],
)
def test_eval_and_demo_options_are_derived_from_their_config(path, cls, fields):
    import sbdcli.cli.demo as demo_cli
    import sbdcli.cli.evaluate as eval_cli
    import sbdcli.config as config

    config_cls = getattr(config, cls)
    names = getattr(eval_cli if cls == "GenPplOptions" else demo_cli, fields)
    cmd: click.Command = typer.main.get_command(app)
    for part in path:
        cmd = cmd.commands[part]  # type: ignore[attr-defined]
    defaults = {f.name: f.default for f in dataclasses.fields(config_cls)}
    docs = field_docs(config_cls)
    for field in names:
        opt = option(cmd, flag_for(field))
        assert opt.default == defaults[field], (cls, field)
        first = opt.help.split()[0] if opt.help else "?"
        assert first in docs[field].replace("`", ""), (cls, field)


@pytest.mark.parametrize(
    ("override", "flag"),
    [({"lr": 0.0}, "--lr"), ({"warmup": -1}, "--warmup"), ({"ema": 1.0}, "--ema"),
     ({"val_rows": -1}, "--val-rows"), ({"mix_lambda": 2.0}, "--lambda")],
)  # fmt: skip
def test_training_messages_name_the_field_and_show_as_its_flag(override, flag):
    from sbdcli.config import train_config
    from sbdcli.errors import UserError

    with pytest.raises(UserError) as info:
        train_config("tiny", **override)
    assert f"`{next(iter(override))}`" in str(info.value)
    assert flag in to_flags(str(info.value))


def test_the_lr_schedule_keeps_its_old_flag_and_its_saved_name():
    cmd = command("train")
    assert option(cmd, "--lr-schedule") is option(cmd, "--schedule")
    saved = TrainConfig().to_dict()
    saved["schedule"] = saved.pop("lr_schedule")  # a run.json of 0.1/0.2
    saved["schedule"] = "cosine"
    assert TrainConfig.from_dict(saved).lr_schedule == "cosine"
