"""`scan_on_ray(RayScan(...))`: Ray Data spreads the files over a pool of actors, each holding one Scanner;
the driver commits every finished block through the Ledger (exactly once, resumable).

The driver lists the inputs with the runtime's own walk (`iter_files`: the same paths, order, hidden-file
and extension rules as a local scan) and hands the list to Ray Data (`from_items`, one block per
`block_size` files); `map_batches` runs `ScanBlock` on an `ActorPoolStrategy` pool; each actor turns its
files into rows with the runtime's writers (the bytes a local scan would write for them) and the driver
appends the blocks in the order they finish.
"""
from __future__ import annotations

import io
import logging
import math
import os
import time
from dataclasses import dataclass, field

from clipscan.runtime import load_artifact
from clipscan.runtime.discover import WalkStats, iter_files
from clipscan.runtime.errors import BackendError, InvalidArgumentError
from clipscan.runtime.results import (OUTPUT_ERRORS, WRITERS, check_output_format, columns_for, completed_paths,
                                      csv_columns, model_identity)
from clipscan.runtime.resume import check_same_model, row_settings

from .cluster import default_actors, parse_address, prepare, session
from .defaults import DEFAULTS
from .ledger import Ledger

log = logging.getLogger("clipscan.ray")


@dataclass
class RayScan:
    """One Ray scan: what to scan, where the rows go, and how the work is spread."""
    paths: list[str]
    output: str
    fmt: str = "jsonl"
    model: str | None = None
    scanner_options: dict = field(default_factory=dict)   # Scanner keyword arguments (backend, batch_size, ...)
    all_files: bool = False
    with_embedding: bool = False
    resume: bool = False
    overwrite: bool = False
    address: str | None = None
    actors: int | None = DEFAULTS["actors"]
    cpus_per_actor: float = DEFAULTS["cpus_per_actor"]
    gpus_per_actor: float = DEFAULTS["gpus_per_actor"]
    block_size: int = DEFAULTS["block_size"]
    verbose: bool = False


@dataclass
class RayScanReport:
    total: int = 0             # rows written by this run
    failed: int = 0            # of which error rows
    already_done: int = 0      # inputs skipped because the output already had their row
    recovered_blocks: int = 0  # committed blocks of a killed run appended on --resume
    actors: int = 0
    blocks: int = 0
    seconds: float = 0.0       # the whole run: checks, listing, Ray's start, scanning, shutdown
    first_block_s: float | None = None   # from the start to the first committed block (Ray and actors up)
    walk: WalkStats = field(default_factory=WalkStats)


def check_spec(spec: RayScan) -> None:
    """Usage errors, before anything starts (one sentence each, InvalidArgumentError)."""
    if not spec.output:
        raise InvalidArgumentError("--engine ray needs --output FILE: the driver commits every finished block to it")
    if "-" in spec.paths:
        raise InvalidArgumentError("--engine ray cannot read an image from standard input (-): the actors read files; "
                                   "save it to a file, or scan it without --engine ray")
    if spec.actors is not None and (isinstance(spec.actors, bool) or not isinstance(spec.actors, int)
                                    or spec.actors < 1):
        raise InvalidArgumentError(f"--actors must be an integer >= 1, got {spec.actors!r}")
    if spec.block_size < 1:
        raise InvalidArgumentError(f"--block-size must be an integer >= 1, got {spec.block_size!r}")
    if not spec.gpus_per_actor >= 0 or not spec.cpus_per_actor > 0:
        raise InvalidArgumentError(f"--gpus-per-actor must be >= 0 and CPUs per actor > 0, got "
                                   f"{spec.gpus_per_actor!r} and {spec.cpus_per_actor!r}")
    check_output_format(spec.fmt, spec.with_embedding)
    if os.path.isdir(spec.output):
        raise InvalidArgumentError(f"--output {spec.output} is a folder; name the results file to write inside it")
    parent = os.path.dirname(os.path.abspath(spec.output))
    if not os.path.isdir(parent):
        raise InvalidArgumentError(f"--output {spec.output}: the folder {parent} does not exist; create it first")
    parse_address(spec.address)


