"""`sbd serve`'s HTTP API on a live loopback server: routes, errors, auth, limits, the
records of seeded requests (those `sbd generate` writes), the event stream (the final text
rebuilt from the events alone), the real `openai` client, and a client that leaves
mid-stream (the others' records unchanged). Every request loop is bounded; every server
is stopped."""

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
from sbdcli.serve import Limits, Settings, create_app
from serve_helpers import (
    comparable,
    generate,
    held_worker,
    live_server,
    make_run,
    ref_in,
    sse_events,
    wait_for,
)

TIMEOUT = httpx.Timeout(60.0)


@pytest.fixture(scope="module")
def workdir(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("serve-app")
    make_run(root)
    return root


@pytest.fixture(scope="module")
def ref(workdir) -> pl.ModelRef:
    return ref_in(workdir)


@pytest.fixture(scope="module")
def url(ref) -> Iterator[str]:
    settings = Settings(max_body=4096, max_batch=8, max_queue=16, limits=Limits(max_n=4))
    with live_server(create_app(ref, settings)) as base:
        yield base


def post(url: str, body: Any, **kw: Any) -> httpx.Response:
    data = body if isinstance(body, (bytes, str)) else json.dumps(body)
    headers = {"Content-Type": "application/json", **kw.pop("headers", {})}
    return httpx.post(f"{url}/v1/completions", content=data, headers=headers, timeout=TIMEOUT)


def stream(url: str, body: dict[str, Any]) -> list[tuple[str, str]]:
    """Every (event name, data) of one streamed request."""
    with httpx.stream("POST", f"{url}/v1/completions", json={**body, "stream": True},
                      timeout=TIMEOUT) as resp:  # fmt: skip
        assert resp.status_code == 200, resp.read()
        return list(sse_events(resp.iter_lines()))


# --------------------------------------------------------------------------- routes
def test_health_models_and_an_unknown_route(url, ref):
    health = httpx.get(f"{url}/health").json()
    assert health["status"] == "ok" and health["model"] == ref.id
    models = httpx.get(f"{url}/v1/models").json()
    assert [m["id"] for m in models["data"]] == [ref.id]
    assert models["data"][0]["max_model_len"] == 32
    resp = httpx.get(f"{url}/v1/nothing")
    assert resp.status_code == 404
    assert resp.json()["error"]["message"] == "no route GET /v1/nothing"
    assert post(url, {"model": "other"}).status_code == 404


def test_metrics_are_prometheus_text(url):
    post(url, {"seed": 1, "max_tokens": 4})
    post(url, b"{")
    text = httpx.get(f"{url}/metrics").text
    assert 'sbd_requests_total{status="200"}' in text
    assert 'sbd_requests_total{status="400"}' in text
    for name in ("sbd_queue_depth", "sbd_batch_rows_bucket", "sbd_completed_tokens_total",
                 "sbd_request_latency_seconds_bucket"):  # fmt: skip
        assert name in text


# --------------------------------------------------------------------------- errors
BAD = [
    (b"{not json", "body", "not valid JSON"),
    (b"[1, 2]", "body", "JSON object"),
    ({"max_tokens": 40}, "max_tokens", "length limit 32"),
    ({"max_tokens": 0}, "max_tokens", ""),
    ({"sbd": {"gammas": 1.5}}, "sbd.gammas", ""),
    ({"sbd": {"gammas": [0.2, -0.1], "stages": "4,8,full"}}, "sbd.gammas", ""),
    ({"sbd": {"strategy": "loudest"}}, "sbd.strategy", "loudest"),
    ({"n": 5}, "n", "<= 4"),
    ({"seed": "7"}, "seed", ""),
    ({"seed": 1.5}, "seed", ""),
    ({"temperature": 0}, "temperature", ""),
    ({"sbd": {"stages": "4,three"}}, "sbd.stages", ""),
    ({"sbd": {"colour": "red"}}, "sbd.colour", "unknown field"),
    ({"prompt": "w1 zz"}, "prompt", ""),
    ({"stop": ["a", "b", "c", "d", "e"]}, "stop", ""),
    ({"logprobs": 3}, "logprobs", ""),
]


@pytest.mark.parametrize(("body", "param", "words"), BAD, ids=[b[1] for b in BAD])
def test_a_bad_request_is_a_400_naming_its_field(url, body, param, words):
    resp = post(url, body)
    assert resp.status_code == 400, resp.text
    err = resp.json()["error"]
    assert err["type"] == "invalid_request_error"
    assert err["param"] == param
    assert words in err["message"]


def test_a_body_over_the_limit_is_a_413(url):
    resp = post(url, {"prompt": "w1 " * 2000})
    assert resp.status_code == 413
    assert resp.json()["error"]["code"] == "request_too_large"


def test_the_api_key_guards_every_route_but_health(ref):
    with live_server(create_app(ref, Settings(api_key="s3cret"))) as base:
        assert httpx.get(f"{base}/health").status_code == 200
        for path in ("/", "/v1/models", "/metrics", "/v1/nothing"):
            resp = httpx.get(f"{base}{path}")
            assert resp.status_code == 401, path
            assert resp.json()["error"]["code"] == "invalid_api_key"
        wrong = {"Authorization": "Bearer nope"}
        assert post(base, {"max_tokens": 2}, headers=wrong).status_code == 401
        right = {"Authorization": "Bearer s3cret"}
        assert post(base, {"max_tokens": 2}, headers=right).status_code == 200
        assert httpx.get(f"{base}/v1/models", headers=right).status_code == 200


def test_a_full_queue_answers_429_with_retry_after(ref):
    """The worker is held inside a batch, so the queue's content is known: a request
    beyond its rows is refused, and answered once the queue drains."""
    app = create_app(ref, Settings(max_batch=1, max_queue=2))
    batcher = app.state.server.batcher
    with live_server(app) as base, held_worker(app) as release:
        threads = [threading.Thread(target=post, args=(base, {"max_tokens": 2}))
                   for _ in range(3)]  # fmt: skip
        for k, t in enumerate(threads, start=1):
            t.start()
            wait_for(lambda k=k: batcher.depth + len(batcher._running) == k)
        resp = post(base, {"max_tokens": 2})
        assert resp.status_code == 429
        assert resp.headers["retry-after"].isdigit()
        assert resp.json()["error"]["code"] == "queue_full"
        release.set()
        for t in threads:
            t.join(60)
        assert post(base, {"max_tokens": 2}).status_code == 200


# --------------------------------------------------------------------------- records
def test_a_seeded_request_returns_the_record_sbd_generate_writes(url, workdir, monkeypatch):
    monkeypatch.chdir(workdir)
    options = {"stages": "4,8,full", "gammas": [0.25, 0.5], "strategy": "posthoc"}
    body = {"prompt": "w1 w2", "seed": 11, "n": 2, "max_tokens": 12, "top_p": 1.0, "sbd": options}
    resp = post(url, body)
    assert resp.status_code == 200, resp.text
    out = resp.json()
    argv = ["-n", "2", "--length", "15", "--top-p", "1", "--stages", "4,8,full",
            "--gammas", "0.25,0.5", "--strategy", "posthoc"]  # fmt: skip
    expected = generate(workdir, "w1 w2", 11, argv)
    got = out["sbd"]["records"]
    assert [comparable(r) for r in got] == [comparable(r) for r in expected]
    assert [c["text"] for c in out["choices"]] == [r["text"][len("w1 w2 ") :] for r in expected]
    tokens = sum(len(r["tokens"]) - r["prompt_len"] for r in got)
    assert out["usage"] == {"prompt_tokens": 3, "completion_tokens": tokens,
                            "total_tokens": 3 + tokens}  # fmt: skip
    assert out["sbd"]["nfe"] == sum(r["nfe"] for r in got)


def test_a_stop_string_cuts_the_text_and_says_stop(url):
    full = post(url, {"seed": 2, "max_tokens": 10}).json()["choices"][0]
    word = full["text"].split()[3]
    cut = post(url, {"seed": 2, "max_tokens": 10, "stop": f" {word}"}).json()["choices"][0]
    assert full["finish_reason"] == "length"
    assert cut["finish_reason"] == "stop"
    assert cut["text"] == full["text"][: full["text"].find(f" {word}")]


# --------------------------------------------------------------------------- streams
def rebuild(events: list[tuple[str, str]]) -> dict[int, str]:
    """Each choice's text from the draft and revise events alone (docs/serving.md)."""
    pieces: dict[int, dict[int, str]] = {}
    for name, data in events:
        if name in ("sbd.draft", "sbd.revise"):
            ev = json.loads(data)
            row = pieces.setdefault(ev["index"], {})
            row.update(zip(ev["positions"], ev["pieces"], strict=True))
    return {i: "".join(row[p] for p in sorted(row)) for i, row in pieces.items()}


def test_the_event_stream_carries_the_draft_and_its_revisions(url):
    body = {"prompt": "w3", "seed": 5, "n": 2, "max_tokens": 16,
            "sbd": {"events": True, "gammas": 0.5}}  # fmt: skip
    events = stream(url, body)
    names = [n for n, _ in events]
    assert names[-1] == "message" and events[-1][1] == "[DONE]"
    finals = {json.loads(d)["index"]: json.loads(d) for n, d in events if n == "sbd.final"}
    assert sorted(finals) == [0, 1]
    assert rebuild(events) == {i: f["text"] for i, f in finals.items()}
    for i, final in finals.items():
        rec = final["record"]
        mine = [json.loads(d) for n, d in events if n != "message" and json.loads(d)["index"] == i]
        drafted = [p for e in mine if e["type"] == "draft" for p in e["positions"]]
        assert sorted(drafted) == list(range(rec["prompt_len"], len(rec["tokens"])))
        (remask,) = [e for e in mine if e["type"] == "remask"]
        revise = rec["stages"][-1]
        assert remask["positions"] == revise["positions"]
        revised = [e for e in mine if e["type"] == "revise"]
        assert sorted(p for e in revised for p in e["positions"]) == revise["positions"]
        for e in revised:
            for p, old, new, c in zip(e["positions"], e["old"], e["new"], e["confidence"],
                                      strict=True):  # fmt: skip
                assert old == revise["replaced"][revise["positions"].index(p)]
                assert new == rec["tokens"][p] and c == rec["confidence"][p]
    # the plain OpenAI chunks: one per choice, its final text
    chunks = [json.loads(d) for n, d in events if n == "message" and d != "[DONE]"]
    assert {c["choices"][0]["index"]: c["choices"][0]["text"] for c in chunks} == {
        i: f["text"] for i, f in finals.items()
    }


def test_the_openai_client_works_unchanged(url, workdir, monkeypatch):
    openai = pytest.importorskip("openai", reason="the dev extra (pip install -e '.[dev]')")
    client = openai.OpenAI(base_url=f"{url}/v1", api_key="unused", timeout=60, max_retries=0)
    (model,) = [m.id for m in client.models.list()]
    done = client.completions.create(model=model, prompt="w4 w4", max_tokens=9, seed=3)
    monkeypatch.chdir(workdir)
    (expected,) = generate(workdir, "w4 w4", 3, ["--length", "12"])
    assert done.choices[0].text == expected["text"][len("w4 w4 ") :]
    assert done.usage.completion_tokens == 9
    parts = client.completions.create(model=model, prompt="w4 w4", max_tokens=9, seed=3,
                                      stream=True)  # fmt: skip
    assert "".join(p.choices[0].text for p in parts if p.choices) == done.choices[0].text
    with pytest.raises(openai.BadRequestError) as info:
        client.completions.create(model=model, prompt="w1", max_tokens=99)
    assert "max_tokens" in str(info.value)


def test_a_client_that_leaves_mid_stream_frees_its_rows(ref, workdir, monkeypatch):
    """Two requests run in one batch; one client leaves after its first draft event: its
    rows leave the batch (the revise runs one row), the other's record is still the one
    `sbd generate` writes, and the metrics count a 499."""
    app = create_app(ref, Settings(max_batch=4))
    batcher = app.state.server.batcher
    seen: dict[str, Any] = {}

    def leaver(base: str) -> None:
        body = {"seed": 9, "prompt": "w1", "stream": True, "sbd": {"events": True}}
        with httpx.stream("POST", f"{base}/v1/completions", json=body, timeout=TIMEOUT) as r:
            for name, _ in sse_events(r.iter_lines()):
                seen["leaver"] = name
                break  # the client goes away

    def stayer(base: str) -> None:
        seen["stayer"] = post(base, {"seed": 9})

    with live_server(app) as base:
        with held_worker(app) as release:
            first = threading.Thread(target=post, args=(base, {"max_tokens": 1}))
            first.start()
            wait_for(lambda: len(batcher._running) == 1)
            threads = [threading.Thread(target=f, args=(base,)) for f in (leaver, stayer)]
            for k, t in enumerate(threads, start=1):
                t.start()
                wait_for(lambda k=k: batcher.depth == k)
            release.set()
            for t in [first, *threads]:
                t.join(90)
        assert seen["leaver"] == "sbd.draft"
        resp = seen["stayer"]
        assert resp.status_code == 200
        rec = resp.json()["sbd"]["records"][0]
        assert [s["batch_size"] for s in rec["stages"] if "batch_size" in s] == [2, 1]
        monkeypatch.chdir(workdir)
        (expected,) = generate(workdir, "", 9, [])
        assert comparable(rec) == comparable(expected)
        metrics = lambda: httpx.get(f"{base}/metrics").text  # noqa: E731
        wait_for(lambda: 'sbd_requests_total{status="499"} 1.0' in metrics())
        assert httpx.get(f"{base}/health").json()["queue"] == 0
