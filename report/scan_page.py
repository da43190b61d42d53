"""One self-contained HTML page from a Summary: inline style, script, SVG histograms and JPEG thumbnails."""
from __future__ import annotations

import os
import time

from clipscan.version import __version__

from .assets import CSS, JS
from .html_kit import esc, page, script_json
from .rows import RowsFile
from .summary import Histogram, Summary
from .thumbs import Thumb

MAX_MESSAGE = 300  # characters of an error message shown in the failures table


def fnum(v: float | None, digits: int = 4) -> str:
    return "" if v is None else f"{v:.{digits}f}"


def _model_section(data: RowsFile, s: Summary) -> str:
    facts = []
    model = (data.sidecar or {}).get("model")
    if model:
        sha = str(model.get("sha256") or "")
        facts += [("model", model.get("name")), ("sha256", sha), ("precision", model.get("precision")),
                  ("file", model.get("file")), ("rows written by", f"clipscan {data.sidecar.get('clipscan', '?')}")]
    else:
        facts.append(("model", "not recorded"))
    backends = ", ".join(f"{b} ({n:,} rows)" for b, n in s.by_backend.items())
    facts.append(("backend", backends))
    dl = "".join(f"<dt>{esc(k)}</dt><dd>{esc(v)}</dd>" for k, v in facts if v not in (None, ""))
    note = f'<p class="note">{esc(data.sidecar_note)}</p>' if data.sidecar_note else ""
    return f'<section id="model"><h2>Model and backend</h2><dl class="facts">{dl}</dl>{note}</section>'


def _count_table(title: str, counts: dict[str, int], total: int, css_id: str) -> str:
    if not counts:
        return ""
    top = max(counts.values())
    body = "".join(
        f'<tr class="v-{esc(k).replace(" ", "-")}"><td>{esc(k)}</td><td class="num">{n:,}</td>'
        f'<td class="num">{100 * n / total:.1f}%</td>'
        f'<td><span class="count-bar" style="width:{max(2, round(160 * n / top))}px"></span></td></tr>'
        for k, n in counts.items())
    return (f'<div><h3>{esc(title)}</h3><table class="sortable counts" id="{css_id}"><thead><tr><th>{esc(title)}</th>'
            f'<th class="num">rows</th><th class="num">share</th><th></th></tr></thead><tbody>{body}</tbody></table></div>')


def _counts_section(data: RowsFile, s: Summary) -> str:
    parts = [_count_table("verdict", s.by_verdict, s.rows, "by-verdict"),
             _count_table("error kind", s.by_error_kind, max(s.failed, 1), "by-error-kind"),
             _count_table("generator", s.by_generator, max(s.ok, 1), "by-generator")]
    if not s.failed:
        parts.append('<div><h3>error kind</h3><p class="note">no file failed</p></div>')
    skipped = ""
    if data.skipped:
        listed = "; ".join(f"line {n}: {why}" for n, why in data.problems)
        more = f" (first {len(data.problems)} listed)" if data.skipped > len(data.problems) else ""
        skipped = (f'<p class="note warn" id="skipped">{data.skipped:,} line(s) of the rows file were not rows and '
                   f'were skipped{more}: {esc(listed)}</p>')
    return (f'<section id="counts"><h2>Counts</h2><p class="note">{s.rows:,} rows: {s.ok:,} scanned, {s.failed:,} '
            f'failed</p><div class="flex">{"".join(parts)}</div>{skipped}</section>')


