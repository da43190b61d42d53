"""Write the fidelity report of verify and calibrate: report.json (every number) and report.html (one
self-contained page, built with the scan report's HTML toolkit, clipscan.report.html_kit).

Plots are drawn with matplotlib's Agg canvas (no pyplot, no display) and embedded as PNG data: URIs;
without matplotlib the page is written without them and says so.
"""
from __future__ import annotations

import io
import json
import math
from pathlib import Path

from clipscan.report.html_kit import data_uri, esc, figure, image, page, table
from clipscan.runtime.atomic import write_text

from .fidelity_gates import Gate

JSON_NAME = "report.json"
HTML_NAME = "report.html"


def write_report(report, report_dir) -> tuple[Path, Path]:
    d = Path(report_dir)
    d.mkdir(parents=True, exist_ok=True)
    json_path, html_path = d / JSON_NAME, d / HTML_NAME
    write_text(json_path, json.dumps(report.to_dict(), indent=1, allow_nan=False))
    write_text(html_path, render_html(report))
    report.json_path, report.html_path = json_path, html_path
    return json_path, html_path


# -- text ----------------------------------------------------------------------------------------

def fmt(v) -> str:
    if v is None:
        return "-"
    if isinstance(v, bool):
        return str(v).lower()
    if isinstance(v, int):
        return str(v)
    if isinstance(v, float):
        if math.isnan(v):
            return "nan"
        if math.isinf(v):
            return "inf" if v > 0 else "-inf"
        if v == 1.0:
            return "1"
        if 0.9 <= v < 1.0:
            return f"1 - {1.0 - v:.2g}" if 1.0 - v < 1e-6 else f"{v:.7f}".rstrip("0")
        return f"{v:.4g}"
    return str(v)


def _bar(g: Gate) -> str:
    return "" if g.threshold is None else f"{g.op} {fmt(g.threshold)}"


def summary_table(report) -> str:
    """The short table `clipscan verify` prints."""
    m = report.metrics
    rows = [(g.name, fmt(g.value), _bar(g), g.status) for g in report.gates]
    widths = [max(len(r[i]) for r in rows + [("gate", "value", "bar", "result")]) for i in range(4)]
    line = "  ".join("{:<%d}" % w for w in widths)
    out = [f"verify {report.manifest_name} ({report.precision}) sha256 {report.sha256[:16]}...: "
           f"{m['n_images'] if 'n_images' in m else len(report.rows)} image(s) compared, "
           f"{len(report.failed_files)} file(s) could not be decoded",
           line.format("gate", "value", "bar", "result")]
    out += [line.format(*r) for r in rows]
    failed = report.failed_gates()
    if failed:
        out.append(f"FAIL: {len(failed)} gate(s) failed: {', '.join(g.name for g in failed)}")
        for g in failed:
            if g.note:
                out.append(f"  {g.name}: {g.note}")
    else:
        out.append("PASS: every gate passed")
    if report.html_path is not None:
        out.append(f"report: {report.html_path} and {report.json_path}")
    return "\n".join(out)


# -- plots -----------------------------------------------------------------------------------------

def _figure(w=5.2, h=3.6):
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(w, h), dpi=100)
    FigureCanvasAgg(fig)
    return fig


def _png(fig) -> str:
    """The figure as a PNG data: URI."""
    buf = io.BytesIO()
    fig.tight_layout()
    fig.savefig(buf, format="png")
    return data_uri("image/png", buf.getvalue())


def _finite(values):
    return [v for v in values if v is not None and math.isfinite(v)]


FLOOR = 1e-16  # 1 - cosine below this is drawn at it (float64 rounding)


def plot_cosine(report) -> str:
    """Histogram of the per-image cosine, drawn as 1 - cosine on a log axis (near 1 a linear axis shows one bar)."""
    import numpy as np

    data = report.plots_data
    series = [("clean", _finite(data["clean"]["cosine"]))]
    series += [(name, _finite(v["cosine"])) for name, v in data["laundered"].items()]
    bars = report.settings.get("bars", {})
    lines = [(key, bars[key]) for key in ("cosine_mean", "cosine_worst") if bars.get(key) is not None]
    gaps = [max(1.0 - c, FLOOR) for _, vals in series for c in vals] + [1.0 - b for _, b in lines]
    fig = _figure()
    ax = fig.add_subplot()
    if gaps:
        lo, hi = math.log10(min(gaps)), math.log10(max(gaps))
        edges = np.logspace(lo - 0.25, hi + 0.25, 31)
        for i, (name, vals) in enumerate(series):
            if not vals:
                continue
            d = [max(1.0 - c, FLOOR) for c in vals]
            if i == 0:
                ax.hist(d, bins=edges, color="#4477aa", alpha=0.8, label=f"clean ({len(vals)})")
            else:
                ax.hist(d, bins=edges, histtype="step", linewidth=1.2, label=name)
        ax.set_xscale("log")
    for (key, b), style in zip(lines, ("--", ":")):
        ax.axvline(1.0 - b, color="#cc3311", linestyle=style, label=f"{key.replace('_', ' ')} bar: cosine {b}")
    ax.set_xlabel("1 - cosine, exported vs reference (log scale; left = closer)")
    ax.set_ylabel("images")
    ax.set_title("Per-image embedding cosine")
    ax.legend(fontsize=7)
    return _png(fig)


