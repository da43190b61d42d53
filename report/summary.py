"""What a report page shows, computed from the rows: counts, histograms, the most likely generated images,
the failures, and the table data within its byte budget."""
from __future__ import annotations

from collections import Counter
from dataclasses import dataclass

import numpy as np

from clipscan.runtime.defaults import REPORT_HIST_BINS, REPORT_MAX_FAILURES, REPORT_TABLE_BYTES

from .html_kit import script_json
from .rows import Row, RowsFile

FAILED = "failed"          # the verdict bucket of rows with an error
NO_VERDICT = "no verdict"  # rows of a model without a decision head (quality only)


@dataclass
class Histogram:
    name: str
    edges: list[float]
    counts: list[int]
    total: int          # values counted (rows that have one)


@dataclass
class HeadSummary:
    """One head's own answers over the rows that scanned: verdict and generator counts and the histogram of
    its p_generated (decision heads) or score (quality heads)."""
    name: str
    by_verdict: dict[str, int]
    by_generator: dict[str, int]
    histogram: Histogram | None


@dataclass
class Summary:
    rows: int
    ok: int
    failed: int
    by_verdict: dict[str, int]
    by_error_kind: dict[str, int]
    by_backend: dict[str, int]
    by_generator: dict[str, int]
    histograms: list[Histogram]
    top: list[Row]                 # the most likely generated, best first
    failures: list[Row]            # up to REPORT_MAX_FAILURES
    table: list[list]              # [path, p_generated, verdict, generator, quality, error_kind, *heads] per row
    table_complete: bool           # every row is in the table (else the most likely generated ones)
    heads: list[HeadSummary]       # every head's own answers, in the order the rows name them


def verdict_of(row: Row) -> str:
    if not row.ok:
        return FAILED
    return row.verdict or NO_VERDICT


def _counts(values) -> dict[str, int]:
    return dict(Counter(values).most_common())


def histogram(name: str, values: list[float], lo: float | None = None, hi: float | None = None,
              bins: int = REPORT_HIST_BINS) -> Histogram | None:
    """Counts in `bins` equal bins over [lo, hi] (default: the values' range); None when there are no values."""
    if not values:
        return None
    v = np.asarray(values, np.float64)
    lo = float(v.min()) if lo is None else lo
    hi = float(v.max()) if hi is None else hi
    if hi <= lo:  # every value equal: one bin's width around it
        lo, hi = lo - 0.5, hi + 0.5
    counts, edges = np.histogram(v, bins=bins, range=(lo, hi))
    return Histogram(name, [float(e) for e in edges], [int(c) for c in counts], len(v))


def most_likely_generated(rows: list[Row], n: int) -> list[Row]:
    scored = [r for r in rows if r.ok and r.p_generated is not None]
    scored.sort(key=lambda r: (-r.p_generated, -(r.logit if r.logit is not None else 0.0), r.path))
    return scored[:n]


def head_names(rows: list[Row]) -> list[str]:
    """The heads the rows answer for, in the order they first appear."""
    return list(dict.fromkeys(name for r in rows for name in r.heads))


def head_cell(answer: dict | None):
    """A head's table cell: [p_generated, verdict, generator] for a decision head, its score for a quality head,
    None when the row has no answer from it."""
    if not answer:
        return None
    if "score" in answer:
        return answer["score"]
    return [answer.get("p_generated"), answer.get("verdict"), answer.get("generator")]


def _table_row(r: Row, heads: list[str]) -> list:
    return [r.path, r.p_generated, verdict_of(r), r.generator, r.quality, r.error_kind,
            *(head_cell(r.heads.get(h)) for h in heads)]


def head_summary(name: str, ok: list[Row]) -> HeadSummary:
    answers = [r.heads[name] for r in ok if name in r.heads]
    scores = [a["score"] for a in answers if "score" in a]
    hist = (histogram(f"{name}.score", scores) if scores else
            histogram(f"{name}.p_generated", [a["p_generated"] for a in answers if "p_generated" in a], 0.0, 1.0))
    return HeadSummary(name, _counts(a["verdict"] for a in answers if "verdict" in a),
                       _counts(a["generator"] for a in answers if "generator" in a), hist)


def table_rows(rows: list[Row], budget: int = REPORT_TABLE_BYTES) -> tuple[list[list], bool]:
    """Every row for the page's table while its JSON, as the page embeds it (html_kit.script_json), fits
    `budget` bytes; beyond that, rows in order of p_generated (most likely generated first, failures
    after), as many as fit. After the row's own columns, one per head (head_cell)."""
    heads = head_names(rows)
    table = [_table_row(r, heads) for r in rows]
    size = len(script_json(table))
    if size <= budget:
        return table, True
    ranked = sorted(rows, key=lambda r: (r.p_generated is None, -(r.p_generated or 0.0), r.path))
    kept, used = [], 2
    for r in ranked:
        item = _table_row(r, heads)
        used += len(script_json(item)) + 1
        if used > budget:
            break
        kept.append(item)
    return kept, False


def summarize(data: RowsFile, *, top: int) -> Summary:
    rows = data.rows
    failed = [r for r in rows if not r.ok]
    ok = [r for r in rows if r.ok]
    hists = [h for h in (histogram("p_generated", [r.p_generated for r in ok if r.p_generated is not None], 0.0, 1.0),
                         histogram("quality", [r.quality for r in ok if r.quality is not None])) if h]
    table, complete = table_rows(rows)
    return Summary(
        rows=len(rows), ok=len(ok), failed=len(failed),
        by_verdict=_counts(verdict_of(r) for r in rows),
        by_error_kind=_counts(r.error_kind or "error" for r in failed),
        by_backend=_counts(r.backend or "not recorded" for r in rows),
        by_generator=_counts(r.generator for r in ok if r.generator),
        histograms=hists, top=most_likely_generated(rows, top), failures=failed[:REPORT_MAX_FAILURES],
        table=table, table_complete=complete, heads=[head_summary(h, ok) for h in head_names(rows)])