class ScanBlock:
    """The Ray Data actor: one Scanner, reused for every block; rows come back as the output's bytes."""

    def __init__(self, model, scanner_options: dict, fmt: str, columns: tuple, with_embedding: bool):
        from clipscan.runtime import Scanner

        self.scanner = Scanner(model, **scanner_options)
        self.fmt, self.columns, self.with_embedding = fmt, tuple(columns), with_embedding

    def __call__(self, batch: dict) -> dict:
        import numpy as np

        names = [os.fsdecode(bytes(p)) for p in batch["path"]]
        paths = [os.fsdecode(bytes(p)) for p in batch["open"]]
        text = io.StringIO()
        writer = WRITERS[self.fmt](text, with_embedding=self.with_embedding, header=False, columns=self.columns)
        errors = 0
        for result in self.scanner.scan_many(zip(names, paths)):
            writer.write(result)
            errors += result.error is not None
        rows = text.getvalue().encode("utf-8", OUTPUT_ERRORS)
        return {"rows": np.array([rows], dtype=object), "files": np.array([len(names)]),
                "errors": np.array([errors])}


def _check_backend_here(name: str) -> None:
    """A named backend that cannot run on this machine is refused before Ray starts (the actors of a local Ray
    run here); on a cluster the actors' nodes decide, and a failure comes back from Ray."""
    from clipscan.runtime.backends import registry

    entry = registry().get(name)
    reason = entry.unavailable_reason() if entry is not None else None
    if reason:
        raise BackendError(f"backend {name!r} was requested but cannot start: {reason}. "
                           f"Install with: {entry.install_hint}, or use --backend auto")


def _header(spec: RayScan, columns: tuple) -> bytes:
    text = io.StringIO()
    WRITERS[spec.fmt](text, with_embedding=spec.with_embedding, header=True, columns=columns)
    return text.getvalue().encode("utf-8", OUTPUT_ERRORS)


def _settings(spec: RayScan, manifest) -> dict:
    """The row settings of this scan (runtime.resume.row_settings), resolved as each actor's Scanner will."""
    from clipscan.runtime.decode import DEFAULT_MAX_PIXELS
    from clipscan.runtime.image_formats import parse_image_formats
    from clipscan.runtime.scanner import resolve_decode

    o = spec.scanner_options
    return row_settings(spec.fmt, spec.with_embedding, threshold=o.get("threshold"),
                        decode=resolve_decode(manifest, o.get("decode", "auto"))[0],
                        max_pixels=o.get("max_pixels") or DEFAULT_MAX_PIXELS,
                        image_formats=parse_image_formats(o.get("image_formats")))


def _check_output(spec: RayScan, ledger: Ledger, identity: dict, settings: dict) -> bool:
    """--resume/--overwrite and the model, before Ray starts (refusals write nothing); True: append."""
    exists = os.path.exists(spec.output) and os.path.getsize(spec.output) > 0
    if not spec.resume:
        if (exists or ledger.has_work()) and not spec.overwrite:
            what = spec.output if exists else f"{ledger.folder} (a killed Ray scan's state)"
            raise InvalidArgumentError(f"{what} already exists; pass --resume to continue the scan that wrote it, "
                                       "or --overwrite to replace it")
        return False
    appending = exists or ledger.has_work()
    if appending:
        check_same_model(spec.output, identity, spec.fmt, appending=True, settings=settings)
    return appending


def _prepare_output(spec: RayScan, ledger: Ledger, identity: dict, settings: dict, columns: tuple,
                    appending: bool) -> tuple[set[str], tuple]:
    """Start the output (sidecar, header, ledger) or recover it; (paths that have a row, CSV columns)."""
    if not appending:
        check_same_model(spec.output, identity, spec.fmt, appending=False, settings=settings)  # records them
        ledger.start_new(_header(spec, columns))
        return set(), columns
    ledger.resume()
    if spec.fmt == "csv":
        columns = csv_columns(spec.output) or columns
    previous = completed_paths(spec.output, spec.fmt)
    log.log(25, "resuming: %d input(s) already in %s are skipped (%d committed block(s) of the killed run "
                "appended)", len(previous), spec.output, ledger.recovered_blocks)
    return previous, columns


def _todo(spec: RayScan, done: set[str], walk: WalkStats) -> list[str]:
    files = iter_files(spec.paths, all_files=spec.all_files, stats=walk)
    return [p for p in files if not (p in done or os.path.abspath(p) in done)]


