"""`POST /v1/sbd/edit` on a live loopback server: the edited text and record are those
`sbd edit` writes for the same text, options and seed (alone or sharing a batch), infilling
keeps every other token, the stream carries the remask and each revise call, and bad
texts or options are 400s naming the field. Every request is bounded; the server stops."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("fastapi", reason="the serve extra (pip install 'sbdcli[serve]')")
pytest.importorskip("httpx", reason="the dev extra (pip install -e '.[dev]')")

import httpx

from fake_model import one_thread  # noqa: F401 (autouse fixture)
from sbdcli import pipeline as pl
from sbdcli.cli import main
from sbdcli.serve import Settings, create_app
from serve_helpers import (
    comparable,
    held_worker,
    live_server,
    make_run,
    ref_in,
    sse_events,
    wait_for,
)

TIMEOUT = httpx.Timeout(60.0)
TEXT = "w1 w2 w3 w4 w5 w6 w7 w8 w9 w10 w11 w1 w2"


@pytest.fixture(scope="module")
def workdir(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("serve-edit")
    make_run(root)
    return root


@pytest.fixture(scope="module")
def ref(workdir) -> pl.ModelRef:
    return ref_in(workdir)


@pytest.fixture(scope="module")
def app(ref) -> Any:
    return create_app(ref, Settings(max_batch=4))


@pytest.fixture(scope="module")
def url(app) -> Iterator[str]:
    with live_server(app) as base:
        yield base


def edit(url: str, body: Any) -> httpx.Response:
    data = body if isinstance(body, bytes) else json.dumps(body)
    headers = {"Content-Type": "application/json"}
    return httpx.post(f"{url}/v1/sbd/edit", content=data, headers=headers, timeout=TIMEOUT)


def sbd_edit(workdir: Path, item: dict[str, str], argv: list[str], capsys) -> tuple[str, dict]:
    """What `sbd edit` prints and writes (--records) for one JSONL text, run in `workdir`."""
    src, out = workdir / "text.jsonl", workdir / "edited.jsonl"
    src.write_text(json.dumps(item) + "\n")
    capsys.readouterr()
    with pytest.raises(SystemExit) as info:
        main(["edit", str(src), "-m", "runs/latest", "--records", str(out), *argv])
    assert info.value.code in (0, None)
    (line,) = capsys.readouterr().out.splitlines()
    (rec,) = [json.loads(r) for r in out.read_text().splitlines()]
    return json.loads(line)["text"], rec


CASES = [
    ({"gamma": 0.3, "seed": 5}, ["--gamma", "0.3", "--seed", "5"]),
    (
        {"gamma": 0.25, "strategy": "posthoc", "block": 4, "top_p": 1.0, "seed": 2},
        ["--gamma", "0.25", "--strategy", "posthoc", "--block", "4", "--top-p", "1", "--seed", "2"],
    ),
    (
        {"gamma": 0.2, "strategy": "random", "prompt": "w4 w4", "seed": 1},
        ["--gamma", "0.2", "--strategy", "random", "--seed", "1"],
    ),
]


@pytest.mark.parametrize(("options", "argv"), CASES, ids=["masked", "posthoc-block", "prompt"])
def test_an_edit_is_what_sbd_edit_writes(url, workdir, monkeypatch, capsys, options, argv):
    monkeypatch.chdir(workdir)
    resp = edit(url, {"text": TEXT, **options})
    assert resp.status_code == 200, resp.text
    out = resp.json()
    item = {"id": "t1", "text": TEXT, "prompt": options.get("prompt", "")}
    text, rec = sbd_edit(workdir, item, argv, capsys)
    assert out["text"] == text
    assert comparable(out["record"]) == comparable(rec)
    assert out["usage"]["revised_tokens"] == rec["stages"][-1]["n_masked"] > 0
    assert out["usage"]["nfe"] == rec["nfe"]


def test_infill_fills_the_markers_only(url, workdir, monkeypatch, capsys):
    monkeypatch.chdir(workdir)
    body = {"text": "w3 [MASK] w4 [MASK:2] w1", "infill": True, "seed": 8, "id": "doc"}
    out = edit(url, body).json()
    text, rec = sbd_edit(workdir, {"id": "doc", "text": body["text"]},
                         ["--infill", "--seed", "8"], capsys)  # fmt: skip
    assert out["text"] == text and comparable(out["record"]) == comparable(rec)
    words = out["text"].split()
    assert len(words) == 6 and [words[0], words[2], words[5]] == ["w3", "w4", "w1"]
    assert out["record"]["stages"][-1]["positions"] == [2, 4, 5]


def test_edits_sharing_a_batch_are_each_what_sbd_edit_writes(
    app, url, workdir, monkeypatch, capsys
):
    batcher = app.state.server.batcher
    bodies = [
        {"text": TEXT, "gamma": 0.3, "seed": 5},
        {"text": "w2 w2 w9 w1", "gamma": 0.3, "seed": 6, "id": "other"},
    ]  # fmt: skip (two seeds, one batch)
    answers: dict[int, httpx.Response] = {}
    with held_worker(app) as release:
        first = threading.Thread(target=edit, args=(url, {"text": "w1 w1", "gamma": 0.5}))
        first.start()
        wait_for(lambda: len(batcher._running) == 1)
        threads = [
            threading.Thread(target=lambda k=k: answers.__setitem__(k, edit(url, bodies[k])))
            for k in range(2)
        ]
        for k, t in enumerate(threads, start=1):
            t.start()
            wait_for(lambda k=k: batcher.depth == k)
        release.set()
        for t in [first, *threads]:
            t.join(60)
    monkeypatch.chdir(workdir)
    for k, body in enumerate(bodies):
        got = answers[k].json()
        assert got["record"]["stages"][-1]["batch_size"] == 2  # they ran together
        text, rec = sbd_edit(workdir, {"id": body.get("id", "t1"), "text": body["text"]},
                             ["--gamma", "0.3", "--seed", str(body["seed"])], capsys)  # fmt: skip
        assert got["text"] == text and comparable(got["record"]) == comparable(rec)


def stream(url: str, body: dict[str, Any]) -> list[tuple[str, dict[str, Any] | str]]:
    with httpx.stream("POST", f"{url}/v1/sbd/edit", json={**body, "stream": True},
                      timeout=TIMEOUT) as resp:  # fmt: skip
        assert resp.status_code == 200
        return [
            (n, d if d == "[DONE]" else json.loads(d)) for n, d in sse_events(resp.iter_lines())
        ]


@pytest.mark.parametrize("text", [TEXT, " ".join([TEXT] * 6)], ids=["short", "windows"])
def test_the_edit_stream_carries_the_remask_and_every_revise_call(url, text):
    body = {"text": text, "gamma": 0.2, "seed": 3}
    events = stream(url, body)
    names = [n for n, _ in events]
    assert names[0] == "sbd.remask" and names[-2:] == ["sbd.final", "message"]
    assert set(names[1:-2]) == {"sbd.revise"}
    final = events[-2][1]
    assert isinstance(final, dict)
    assert final["text"] == edit(url, body).json()["text"]
    rec, revise = final["record"], final["record"]["stages"][-1]
    assert events[0][1]["positions"] == revise["positions"]  # type: ignore[index]
    seen = {}
    for _, ev in events[1:-2]:
        assert isinstance(ev, dict)
        for p, old, new in zip(ev["positions"], ev["old"], ev["new"], strict=True):
            seen[p] = (old, new)
    assert sorted(seen) == revise["positions"]
    for p, (old, new) in seen.items():
        assert old == revise["replaced"][revise["positions"].index(p)] and new == rec["tokens"][p]


BAD = [
    ({"gamma": 0.2}, "text", "Field required"),
    ({"text": "   ", "gamma": 0.2}, "text", "no tokens"),
    ({"text": TEXT}, "gamma", "or infill"),
    ({"text": TEXT, "gamma": 0.2, "infill": True}, "gamma", ""),
    ({"text": TEXT, "gamma": 1.5}, "gamma", ""),
    ({"text": TEXT, "gamma": 0.2, "strategy": "snapshot"}, "strategy", "draft's confidence"),
    ({"text": TEXT, "gamma": 0.2, "strategy": "loudest"}, "strategy", ""),
    ({"text": TEXT, "gamma": 0.2, "block": "wide"}, "block", ""),
    ({"text": TEXT, "infill": True}, "text", "no mask marker"),
    ({"text": "w1 [MASK:0]", "infill": True}, "text", ""),
    ({"text": "w1 [MASK:100000]", "infill": True}, "text", ""),
    ({"text": "w1 [MASK]", "prompt": "w2 [MASK]", "infill": True}, "prompt", "prompt"),
    ({"text": " ".join(["w1"] * 600), "gamma": 0.1}, "text", "limit of 512"),
    ({"text": "w1 qq", "gamma": 0.1}, "text", ""),
    ({"text": TEXT, "gamma": 0.2, "path": "/etc/passwd"}, "path", "unknown field"),
    ({"text": TEXT, "gamma": 0.2, "seed": "1"}, "seed", ""),
]


@pytest.mark.parametrize(("body", "param", "words"), BAD, ids=[b[1] for b in BAD])
def test_a_bad_edit_is_a_400_naming_its_field(url, body, param, words):
    resp = edit(url, body)
    assert resp.status_code == 400, resp.text
    err = resp.json()["error"]
    assert err["param"] == param and words in err["message"], err
