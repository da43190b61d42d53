"""The upload page in a real headless chromium (Debian's, driven by Playwright): real photos and a broken
file go through the page's file chooser; each card shows its verdict, p_generated bar and quality, or its
error; the screenshot is saved and is not blank. With a token set, the page still loads in the browser
(it is public and names no model), and its script sends the token the user types."""
from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

from clipscan.runtime.scanner import Scanner
from clipscan.serve import Limits, ServiceState

from .browser import browser_page
from .serve_servers import request, sample_files, thread_server

pytestmark = pytest.mark.slow


def test_upload_page_shows_verdicts_and_errors(tmp_path):
    broken = tmp_path / "broken.jpg"
    broken.write_bytes(sample_files()[0].read_bytes()[:600])
    text = tmp_path / "notes.png"
    text.write_bytes(b"this is not an image\n")
    photos = sample_files()
    with Scanner() as scanner, thread_server(ServiceState(scanner, Limits())) as url:
        expected = {p.name: json.loads(request(url + f"/v1/scan?name={p.name}", p.read_bytes(),
                                               {"Content-Type": "image/jpeg"})[2])[0] for p in photos}
        with browser_page() as page:
            asked = []
            page.on("request", lambda r: asked.append(r.url))
            page.goto(url + "/")
            assert "clipscan-demo" in page.content()
            page.set_input_files("#files", [str(p) for p in photos] + [str(broken), str(text)])
            page.wait_for_function(f"document.querySelectorAll('.card[data-verdict]').length == {len(photos) + 2}",
                                   timeout=30000)
            page.wait_for_function("Array.from(document.images).every(i => i.complete)", timeout=10000)
            for p in photos:
                card = page.locator(f'.card[data-name="{p.name}"]')
                assert card.get_attribute("data-verdict") == expected[p.name]["verdict"]
                text = card.inner_text()
                assert f"p_generated {expected[p.name]['p_generated']:.3f}" in text
                assert f"quality {expected[p.name]['quality']:.2f}" in text
                width = card.locator(".bar > div").evaluate("e => e.style.width")
                assert float(width.rstrip("%")) == pytest.approx(100 * expected[p.name]["p_generated"], abs=0.1)
            bad = page.locator('.card[data-name="broken.jpg"]')
            want = scanner.scan_bytes(broken.read_bytes()).error
            assert bad.get_attribute("data-verdict") == "error" and f"error: {want}" in bad.inner_text()
            # no broken-image icon for a file the browser cannot show, and no request for a missing favicon
            not_image = page.locator('.card[data-name="notes.png"]')
            assert not_image.get_attribute("data-verdict") == "error"
            assert not_image.locator("img").count() == 0 and not_image.locator(".noimg").inner_text() == "no preview"
            assert not [u for u in asked if "favicon" in u], asked
            shot = tmp_path / "upload-page.png"
            page.screenshot(path=str(shot), full_page=True)
    pixels = np.asarray(Image.open(shot).convert("RGB"))
    assert pixels.std() > 20 and len(np.unique(pixels.reshape(-1, 3), axis=0)) > 500, "the screenshot looks blank"


def test_with_a_token_the_page_loads_and_sends_the_typed_token(tmp_path):
    photo = sample_files()[0]
    with Scanner() as scanner, thread_server(ServiceState(scanner, Limits(), token="s3cret")) as url:
        want = scanner.scan_bytes(photo.read_bytes())
        with browser_page() as page:
            response = page.goto(url + "/")
            assert response.status == 200 and "clipscan-demo" not in page.content()
            page.set_input_files("#files", [str(photo)])  # no token typed: the API refuses
            page.wait_for_function("document.querySelectorAll('.card[data-verdict]').length == 1", timeout=30000)
            assert "bearer token" in page.locator(".card").inner_text()
            page.fill("#token", "s3cret")
            page.set_input_files("#files", [str(photo)])
            page.wait_for_function("document.querySelectorAll('.card[data-verdict]').length == 2", timeout=30000)
            card = page.locator(".card").nth(1)
            assert card.get_attribute("data-verdict") == want.verdict
            assert f"p_generated {want.p_generated:.3f}" in card.inner_text()
