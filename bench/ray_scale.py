"""`clipscan bench --ray`: files/s of a local scan and of Ray scans with 1, 2, ... actors, in one run.

Every engine scans the same files into a JSONL file the way `clipscan scan -o` does (the local one with a
Scanner and the runtime's writer, the Ray ones through `clipscan.distributed.scan_on_ray`). Ray is
started once, on loopback, before the Ray runs (as a cluster would already be up) and its start time is
reported on its own; each Ray run's wall time includes what a scan on a running cluster pays: listing,
the dataset, the actors' start and model loading, the commits, and the row count is checked against the
local scan's.
"""
from __future__ import annotations

import logging
import shutil
import tempfile
import time
from pathlib import Path

from clipscan.measure.machine import describe_cpu
from clipscan.runtime import Scanner
from clipscan.runtime.discover import iter_files
from clipscan.runtime.errors import InvalidArgumentError
from clipscan.runtime.results import JsonlWriter

from .images import synthetic_images
from .results import load_average, load_text

log = logging.getLogger("clipscan.bench")

# clipscan's choices for the Ray benchmark: enough files for a few blocks per actor on 2 cores
RAY_BENCH = {"files": 512, "actors": (1, 2), "block_size": 32, "batch_size": 16}


def _local(model, files: list[str], out: Path, batch_size: int) -> dict:
    start = time.perf_counter()
    errors = 0
    with Scanner(model, batch_size=batch_size) as scanner, open(out, "w", encoding="utf-8") as f:
        writer = JsonlWriter(f)
        for result in scanner.scan(files):
            writer.write(result)
            errors += result.error is not None
    seconds = time.perf_counter() - start
    return {"engine": "local", "actors": None, "files": len(files), "error_rows": errors, "seconds": seconds,
            "files_per_s": len(files) / seconds, "first_block_s": None}


def _ray(model, files: list[str], out: Path, actors: int, block_size: int, batch_size: int) -> dict:
    from clipscan.distributed import RayScan, scan_on_ray

    report = scan_on_ray(RayScan(paths=files, output=str(out), model=model, actors=actors, block_size=block_size,
                                 scanner_options={"batch_size": batch_size}, overwrite=True))
    return {"engine": "ray", "actors": actors, "files": report.total, "error_rows": report.failed,
            "seconds": report.seconds, "files_per_s": report.total / report.seconds,
            "first_block_s": report.first_block_s}


def ray_benchmark(model: str | None = None, images: str | None = None, *, files: int = RAY_BENCH["files"],
                  actors=RAY_BENCH["actors"], block_size: int = RAY_BENCH["block_size"],
                  batch_size: int = RAY_BENCH["batch_size"]) -> dict:
    """Scan the same files locally and on Ray with each number of `actors`; returns the report dict."""
    tmp = Path(tempfile.mkdtemp(prefix="clipscan-bench-ray-"))
    if images:
        paths = [str(p) for p in iter_files([images])]
        if not paths:
            raise InvalidArgumentError(f"no image files found in {images}; pass a folder of images (or no "
                                       "--images for synthetic ones)")
        what = f"{images} ({len(paths)} files)"
    else:
        paths = [str(p) for p in synthetic_images(tmp / "images", files)]
        what = f"{files} synthetic 640x480 JPEGs (q=90)"
    from clipscan.distributed.cluster import parse_address, session

    load_start = load_average()
    rows = [_local(model, paths, tmp / "local.jsonl", batch_size)]
    start = time.perf_counter()
    with session(parse_address(None)):
        ray_start_s = time.perf_counter() - start
        for n in actors:
            log.info("Ray scan with %d actor(s)", n)
            rows.append(_ray(model, paths, tmp / f"ray_{n}.jsonl", n, block_size, batch_size))
    same = len({(tmp / "local.jsonl").read_bytes().count(b"\n")} |
               {(tmp / f"ray_{n}.jsonl").read_bytes().count(b"\n") for n in actors}) == 1
    shutil.rmtree(tmp, ignore_errors=True)  # the synthetic images and the outputs: only the numbers are kept
    return {"images": what, "block_size": block_size, "batch_size": batch_size, "rows": rows,
            "ray_start_s": ray_start_s, "same_row_count": same, "cpu": describe_cpu(),
            "load_average_at_start": load_start, "load_average_at_end": load_average()}


def format_ray_table(report: dict) -> str:
    lines = [(f"Ray scan throughput: {report['images']}; block {report['block_size']} files, batch "
              f"{report['batch_size']}"), f"CPU: {report['cpu']}",
             (f"load average 1/5/15 min at start {load_text(report['load_average_at_start'])}, at end "
              f"{load_text(report['load_average_at_end'])}"),
             f"Ray start (local, loopback, once before the Ray runs): {report['ray_start_s']:.1f} s",
             f"{'engine':<8} {'actors':>6} {'files':>6} {'wall s':>8} {'files/s':>8} {'to 1st block s':>15}"]
    for r in report["rows"]:
        first = f"{r['first_block_s']:.1f}" if r["first_block_s"] is not None else "-"
        lines.append(f"{r['engine']:<8} {r['actors'] or '-':>6} {r['files']:>6} {r['seconds']:>8.2f} "
                     f"{r['files_per_s']:>8.1f} {first:>15}")
    lines.append("wall: the whole scan (for Ray on the running Ray: listing, the actors' start and model loading, "
                 "commits); rows: " + ("the same count for every engine" if report["same_row_count"] else
                                       "COUNTS DIFFER between engines"))
    return "\n".join(lines)
