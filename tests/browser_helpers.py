"""The headless Chromium the browser tests drive through Playwright: Debian's binary and
the flags that keep it offline and quiet. Not a test module; a test that needs no browser
never imports it."""

from __future__ import annotations

import os
import shutil

import pytest

CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
"""Launch flags (Playwright adds --headless): no sandbox in containers, no background traffic."""


def chromium() -> str:
    """The Chromium executable, or a skip with the reason when the machine has none."""
    for name in ("chromium", "chromium-browser"):
        path = shutil.which(name)
        if path:
            return path
    if os.access("/usr/bin/chromium", os.X_OK):
        return "/usr/bin/chromium"
    pytest.skip("no Chromium binary on PATH (apt-get install chromium; .ci/run does)")
