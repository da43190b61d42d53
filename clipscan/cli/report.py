"""`clipscan report`: a scan's rows (JSONL or CSV, from `clipscan scan`, the service, Triton or Ray) as one
self-contained HTML page; `clipscan.report.build_report` does the work."""
from __future__ import annotations

import logging

from clipscan.runtime.errors import InvalidArgumentError

from . import EXIT_ITEM_FAILED, EXIT_OK, NOTICE
from .args import add_output, check_output, positive_int

log = logging.getLogger("clipscan")


def add_arguments(p) -> None:
    from clipscan.runtime.defaults import REPORT_TOP_N

    p.description = ("Turn a scan's rows into one self-contained HTML page: the model and backend, counts by "
                     "verdict and error kind, score histograms, thumbnails of the most likely generated images, "
                     "the failed files, every row (sortable and filterable).")
    p.add_argument("rows", metavar="ROWS", help="the results file (JSONL or CSV) that `clipscan scan -o` wrote")
    p.add_argument("--images-root", metavar="DIR",
                   help="folder the row paths are relative to (default: the current folder); images are read "
                        "only inside it and the rows file's folder, never through a path or link leading out")
    p.add_argument("--top", type=positive_int, default=REPORT_TOP_N, metavar="N",
                   help="thumbnails of the N most likely generated images (default %(default)s)")
    p.add_argument("--title", help="the page's title (default: clipscan report: ROWS)")
    add_output(p, "the HTML page to write")


def run(args) -> int:
    from clipscan.report import build_report

    if not args.output.lower().endswith((".html", ".htm")):
        raise InvalidArgumentError(f"-o {args.output}: the report is an HTML page; name it *.html")
    check_output(args.output, args.overwrite)
    result = build_report(args.rows, args.output, images_root=args.images_root, top=args.top, title=args.title)
    data, s = result.rows, result.summary
    if data.skipped:
        first = "; ".join(f"line {n}: {why}" for n, why in data.problems[:3])
        log.warning("%s: skipped %d line(s) that are not rows (%s)", args.rows, data.skipped, first)
    if data.sidecar_note:
        log.info("%s", data.sidecar_note)
    if result.missing_thumbnails:
        log.warning("%d of the top %d image(s) could not be shown (not found or not decodable)%s",
                    result.missing_thumbnails, len(s.top), "" if args.images_root else
                    ": pass --images-root DIR, the folder the scan ran in")
    log.log(NOTICE, "wrote %s (%.2f MB): %d rows (%d scanned, %d failed), %d thumbnail(s)", result.output,
            result.bytes / 1e6, s.rows, s.ok, s.failed, result.thumbnails)
    return EXIT_ITEM_FAILED if data.skipped else EXIT_OK
