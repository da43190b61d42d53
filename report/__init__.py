"""clipscan.report: a scan's rows as one self-contained HTML page a reviewer can look at (`clipscan report`).

Runtime-only (numpy and pillow, through clipscan.runtime): rows in (JSONL or CSV from `clipscan scan`, the
service, Triton or Ray), one page out with the model and backend, counts by verdict and error kind,
histograms of p_generated and quality, thumbnails of the most likely generated images, the failures and
every row, sortable and filterable; written atomically.
"""
from __future__ import annotations

import logging
import os
from dataclasses import dataclass

from clipscan.runtime.atomic import write_text
from clipscan.runtime.defaults import REPORT_MAX_BYTES, REPORT_TOP_N
from clipscan.runtime.errors import InputNotFoundError

from .scan_page import render
from .rows import Row, RowsError, RowsFile, read_rows
from .summary import Summary, summarize
from .thumbs import thumbnails

log = logging.getLogger("clipscan.report")


@dataclass
class ReportResult:
    output: str
    bytes: int
    rows: RowsFile
    summary: Summary
    thumbnails: int          # images embedded
    missing_thumbnails: int  # of the top N, images that could not be shown


def build_report(rows_path: str | os.PathLike, output: str | os.PathLike, *, images_root: str | None = None,
                 top: int = REPORT_TOP_N, title: str | None = None) -> ReportResult:
    """Read `rows_path`, write the page to `output` (atomically), and say what it holds."""
    if images_root is not None and not os.path.isdir(images_root):
        raise InputNotFoundError(f"--images-root {images_root} is not a folder; pass the folder the scan ran in "
                                 "(the row paths are relative to it)")
    data = read_rows(rows_path)
    summary = summarize(data, top=top)
    thumbs = thumbnails([r.path for r in summary.top], images_root,
                        os.path.dirname(os.path.abspath(data.path)))
    page = render(data, summary, thumbs, top_n=top, title=title)
    write_text(output, page)
    size = len(page.encode("utf-8"))
    if size > REPORT_MAX_BYTES:
        log.warning("%s is %.1f MB, over the %.0f MB a report aims for: pass a smaller --top", output, size / 1e6,
                    REPORT_MAX_BYTES / 1e6)
    shown = sum(1 for t in thumbs if t.uri)
    return ReportResult(os.fspath(output), size, data, summary, shown, len(thumbs) - shown)


__all__ = ["ReportResult", "Row", "RowsError", "RowsFile", "Summary", "build_report", "read_rows", "summarize"]