def scan_on_ray(spec: RayScan) -> RayScanReport:
    """Run one Ray scan to the end (or until killed: `--resume` then finishes it)."""
    check_spec(spec)
    start = time.perf_counter()
    address = parse_address(spec.address)
    prepare(address, verbose=spec.verbose)  # no ray, or no cluster there: nothing is written
    if address.local:
        _check_backend_here(spec.scanner_options.get("backend", "auto"))
    artifact = load_artifact(spec.model)   # a bad model is one sentence here, before Ray starts
    identity, columns = model_identity(artifact), columns_for(artifact.manifest, spec.fmt)
    report = RayScanReport()
    if artifact.is_demo:
        log.warning("using the bundled DEMO model: its scores show the pipeline works, they are not a real "
                    "detector's (pass --model to scan with an exported model)")
    ledger = Ledger(spec.output)
    settings = _settings(spec, artifact.manifest)
    appending = _check_output(spec, ledger, identity, settings)
    with session(address, verbose=spec.verbose) as ray:  # before the output is written: a failure leaves nothing
        previous, columns = _prepare_output(spec, ledger, identity, settings, columns, appending)
        report.recovered_blocks, report.already_done = ledger.recovered_blocks, len(previous)
        todo = _todo(spec, previous | {os.path.abspath(p) for p in previous}, report.walk)
        if todo:
            _run(ray, spec, str(artifact.path), columns, todo, ledger, report, start)
        ledger.finish()
    report.seconds = time.perf_counter() - start
    return report


def _run(ray, spec: RayScan, model: str, columns: tuple, todo: list[str], ledger: Ledger, report: RayScanReport,
         start: float) -> None:
    from ray.data import ActorPoolStrategy, DataContext

    context = DataContext.get_current()
    context.enable_progress_bars = spec.verbose
    blocks = math.ceil(len(todo) / spec.block_size)
    # no more actors than blocks: an actor without a block would only load the model
    actors = min(spec.actors or default_actors(ray, spec.cpus_per_actor, spec.gpus_per_actor), blocks)
    report.actors = actors
    options = dict(spec.scanner_options)
    if options.get("threads") is None:
        options["threads"] = DEFAULTS["threads_per_actor"] or max(1, int(spec.cpus_per_actor))
    log.info("Ray scan: %d file(s) in %d block(s) of up to %d on %d actor(s)", len(todo), blocks,
             spec.block_size, actors)
    # each row names the file as given; the actors open it by its absolute path (their working folder is
    # not the driver's on a cluster); bytes, so that any file name (not only UTF-8) goes through Arrow
    items = [{"path": os.fsencode(p), "open": os.fsencode(os.path.abspath(p))} for p in todo]
    ds = ray.data.from_items(items, override_num_blocks=blocks)
    settings = {"model": model, "scanner_options": options, "fmt": spec.fmt, "columns": columns,
                "with_embedding": spec.with_embedding}
    ds = ds.map_batches(ScanBlock, batch_size=spec.block_size, batch_format="numpy", fn_constructor_kwargs=settings,
                        compute=ActorPoolStrategy(size=actors), num_cpus=spec.cpus_per_actor,
                        num_gpus=spec.gpus_per_actor or None)
    try:
        _commit_blocks(ds, ledger, report, start)
    except ray.exceptions.RayError as e:
        first = str(e).strip().splitlines()[-1] if str(e).strip() else type(e).__name__
        raise BackendError(f"the Ray scan stopped ({type(e).__name__}: {first[:300]}); every block committed "
                           "so far is in the output: fix the cause and run the same command with --resume") \
            from None


def _commit_blocks(ds, ledger: Ledger, report: RayScanReport, start: float) -> None:
    for batch in ds.iter_batches(batch_size=None, batch_format="numpy",
                                 prefetch_batches=DEFAULTS["prefetch_blocks"]):
        for rows, files, errors in zip(batch["rows"], batch["files"], batch["errors"]):
            ledger.commit(bytes(rows))
            report.total += int(files)
            report.failed += int(errors)
            report.blocks += 1
            if report.first_block_s is None:
                report.first_block_s = time.perf_counter() - start