def plot_decision(name: str, d: dict) -> str:
    fig = _figure()
    ax = fig.add_subplot()
    ref, exp, flip = d["ref"], d["exp"], d["flip"]
    keep = [i for i in range(len(ref)) if flip[i]]
    same = [i for i in range(len(ref)) if not flip[i]]
    ax.scatter([ref[i] for i in same], [exp[i] for i in same], s=12, color="#4477aa", label="same decision")
    if keep:
        ax.scatter([ref[i] for i in keep], [exp[i] for i in keep], s=22, color="#cc3311", marker="x",
                   label=f"flipped ({len(keep)})")
    if ref:
        lo, hi = min(ref + exp), max(ref + exp)
        ax.plot([lo, hi], [lo, hi], color="#999999", linewidth=0.8, label="y = x")
    t_ref, t_dep = d["ref_threshold_logit"], d["deployed_threshold_logit"]
    if t_ref is not None and math.isfinite(t_ref):
        ax.axvline(t_ref, color="#228833", linestyle="--", linewidth=1, label=f"reference threshold (logit {t_ref:.3g})")
        margin = d.get("margin")
        if margin:
            ax.axvspan(t_ref - margin, t_ref + margin, color="#228833", alpha=0.08, label=f"margin +-{margin}")
    if t_dep is not None and math.isfinite(t_dep):
        ax.axhline(t_dep, color="#ee7733", linestyle=":", linewidth=1.2, label=f"deployed threshold (logit {t_dep:.3g})")
    ax.set_xlabel("reference logit (PyTorch FP32)")
    ax.set_ylabel("exported logit")
    ax.set_title(f"Detector '{name}': exported vs reference")
    ax.legend(fontsize=7)
    return _png(fig)


def plot_quality(name: str, d: dict) -> str:
    fig = _figure()
    ax = fig.add_subplot()
    ax.scatter(d["ref"], d["exp"], s=12, color="#4477aa")
    if d["ref"]:
        lo, hi = min(d["ref"] + d["exp"]), max(d["ref"] + d["exp"])
        ax.plot([lo, hi], [lo, hi], color="#999999", linewidth=0.8, label="y = x")
        ax.legend(fontsize=7)
    ax.set_xlabel("reference quality (PyTorch FP32)")
    ax.set_ylabel("exported quality")
    ax.set_title(f"Quality '{name}': exported vs reference")
    return _png(fig)


def plots(report) -> tuple[list[tuple[str, str]], str]:
    """[(caption, PNG data: URI)], and a note when plots could not be drawn."""
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        return [], "plots need matplotlib (pip install 'clipscan[export]')"
    out = [("Histogram of the per-image embedding cosine (clean images filled, laundered copies as outlines).",
            plot_cosine(report))]
    margin = report.settings.get("margin")
    for name, d in report.plots_data["clean"]["heads"].items():
        if d["task"] == "quality":
            out.append((f"Quality head {name}: exported vs reference score per image.", plot_quality(name, d)))
        else:
            out.append((f"Decision head {name}: exported vs reference logit; a point whose decision differs is "
                        "a red cross. The shaded band is the margin around the threshold's logit.",
                        plot_decision(name, {**d, "margin": margin})))
    return out, ""


# -- HTML -------------------------------------------------------------------------------------------

# this page's rules, after the toolkit's BASE_CSS: gate results, the verdict, the plots
CSS = """
.PASS { background: #d9f2d9; color: #135e13; font-weight: 600; }
.FAIL { background: #f9d6d5; color: #8c1b13; font-weight: 600; }
.NA { background: #eeeeee; color: var(--muted); }
.verdict { font-size: 18px; padding: 6px 14px; display: inline-block; border-radius: 4px; }
figure.plot { display: inline-block; margin: 8px 16px 8px 0; max-width: 540px; vertical-align: top; }
figure.plot img { max-width: 100%; }
figure.plot figcaption { font-size: 12px; color: var(--muted); }
"""


def _status_cls(status: str) -> str:
    return "NA" if status == "N/A" else status


def _section(title: str, *content: str) -> str:
    return f"<section><h2>{esc(title)}</h2>{''.join(content)}</section>"


def _facts(pairs) -> str:
    dl = "".join(f"<dt>{esc(k)}</dt><dd>{esc(v)}</dd>" for k, v in pairs)
    return f'<dl class="facts">{dl}</dl>'


def _plots_section(report) -> str:
    figs, note = plots(report)
    parts = [f'<p class="note">{esc(note)}</p>'] if note else []
    parts += [figure(image(uri, caption), esc(caption), attrs='class="plot"') for caption, uri in figs]
    return _section("Plots", *parts)