def histogram_svg(h: Histogram, width: int = 520, height: int = 190) -> str:
    """Bars of equal-width bins, the count of each in its tooltip; axes labelled with the range and the peak."""
    left, right, top, bottom = 44, 8, 10, 28
    plot_w, plot_h = width - left - right, height - top - bottom
    peak = max(h.counts) or 1
    n = len(h.counts)
    bw = plot_w / n
    bars = []
    for i, c in enumerate(h.counts):
        bh = plot_h * c / peak
        bars.append(f'<rect class="bar" x="{left + i * bw + 1:.1f}" y="{top + plot_h - bh:.1f}" width="{bw - 2:.1f}" '
                    f'height="{bh:.1f}" data-count="{c}"><title>{h.edges[i]:.3g} to {h.edges[i + 1]:.3g}: '
                    f'{c:,} image(s)</title></rect>')
    ticks = "".join(
        f'<text x="{left + plot_w * f:.1f}" y="{height - 10}" text-anchor="middle">'
        f'{h.edges[0] + (h.edges[-1] - h.edges[0]) * f:.3g}</text>' for f in (0, 0.25, 0.5, 0.75, 1))
    axes = (f'<line x1="{left}" y1="{top + plot_h}" x2="{left + plot_w}" y2="{top + plot_h}" stroke="#889"/>'
            f'<line x1="{left}" y1="{top}" x2="{left}" y2="{top + plot_h}" stroke="#889"/>'
            f'<text x="{left - 6}" y="{top + 8}" text-anchor="end">{peak:,}</text>'
            f'<text x="{left - 6}" y="{top + plot_h}" text-anchor="end">0</text>')
    return (f'<figure class="histogram" id="hist-{esc(h.name)}"><figcaption><b>{esc(h.name)}</b> '
            f'<span class="note">({h.total:,} images, {n} bins)</span></figcaption>'
            f'<svg class="hist" width="{width}" height="{height}" viewBox="0 0 {width} {height}" role="img" '
            f'aria-label="histogram of {esc(h.name)}">{axes}{"".join(bars)}{ticks}</svg></figure>')


def _histogram_section(s: Summary) -> str:
    if not s.histograms:
        return ('<section id="histograms"><h2>Scores</h2><p class="note">no row has a p_generated or quality '
                'score</p></section>')
    return (f'<section id="histograms"><h2>Scores</h2><div class="flex">'
            f'{"".join(histogram_svg(h) for h in s.histograms)}</div></section>')


def _heads_section(s: Summary) -> str:
    """Every head's own answers: its verdict and generator counts and the histogram of its p_generated or score
    (the rows' `heads`; the counts above are the rows' own decision)."""
    if not s.heads:
        return ""
    blocks = []
    for h in s.heads:
        key = esc(h.name)
        parts = [_count_table(f"{h.name}: verdict", h.by_verdict, max(sum(h.by_verdict.values()), 1),
                              f"by-verdict-{key}"),
                 _count_table(f"{h.name}: generator", h.by_generator, max(sum(h.by_verdict.values()), 1),
                              f"by-generator-{key}")]
        if h.histogram is not None:
            parts.append(histogram_svg(h.histogram))
        blocks.append(f'<div class="head-answers" data-head="{key}"><h3>{key}</h3><div class="flex">'
                      f'{"".join(parts)}</div></div>')
    return (f'<section id="heads"><h2>Every head</h2><p class="note">each head\'s own answer over the {s.ok:,} '
            f'scanned rows (a row\'s verdict and generator above come from its deciding head)</p>'
            f'{"".join(blocks)}</section>')


def _card(r, thumb: Thumb) -> str:
    image = (f'<img class="thumb" src="{thumb.uri}" alt="{esc(os.path.basename(r.path))}">' if thumb.uri else
             f'<div class="nothumb">{esc(thumb.problem)}</div>')
    gen = f' <span class="tag">{esc(r.generator)}</span>' if r.generator else ""
    quality = f"<br>quality {fnum(r.quality, 3)}" if r.quality is not None else ""
    return (f'<figure class="card" data-p="{r.p_generated}" data-quality="{"" if r.quality is None else r.quality}" '
            f'data-path="{esc(r.path)}" data-generator="{esc(r.generator)}">{image}<figcaption>'
            f'<span class="p">{fnum(r.p_generated, 3)}</span> <span class="tag {esc(r.verdict)}">{esc(r.verdict)}</span>'
            f'{gen}{quality}<br><span class="name" title="{esc(r.path)}">{esc(r.path)}</span></figcaption></figure>')


