"""The HTML report in a real headless browser: Chromium driven by Playwright.

The page loads with no console error, the table has one row per summary, a record view
shows its masked and changed positions, and hovering a token shows its confidence. Skips
with the reason when the `playwright` package or a Chromium binary is absent (.ci/run
installs Chromium from the system's packages; `playwright install` is never needed).
"""

from __future__ import annotations

import pytest

from browser_helpers import CHROMIUM_ARGS, chromium
from fake_model import one_thread  # noqa: F401 (autouse fixture)
from report_helpers import FILES, make_report, read_jsonl

sync_api = pytest.importorskip(
    "playwright.sync_api", reason="the playwright package is not installed (pip install -e .[dev])"
)


@pytest.fixture(scope="module")
def page(tmp_path_factory):
    exe = chromium()
    root = tmp_path_factory.mktemp("browser")
    report = make_report(root, root / "report.html")
    with sync_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=exe, args=CHROMIUM_ARGS)
        tab = browser.new_page()
        errors: list[str] = []
        tab.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
        tab.on("pageerror", lambda e: errors.append(str(e)))
        tab.on("request", lambda r: errors.append(f"request {r.url}") if not
               r.url.startswith("file:") else None)  # fmt: skip
        tab.goto(report.resolve().as_uri())
        yield root, tab, errors
        browser.close()


def test_loads_without_console_errors_or_requests(page):
    _, tab, errors = page
    assert tab.title() == "sbd report: example on a tiny synthetic language"
    assert errors == []


def test_table_has_the_summary_rows(page):
    root, tab, _ = page
    summaries = read_jsonl(root / FILES["summaries"])
    rows = tab.locator("#summary tr.row")
    assert rows.count() == len(summaries)
    assert [rows.nth(i).locator("td").nth(1).inner_text() for i in range(rows.count())] == [
        s["name"] for s in summaries
    ]


def test_record_view_shows_the_marked_positions(page):
    root, tab, _ = page
    rec = read_jsonl(root / FILES["remask"])[0]
    view = tab.locator(f'section:has(h3:text-matches("^{FILES["remask"]}")) details.record').first
    assert view.get_attribute("data-id") == rec["id"]
    marked = view.locator(".t.m")
    assert [int(marked.nth(i).get_attribute("data-pos")) for i in range(marked.count())] == (
        rec["masked"]
    )
    assert marked.first.is_visible()
    style = marked.first.evaluate("e => getComputedStyle(e).textDecorationLine")
    assert "underline" in style
    revised = tab.locator(f'section:has(h3:text-matches("^{FILES["revise"]}")) details.record')
    first = revised.first
    assert first.locator("del.d").count() == first.locator(".t.x").count()


def test_hovering_a_token_shows_its_confidence(page):
    root, tab, _ = page
    rec = read_jsonl(root / FILES["remask"])[0]
    view = tab.locator(f'section:has(h3:text-matches("^{FILES["remask"]}")) details.record').first
    tip = tab.locator("#tip")
    assert not tip.is_visible()
    view.locator('.t[data-pos="2"]').hover()
    assert tip.is_visible()
    text = tip.inner_text()
    assert f"confidence {rec['confidence'][2]:.3f}" in text
    assert f"id {rec['tokens'][2]}" in text and "stage 1 draft" in text
    tab.mouse.move(0, 0)
    assert not tip.is_visible()
