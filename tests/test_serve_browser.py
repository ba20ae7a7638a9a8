"""The playground (`GET /`) in a real headless browser: Chromium driven by Playwright.

A person's run: type a prompt, pick stages, gamma and a seed, press Generate; the page
shows the draft token by token coloured by confidence and the revisions (old tokens
struck through), with no console error and no request outside the server, and the final
text on the page equals the stream's final event. Skips with the reason when the
`playwright` package or a Chromium binary is absent (`playwright install` is never needed).
"""

from __future__ import annotations

import json

import httpx
import pytest

pytest.importorskip("fastapi", reason="the serve extra (pip install 'sbdcli[serve]')")
pytest.importorskip(
    "playwright.sync_api", reason="the playwright package is not installed (pip install -e .[dev])"
)

from playwright import sync_api

from browser_helpers import CHROMIUM_ARGS, chromium
from fake_model import one_thread  # noqa: F401 (autouse fixture)
from sbdcli import pipeline as pl
from sbdcli.serve import Settings, create_app
from serve_helpers import live_server, make_run, sse_events


def test_the_playground_shows_the_draft_and_its_revisions(tmp_path):
    exe = chromium()
    make_run(tmp_path)
    ref = pl.load_model_ref(str(tmp_path / "runs" / "latest"))
    with live_server(create_app(ref, Settings())) as url, sync_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=exe, args=CHROMIUM_ARGS)
        try:
            tab = browser.new_page()
            errors: list[str] = []
            tab.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
            tab.on("pageerror", lambda e: errors.append(str(e)))
            tab.on("request", lambda r: None if r.url.startswith(url) else
                   errors.append(f"request {r.url}"))  # fmt: skip
            tab.goto(f"{url}/")
            tab.fill("#prompt", "w1 w2")
            tab.fill("#stages", "4,8,full")
            tab.fill("#gammas", "0.5,0.25")
            tab.fill("#max_tokens", "20")
            tab.fill("#seed", "3")
            with tab.expect_response(f"{url}/v1/completions", timeout=180_000) as answer:
                tab.click("#run")
            tab.wait_for_selector('#final[data-done="true"]', timeout=180_000)
            sent = answer.value.request.post_data or ""
            shown = tab.inner_text("#final")
            cells = tab.locator("#tokens .tok").count()
            struck = tab.locator("#tokens .tok s").count()
            masked = tab.locator("#tokens .tok.masked").count()
            revised = tab.locator("#tokens .tok.revised").count()
            status = tab.inner_text("#status")
            colours = tab.eval_on_selector_all(
                "#tokens .tok", "els => els.map(e => e.style.background)"
            )
        finally:
            browser.close()
        # the page's own request, replayed (it is seeded): a streamed body cannot be read
        # back from the browser reliably once the page has consumed it
        assert '"seed":3' in sent.replace(" ", ""), sent
        reply = httpx.post(f"{url}/v1/completions", content=sent, timeout=180,
                           headers={"Content-Type": "application/json"})  # fmt: skip
        assert reply.status_code == 200, reply.text
        body = reply.text
    events = [(n, json.loads(d)) for n, d in sse_events(iter(body.splitlines())) if n != "message"]
    (final,) = [e for n, e in events if n == "sbd.final"]
    assert errors == []
    assert shown == final["text"]
    assert status.startswith("done:")
    assert cells == 20 and masked == 0  # every completion position; every remask revised
    rec = final["record"]
    revise = [s for s in rec["stages"] if s["name"] == "revise"]
    assert revised == len({p for s in revise for p in s["positions"]})
    last: dict[int, bool] = {}  # position -> whether its last revision changed it
    for n, e in events:
        if n == "sbd.revise":
            last.update((p, o != w) for p, o, w in zip(e["positions"], e["old"], e["new"],
                                                       strict=True))  # fmt: skip
    assert struck == sum(last.values()) > 0
    assert all(c.startswith("rgb(") for c in colours)
