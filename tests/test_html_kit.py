"""The HTML toolkit both self-contained pages use (the scan report and the fidelity report of verify and
calibrate): embedded JSON that no value can break out of, read back in a real headless Chromium; escaping;
the page shell with the shared style first."""
from __future__ import annotations

import json

from clipscan.report.html_kit import BASE_CSS, data_uri, esc, page, script_json, table

from .browser import browser_page

HOSTILE = ["</script><script>window.pwned = 1</script>", "<!--<script>", "</SCRIPT >", "a\u2028b\u2029c",
           "caf\u00e9 \U0001f600", "&lt; & <b>", "\udcff name that is not UTF-8"]


def test_embedded_json_has_no_lt_and_reads_back_unchanged():
    text = script_json(HOSTILE)
    assert "<" not in text and text.isascii()
    assert json.loads(text) == HOSTILE


def test_escaping_covers_text_attributes_numbers_and_none():
    assert esc('<a href="x">\'&') == "&lt;a href=&quot;x&quot;&gt;&#x27;&amp;"
    assert esc(None) == "" and esc(0.5) == "0.5"
    assert esc("\udcff.jpg") == "\ufffd.jpg"
    t = table(["name", "n"], [("<img>", 3), (("FAIL", "FAIL"), None)], num_cols=(1,))
    assert "&lt;img&gt;" in t and '<td class="FAIL">FAIL</td>' in t and "<td class=num>3</td>" in t


def test_a_page_keeps_its_data_in_a_real_browser(tmp_path):
    """Every hostile string goes into the page's JSON element and comes back from JSON.parse as written;
    none of them ends the element or runs a script; the shared style comes before the page's own."""
    body = (f'<h1 id="h">{esc(HOSTILE[0])}</h1><img id="i" src="{data_uri("image/gif", GIF)}" alt="">'
            f'<script type="application/json" id="data">{script_json(HOSTILE)}</script>')
    html = page("<title> & more", body, css="h1 { color: rgb(1, 2, 3); }",
                script="document.body.dataset.ready = '1';")
    assert html.index(BASE_CSS) < html.index("h1 { color: rgb(1, 2, 3); }")
    path = tmp_path / "page.html"
    path.write_text(html, encoding="utf-8")
    with browser_page() as p:
        p.goto(path.as_uri())
        p.wait_for_selector("body[data-ready='1']", timeout=30_000)
        got = p.evaluate("JSON.parse(document.getElementById('data').textContent)")
        assert got[:6] == HOSTILE[:6] and got[6].endswith(" name that is not UTF-8")
        assert p.evaluate("window.pwned") is None
        assert p.evaluate("document.querySelectorAll('script').length") == 2
        assert p.title() == "<title> & more"
        assert p.eval_on_selector("#h", "e => e.textContent") == HOSTILE[0]
        assert p.eval_on_selector("#h", "e => getComputedStyle(e).color") == "rgb(1, 2, 3)"
        assert p.eval_on_selector("#i", "e => e.naturalWidth") == 1


# a 1x1 transparent GIF
GIF = bytes.fromhex("47494638396101000100800000000000ffffff21f90401000000002c00000000010001000002024401003b")


def test_the_scan_report_is_built_with_the_toolkit(tmp_path):
    """A real `build_report` page: the shared style, and a row whose path tries to end the rows' JSON element
    shown as text in the rows table, with no script run."""
    from clipscan.report import build_report

    rows = tmp_path / "rows.jsonl"
    rows.write_text("\n".join(json.dumps(r) for r in [
        {"path": HOSTILE[0], "p_generated": 0.9, "verdict": "generated", "backend": "onnxruntime-cpu"},
        {"path": "<!--<script>.png", "error": "not_an_image: no", "backend": "onnxruntime-cpu"},
    ]) + "\n")
    build_report(rows, tmp_path / "r.html")
    text = (tmp_path / "r.html").read_text(encoding="utf-8")
    assert BASE_CSS in text and text.count("</script>") == 2
    with browser_page() as p:
        p.goto((tmp_path / "r.html").as_uri())
        p.wait_for_selector("body[data-ready='1']", timeout=30_000)
        cells = p.eval_on_selector_all("#rows-table tbody tr td:first-child", "tds => tds.map(t => t.textContent)")
        assert sorted(cells) == sorted([HOSTILE[0], "<!--<script>.png"])
        assert p.evaluate("window.pwned") is None
