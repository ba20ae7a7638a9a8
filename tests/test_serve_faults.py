"""`sbd serve` as the hostile and careless user meets it, by class of fault
(tests/test_cli_faults.py): a body nested deeper than sbd reads, non-finite numbers (JSON's
NaN and Infinity extensions, 1e999), a model path the console would read as markup or that
holds control characters. The server answers each bad request with a 400 and an error
object naming the field (never a 500), and goes on serving; the command's refusals hold
the contract of tests/fault_helpers.py."""

from __future__ import annotations

import json
import re
import shutil
import urllib.error
import urllib.request
from pathlib import Path

import pytest

pytest.importorskip("fastapi", reason="needs the `serve` extra")
pytest.importorskip("uvicorn", reason="needs the `serve` extra")

from fake_model import one_thread  # noqa: F401 (autouse fixture)
from fault_helpers import code, refused
from serve_helpers import live_server, make_run

DEEP = "[" * 100_000 + "]" * 100_000


@pytest.fixture(scope="module")
def run(tmp_path_factory) -> Path:
    return make_run(tmp_path_factory.mktemp("servefaults"))


@pytest.fixture(scope="module")
def url(run):
    from sbdcli.pipeline import load_model_ref
    from sbdcli.serve import create_app

    with live_server(create_app(load_model_ref(str(run), "cpu"))) as address:
        yield address


def _post(url: str, body: str) -> tuple[int, dict]:
    req = urllib.request.Request(f"{url}/v1/completions", data=body.encode(), method="POST",
                                 headers={"Content-Type": "application/json"})  # fmt: skip
    try:
        with urllib.request.urlopen(req, timeout=60) as resp:
            return resp.status, json.loads(resp.read())
    except urllib.error.HTTPError as err:
        return err.code, json.loads(err.read())


@pytest.mark.parametrize(
    "body", ['{"prompt": ' + DEEP + "}", "[" * 70 + "]" * 70, '{"sbd": {"gammas": ' + DEEP + "}}"]
)
def test_a_deeply_nested_body_is_a_400(url, body):
    status, answer = _post(url, body)
    assert status == 400, answer
    assert "nested deeper than 64 levels" in answer["error"]["message"]
    assert answer["error"]["param"] == "body"  # the body as a whole, no one field


@pytest.mark.parametrize(
    "body, param",
    [
        ('{"max_tokens": 4, "temperature": Infinity}', "temperature"),
        ('{"max_tokens": 4, "temperature": 1e999}', "temperature"),
        ('{"max_tokens": 4, "top_p": NaN}', "top_p"),
        ('{"max_tokens": 4, "sbd": {"gammas": [-Infinity]}}', "sbd.gammas"),
        ('{"max_tokens": 4, "sbd": {"threshold": NaN}}', "sbd.threshold"),
    ],
)
def test_a_non_finite_number_is_a_400_naming_its_field(url, body, param):
    status, answer = _post(url, body)
    assert status == 400, answer
    assert answer["error"]["param"] == param, answer


def test_the_server_goes_on_serving_after_bad_requests(url):
    for body in ('{"prompt": ' + DEEP + "}", '{"temperature": NaN}'):
        assert _post(url, body)[0] == 400
    status, answer = _post(url, '{"max_tokens": 4, "seed": 1}')
    assert status == 200 and len(answer["choices"]) == 1


# --------------------------------------------------------------------------- the command
@pytest.mark.parametrize(
    "argv, expect",
    [
        (["serve", "-m", "x[/]y[bold]", "--port", "0"], "x[/]y[bold]"),
        (["serve", "-m", "x\x1b[2Jy", "--port", "0"], "x\\x1b[2Jy"),
        (["serve", "--host", "h[/]\x1b", "--port", "0", "--device", "cpu"], "h[/]\\x1b"),
    ],
)
def test_the_command_prints_names_as_they_are(run, monkeypatch, capsys, argv, expect):
    monkeypatch.chdir(run.parent.parent)
    line = refused(argv, run.parent.parent, capsys, expect)
    assert "\x1b" not in line


def test_the_ready_line_prints_a_markup_model_path_as_it_is(run, monkeypatch, capsys):
    import sbdcli.serve

    root = run.parent.parent
    (root / "m[").mkdir(exist_ok=True)
    shutil.copytree(run, root / "m[" / "]x\x1b[2J", dirs_exist_ok=True)  # m[/]x<ESC>[2J
    monkeypatch.chdir(root)
    monkeypatch.setattr(sbdcli.serve, "run", lambda app, sock, ready: ready("http://h:1"))
    assert code(["serve", "-m", "m[/]x\x1b[2J", "--port", "0", "--device", "cpu"]) == 0
    err = capsys.readouterr().err
    assert "Traceback" not in err and not re.search(r"[\x00-\x08\x0b-\x1f\x7f-\x9f]", err), err
    assert "m[/]x\\x1b[2J@" in err and "http://h:1" in err
