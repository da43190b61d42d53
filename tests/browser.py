"""A real headless browser for the tests: Debian's chromium driven by Playwright (the PyPI package, which
brings its driver but no browser; `.ci/run` installs chromium with apt). Used by the service's upload page
and the scan report tests."""
from __future__ import annotations

import contextlib
import os
import shutil

import pytest

CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync"]


def chromium_path() -> str:
    """The chromium binary: $CLIPSCAN_TEST_CHROMIUM, else chromium on PATH. A test that needs it fails
    with how to install it; in CI (CI=true) it never skips."""
    path = os.environ.get("CLIPSCAN_TEST_CHROMIUM") or shutil.which("chromium") or shutil.which("chromium-browser")
    if not path:
        msg = "no chromium binary: install Debian's chromium (apt-get install -y chromium) or set CLIPSCAN_TEST_CHROMIUM"
        if os.environ.get("CI"):
            pytest.fail(msg)
        pytest.skip(msg)
    return path


@contextlib.contextmanager
def browser_page(viewport=(1280, 900)):
    """A fresh page in a fresh headless chromium (closed afterwards)."""
    from playwright.sync_api import sync_playwright

    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=chromium_path(), args=CHROMIUM_FLAGS, headless=True)
        try:
            page = browser.new_page(viewport={"width": viewport[0], "height": viewport[1]})
            yield page
        finally:
            browser.close()