def _top_section(s: Summary, thumbs: list[Thumb], top_n: int) -> str:
    if not s.top:
        return ('<section id="top"><h2>Most likely generated</h2><p class="note">no row has a p_generated score '
                '(a quality-only model, or every file failed)</p></section>')
    missing = sum(1 for t in thumbs if t.uri is None)
    note = (f'<p class="note warn">{missing} of {len(thumbs)} image(s) could not be shown (see each card)</p>'
            if missing else "")
    cards = "".join(_card(r, t) for r, t in zip(s.top, thumbs))
    return (f'<section id="top"><h2>Most likely generated: the top {len(s.top)} of {s.ok:,} by p_generated</h2>'
            f'<p class="note">thumbnails only for these {len(s.top)} (--top {top_n}); every row is in the table '
            f'below</p>{note}<div class="controls"><input type="search" id="top-filter" placeholder="filter by name '
            f'or generator"><label>sort <select id="top-sort"><option value="p:desc">p_generated, highest first'
            f'</option><option value="p:asc">p_generated, lowest first</option><option value="quality:desc">quality, '
            f'highest first</option><option value="quality:asc">quality, lowest first</option><option '
            f'value="path:asc">name</option></select></label><span class="note"><span id="top-shown">{len(s.top)}'
            f'</span> shown</span></div><div class="grid" id="top-grid">{cards}</div></section>')


def _failures_section(s: Summary) -> str:
    if not s.failed:
        return '<section id="failures"><h2>Failed files</h2><p class="note">none: every file was scanned</p></section>'
    rows = "".join(
        f'<tr data-kind="{esc(r.error_kind)}"><td class="path">{esc(r.path)}</td><td>{esc(r.error_kind)}</td>'
        f'<td class="msg">{esc((r.error or "")[:MAX_MESSAGE])}</td></tr>' for r in s.failures)
    kinds = "".join(f'<option value="{esc(k)}">{esc(k)} ({n:,})</option>' for k, n in s.by_error_kind.items())
    cut = (f'<p class="note">the first {len(s.failures):,} of {s.failed:,} failures are listed; the counts above '
           'cover all</p>' if len(s.failures) < s.failed else "")
    return (f'<section id="failures"><h2>Failed files ({s.failed:,})</h2>{cut}<div class="controls">'
            f'<input type="search" id="failures-filter" placeholder="filter by name or reason"><label>kind '
            f'<select id="failures-kind"><option value="">all</option>{kinds}</select></label><span class="note">'
            f'<span id="failures-shown">{len(s.failures)}</span> shown</span></div><table class="sortable" '
            f'id="failures-table"><thead><tr><th>path</th><th>error kind</th><th>reason</th></tr></thead>'
            f'<tbody>{rows}</tbody></table></section>')


def _rows_section(s: Summary) -> str:
    options = "".join(f'<option value="{esc(v)}">{esc(v)} ({n:,})</option>' for v, n in s.by_verdict.items())
    cut = ("" if s.table_complete else
           f'<p class="note warn">the table holds the {len(s.table):,} most likely generated of {s.rows:,} rows '
           f'(the page keeps under its size budget); counts and histograms cover all</p>')
    head = "".join(f'<th{" class=num" if c in ("p_generated", "quality") else ""}>{c}</th>'
                   for c in ("path", "p_generated", "verdict", "generator", "quality", "error kind"))
    head += "".join(f'<th class="head" data-head="{esc(h.name)}">{esc(h.name)}</th>' for h in s.heads)
    return (f'<section id="rows"><h2>All rows</h2>{cut}<div class="controls"><input type="search" id="rows-filter" '
            f'placeholder="filter by name, generator or error kind"><label>verdict <select id="rows-verdict">'
            f'<option value="">all</option>{options}</select></label></div><table id="rows-table"><thead><tr>{head}'
            f'</tr></thead><tbody></tbody></table><div class="pager"><button id="rows-prev">previous</button>'
            f'<span id="rows-range"></span><button id="rows-next">next</button></div></section>')


def render(data: RowsFile, s: Summary, thumbs: list[Thumb], *, top_n: int, title: str | None = None) -> str:
    name = os.path.basename(data.path)
    title = title or f"clipscan report: {name}"
    when = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    verdicts = ", ".join(f"{n:,} {v}" for v, n in s.by_verdict.items())
    return page(title, f'<header><h1>{esc(title)}</h1><p class="sub">{esc(data.path)}: {s.rows:,} rows '
                f'({esc(verdicts)}); written {when} by clipscan {__version__}</p></header>'
                f'{_model_section(data, s)}{_counts_section(data, s)}{_histogram_section(s)}{_heads_section(s)}'
                f'{_top_section(s, thumbs, top_n)}{_failures_section(s)}{_rows_section(s)}'
                f'<script type="application/json" id="rows-data">{script_json(s.table)}</script>',
                css=CSS, script=JS)

