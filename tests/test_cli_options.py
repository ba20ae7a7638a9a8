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
            assert opt.default is None and "Default: steps." in opt.help
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
    assert "(default constant)" in option(cmd, "--schedule").help


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
