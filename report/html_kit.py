"""The HTML toolkit of clipscan's two self-contained pages: the scan report (`clipscan report`,
clipscan.report.scan_page) and the fidelity report of `clipscan verify` and `clipscan calibrate`
(clipscan.calibration.fidelity_report).

Each page is one file that opens offline: its style inline, its images as data: URIs, its data as
JSON inside a <script type="application/json"> element. What both need is here: the page shell and
the base style, escaping text for HTML, embedding JSON so that no value can break out of its
element, data: URIs, tables and figures. Standard library only: the scan report is part of the
torch-free install.
"""
from __future__ import annotations

import base64
import html
import json

# the look both pages share; a page appends its own rules after these
BASE_CSS = """
:root { --fg: #1d2430; --muted: #5b6573; --line: #d9dee5; --bg: #f6f7f9; --gen: #c0392b; --real: #2e7d32;
        --fail: #8e44ad; --accent: #2c5d9e; }
* { box-sizing: border-box; }
body { font: 14px/1.45 system-ui, -apple-system, "Segoe UI", sans-serif; color: var(--fg); background: var(--bg);
       margin: 0; padding: 0 24px 48px; }
header { padding: 20px 0 8px; }
h1 { font-size: 22px; margin: 0 0 4px; }
h2 { font-size: 17px; margin: 0 0 10px; }
.sub, .note { color: var(--muted); }
.note { font-size: 13px; margin: 6px 0; }
.warn { color: #9a5b00; }
section { background: #fff; border: 1px solid var(--line); border-radius: 8px; padding: 16px 18px; margin: 16px 0; }
.flex { display: flex; flex-wrap: wrap; gap: 28px; align-items: flex-start; }
dl.facts { display: grid; grid-template-columns: max-content auto; gap: 4px 16px; margin: 0; }
dl.facts dt { color: var(--muted); }
dl.facts dd { margin: 0; font-family: ui-monospace, monospace; word-break: break-all; }
table { border-collapse: collapse; }
th, td { text-align: left; padding: 4px 10px; border-bottom: 1px solid var(--line); vertical-align: top; }
th { font-weight: 600; background: #fafbfc; white-space: nowrap; }
th.sort { cursor: pointer; user-select: none; }
th.sort::after { content: " \\2195"; color: #aab; }
th[aria-sort=ascending]::after { content: " \\2191"; color: var(--accent); }
th[aria-sort=descending]::after { content: " \\2193"; color: var(--accent); }
td.num, th.num { text-align: right; font-variant-numeric: tabular-nums; }
"""


def display(text: str | None) -> str:
    """Text for a page: names that are not valid UTF-8 (lone surrogates) shown with a replacement mark."""
    if text is None:
        return ""
    return text.encode("utf-8", "surrogateescape").decode("utf-8", "replace")


def esc(value) -> str:
    """Any value as HTML text or a quoted attribute value: &, <, >, " and ' escaped; None is empty."""
    return html.escape(display(value if isinstance(value, str) or value is None else str(value)))


def script_json(value) -> str:
    """`value` as JSON to place inside a <script type="application/json"> element: ASCII only (names that
    are not UTF-8 survive), no spaces, and every `<` written as the JSON escape \\u003c, so no string can
    end the element (`</script`) or switch the HTML parser into its escaped states (`<!--`, `<script`).
    JSON.parse reads it back unchanged."""
    return json.dumps(value, ensure_ascii=True, separators=(",", ":")).replace("<", "\\u003c")


def data_uri(mime: str, data: bytes) -> str:
    """A data: URI (base64) for an image embedded in the page."""
    return f"data:{mime};base64," + base64.b64encode(data).decode("ascii")


def page(title: str, body: str, *, css: str = "", script: str = "") -> str:
    """The whole document: doctype, UTF-8, viewport, the title, BASE_CSS followed by the page's own `css`,
    the `body` (HTML), and the page's own `script` (JavaScript) last."""
    tail = f"<script>{script}</script>" if script else ""
    return (f'<!doctype html><html lang="en"><head><meta charset="utf-8"><meta name="viewport" '
            f'content="width=device-width, initial-scale=1"><title>{esc(title)}</title>'
            f"<style>{BASE_CSS}{css}</style></head><body>{body}{tail}</body></html>")


def table(headers, rows, *, num_cols=(), attrs: str = "") -> str:
    """A table of text cells. A cell given as (text, css class) gets that class; columns in `num_cols` are
    right-aligned numbers; `attrs` (already escaped) go on the <table> element."""
    head = "".join(f'<th{" class=num" if i in num_cols else ""}>{esc(h)}</th>' for i, h in enumerate(headers))
    body = []
    for r in rows:
        cells = []
        for i, c in enumerate(r):
            if isinstance(c, tuple):
                cells.append(f'<td class="{esc(c[1])}">{esc(c[0])}</td>')
            else:
                cells.append(f'<td{" class=num" if i in num_cols else ""}>{esc(c)}</td>')
        body.append("<tr>" + "".join(cells) + "</tr>")
    space = " " if attrs else ""
    return f"<table{space}{attrs}><thead><tr>{head}</tr></thead><tbody>{''.join(body)}</tbody></table>"


def figure(content: str, caption: str, *, attrs: str = "") -> str:
    """A <figure>: `content` is HTML (an <img>, an <svg>), `caption` HTML for its <figcaption>."""
    space = " " if attrs else ""
    return f"<figure{space}{attrs}>{content}<figcaption>{caption}</figcaption></figure>"


def image(uri: str, alt: str, *, css_class: str = "") -> str:
    """An <img> of a data: URI."""
    cls = f' class="{esc(css_class)}"' if css_class else ""
    return f'<img{cls} src="{esc(uri)}" alt="{esc(alt)}">'