def _heads_section(m: dict) -> str:
    rows = []
    for name, h in m.get("heads", {}).items():
        if h["task"] == "quality":
            rows.append((name, h["task"], f"SRCC {fmt(h.get('srcc'))}, max |diff| {fmt(h.get('max_abs_diff'))}"))
        else:
            rows.append((name, h["task"],
                         f"agreement {fmt(h['agreement'])} ({h['flips']} flip(s), {h['flips_outside_margin']} "
                         f"outside the margin); threshold deployed {fmt(h['deployed_threshold'])}, reference "
                         f"{fmt(h['ref_threshold'])}; max |logit diff| {fmt(h['logit_max_abs_diff'])}, "
                         f"max |p diff| {fmt(h['p_max_abs_diff'])}"))
    return _section("Heads", table(["head", "task", "clean images"], rows))


def _robustness_section(report) -> str:
    if not report.robustness:
        return ""
    rows = []
    for v, r in report.robustness.items():
        per_head = []
        for name, h in r.get("heads", {}).items():
            if h["task"] == "quality":
                per_head.append(f"{name}: SRCC {fmt(h.get('srcc'))}")
            else:
                per_head.append(f"{name}: agreement {fmt(h['agreement'])}, {h['flips']} flip(s)")
        f = r.get("features", {})
        rows.append((v, r.get("description", ""), fmt(r.get("n_images")), fmt(r.get("preprocessing_max_error")),
                     fmt(f.get("cosine_mean")), fmt(f.get("cosine_worst")), "; ".join(per_head)))
    return _section("Robustness (laundered copies)",
                    table(["laundering", "what", "images", "pixel error", "cosine mean", "cosine worst", "heads"],
                          rows, num_cols=(2, 3, 4, 5)))


def _images_sections(report) -> str:
    worst = sorted((r for r in report.rows if r.get("cosine") is not None), key=lambda r: r["cosine"])[:10]
    parts = [_section("Worst 10 images by embedding cosine", table(
        ["path", "cosine", "pixel error", "ref logit", "logit", "ref p", "p", "ref quality", "quality", "flip"],
        [(r["path"], fmt(r["cosine"]), fmt(r.get("pixel_error")), fmt(r.get("ref_logit")), fmt(r.get("logit")),
          fmt(r.get("ref_p")), fmt(r.get("p")), fmt(r.get("ref_quality")), fmt(r.get("quality")),
          ("yes", "FAIL") if r.get("flip") else "no") for r in worst],
        num_cols=(1, 2, 3, 4, 5, 6, 7, 8)))]
    flipped = [r for r in report.rows if r.get("flip")]
    if flipped:
        rows = []
        for r in flipped[:200]:
            for name, h in r["heads"].items():
                if h.get("flip"):
                    rows.append((r["path"], name, fmt(h["ref_logit"]), fmt(h["logit"]), fmt(h["ref_p"]), fmt(h["p"]),
                                 ("yes", "FAIL") if h["outside_margin"] else "no"))
        parts.append(_section(f"Images whose decision changed ({len(flipped)})",
                              table(["path", "head", "ref logit", "logit", "ref p", "p", "outside margin"], rows,
                                    num_cols=(2, 3, 4, 5))))
    if report.failed_files:
        parts.append(_section(f"Files that could not be decoded ({len(report.failed_files)})",
                              table(["path", "error"], [(f["path"], f["error"]) for f in report.failed_files])))
    return "".join(parts)


def render_html(report) -> str:
    m = report.metrics
    verdict = "PASS" if report.passed else "FAIL"
    info = [("artifact", report.model), ("sha256", report.sha256), ("precision", report.precision),
            ("images compared", m.get("n_images")), ("files found", m.get("n_files_found")),
            ("files that could not be decoded", len(report.failed_files)),
            ("reference", json.dumps(report.settings.get("reference"))),
            ("reference transform", report.settings.get("reference_transform")),
            ("backend", report.settings.get("backend")), ("margin (logit)", report.settings.get("margin"))]
    header = (f"<header><h1>clipscan verify: {esc(report.manifest_name)}</h1>"
              f"<p><span class='verdict {verdict}'>{verdict}</span> "
              f"{len(report.failed_gates())} of {len(report.gates)} gate(s) failed</p></header>")
    gates = table(["group", "gate", "value", "bar", "result", "note"],
                  [(g.group, g.name, fmt(g.value), _bar(g), (g.status, _status_cls(g.status)), g.note)
                   for g in report.gates], num_cols=(2,))
    bars = json.dumps(report.settings.get("bars", {}))
    method = ("<ol>" + "".join(f"<li>{esc(t)}</li>" for t in report.method) + "</ol>"
              f"<p class='note'>Bars for {esc(report.precision)}: {esc(bars)}</p>")
    versions = table(["package", "now (verify)", "at export (manifest)"],
                     [(k, report.versions.get(k, "-"), report.manifest_tools.get(k, "-"))
                      for k in sorted(set(report.versions) | set(report.manifest_tools))])
    body = "".join([
        header,
        _section("Artifact", _facts((k, v if isinstance(v, str) else fmt(v)) for k, v in info)),
        _section("Gates", gates), _plots_section(report), _heads_section(m), _robustness_section(report),
        _images_sections(report), _section("Method", method), _section("Versions", versions)])
    return page(f"clipscan verify: {report.manifest_name} {verdict}", body, css=CSS)
