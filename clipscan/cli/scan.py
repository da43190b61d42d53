"""`clipscan scan`: scan image files and folders with an artifact, one output row per input as results arrive.

Options say how (backend, batch size, decoding, threads) and where rows go (stdout or --output, with
--resume/--overwrite); `clipscan.runtime.Scanner` does the work.
"""
from __future__ import annotations

import contextlib
import logging
import os
import sys
import time

from clipscan.runtime.errors import ClipscanError, InvalidArgumentError

from . import EXIT_ITEM_FAILED, EXIT_OK, NOTICE
from .args import (BACKENDS, add_decode, add_image_formats, add_no_spin, backend_help, non_negative_int, positive_int,
                   probability)
from .scan_ray import add_ray_arguments, run_if_ray

log = logging.getLogger("clipscan")


def add_arguments(p) -> None:
    from clipscan.runtime.results import WRITERS

    p.description = "Scan files and folders; writes one line per input as results arrive."
    p.add_argument("paths", nargs="*", metavar="PATH",
                   help="image files and/or folders; - reads one image from standard input")
    p.add_argument("--from-list", metavar="FILE",
                   help="also scan the paths listed in FILE, one per line (- reads the list from standard input)")
    p.add_argument("-m", "--model", help="exported .onnx artifact (default: the bundled demo model)")
    p.add_argument("-o", "--output", help="write results to this file instead of stdout (never overwritten "
                                          "unless --overwrite; --resume appends)")
    again = p.add_mutually_exclusive_group()
    again.add_argument("--resume", action="store_true",
                       help="continue an interrupted scan: skip inputs that already have a row in --output")
    again.add_argument("--overwrite", action="store_true", help="replace an existing --output file")
    p.add_argument("-f", "--format", choices=tuple(WRITERS),
                   help=f"output format, one of {', '.join(WRITERS)} (default: from the --output extension, .csv "
                        "or .jsonl; jsonl on stdout)")
    p.add_argument("-b", "--batch-size", type=positive_int, default=16, help="images per inference batch (default 16)")
    p.add_argument("--backend", default="auto", choices=BACKENDS, help=backend_help("auto"))
    p.add_argument("--no-fallback", action="store_true", help="with auto: stop at the first backend that fails")
    p.add_argument("--max-batch", type=positive_int, help="GPU engines: largest batch the engine accepts (default: --batch-size)")
    p.add_argument("--cache-dir", help="GPU engine and timing caches (default: $CLIPSCAN_CACHE_DIR or ~/.cache/clipscan)")
    p.add_argument("--device", type=non_negative_int, default=0, help="CUDA device index (default 0)")
    p.add_argument("--threads", type=positive_int, help="inference threads (default: the backend decides)")
    p.add_argument("--workers", type=positive_int, help="decode/preprocess threads (default: min(4, cores))")
    p.add_argument("--threshold", type=probability, help="override the manifest's decision threshold (probability)")
    p.add_argument("--max-pixels", type=positive_int, help="refuse images larger than this many pixels (default 179 M)")
    add_image_formats(p)
    p.add_argument("--all-files", action="store_true",
                   help="in folders, scan every file, not only those with an image extension")
    p.add_argument("--with-embedding", action="store_true", help="add the image embedding to each JSONL row")
    add_no_spin(p)
    remote = p.add_argument_group("client mode: scan on an Open Inference Protocol server (clipscan serve, Triton)")
    remote.add_argument("--server", metavar="URL",
                        help="send the files to this server (e.g. http://127.0.0.1:8000) instead of scanning here; "
                             "rows are the same as a local scan's")
    remote.add_argument("--server-model", metavar="NAME",
                        help="the model on --server (default: its only clipscan model)")
    remote.add_argument("--token-file", metavar="FILE", help="a file holding the bearer token --server asks for")
    remote.add_argument("--concurrency", type=positive_int,
                        help="requests in flight to --server (default 2; -b images each)")
    add_decode(p)
    add_ray_arguments(p)


def _already_done(args) -> tuple[set[str], str]:
    """(inputs --output already has a row for, file mode): refuses to overwrite a non-empty --output
    unless --resume (append, skipping those inputs) or --overwrite."""
    from clipscan.runtime.results import completed_paths
    from clipscan.runtime.resume import recorded_model

    if args.resume and not args.output:
        raise InvalidArgumentError("--resume needs --output FILE: the file whose rows say what is already done")
    if args.output:
        if os.path.isdir(args.output):
            raise InvalidArgumentError(f"--output {args.output} is a folder; name the results file to write inside it")
        parent = os.path.dirname(os.path.abspath(args.output))
        if not os.path.isdir(parent):
            raise InvalidArgumentError(f"--output {args.output}: the folder {parent} does not exist; create it first")
    if args.output and args.resume and os.path.islink(args.output):
        # rows are never written through a link (see open_output), so they cannot be appended through one
        raise InvalidArgumentError(f"--output {args.output} is a symbolic link (to {os.readlink(args.output)}); "
                                   "--resume does not append through links: pass the file it points to as -o")
    if args.output and os.path.exists(args.output) and os.path.getsize(args.output) > 0:
        if args.resume:
            recorded_model(args.output)  # a damaged model record is refused before the rows are touched
            previous = completed_paths(args.output, args.format)
            log.log(NOTICE, "resuming: %d input(s) already in %s are skipped", len(previous), args.output)
            return previous | {os.path.abspath(p) for p in previous}, "a"
        if not args.overwrite:
            raise InvalidArgumentError(f"{args.output} already exists; pass --resume to continue the scan that wrote "
                                       "it, or --overwrite to replace it")
    return set(), "w"


OUTPUT_EXTENSIONS = {".csv": "csv", ".jsonl": "jsonl", ".ndjson": "jsonl", ".json": "jsonl"}


def output_format(args) -> str:
    """-f as given, else the --output extension's format, else jsonl; -f that contradicts the extension is refused."""
    by_extension = OUTPUT_EXTENSIONS.get(os.path.splitext(args.output or "")[1].lower())
    if args.format and by_extension and args.format != by_extension:
        raise InvalidArgumentError(f"-f {args.format} was asked for, but --output {args.output} is named like a "
                                   f"{by_extension} file; drop -f, or name the file *.{args.format}")
    return args.format or by_extension or "jsonl"


def open_output(path: str, mode: str, errors: str):
    """The results file, opened to write ("w") or append ("a") without following a symbolic link, as report
    and export never do: to write, a link at `path` (a dangling one, or one --overwrite replaces) is removed
    first, so the new file takes the link's place and its target is neither created nor truncated;
    O_NOFOLLOW refuses a link that appears in between (appending to a link is refused before, in
    _already_done)."""
    if mode == "w" and os.path.islink(path):
        os.unlink(path)
    flags = os.O_WRONLY | os.O_CREAT | (os.O_TRUNC if mode == "w" else os.O_APPEND) | getattr(os, "O_NOFOLLOW", 0)
    try:
        fd = os.open(path, flags, 0o666)
    except OSError as e:
        raise InvalidArgumentError(f"--output {path} cannot be opened to write ({e.strerror or e})") from None
    return os.fdopen(fd, mode, encoding="utf-8", errors=errors, newline="")


def _inputs(args) -> list[str]:
    """PATH arguments, then the --from-list paths; at least one input, and standard input used once."""
    paths = list(args.paths)
    if args.from_list:
        if args.from_list == "-" and "-" in paths:
            raise InvalidArgumentError("standard input cannot be both an image (PATH -) and the list (--from-list -)")
        with (sys.stdin if args.from_list == "-" else open(args.from_list, encoding="utf-8",
                                                             errors="surrogateescape")) as f:
            paths += [line.rstrip("\r\n") for line in f if line.strip()]
    if not paths:
        raise InvalidArgumentError("nothing to scan: give image files or folders, - for an image on standard input, "
                                   "or --from-list FILE")
    if paths.count("-") > 1:
        raise InvalidArgumentError("- (an image on standard input) can be given once")
    return paths


def _results(scanner, paths: list[str], args, done):
    """Results in input order: folders and files through Scanner.scan, `-` as the bytes on standard input."""
    if "-" not in paths:
        yield from scanner.scan(paths, all_files=args.all_files, skip=done)
        return
    i = paths.index("-")
    if paths[:i]:
        yield from scanner.scan(paths[:i], all_files=args.all_files, skip=done)
    if "<stdin>" not in done:
        yield scanner.scan_bytes(sys.stdin.buffer.read(), name="<stdin>")
    if paths[i + 1:]:
        yield from scanner.scan(paths[i + 1:], all_files=args.all_files, skip=done)


def _inputs_to_count(paths: list[str], args, done):
    """The inputs a scan will go through, walked once more for the progress bar's total."""
    from clipscan.runtime.discover import iter_files

    for p in iter_files([p for p in paths if p != "-"], all_files=args.all_files):
        if not (p in done or os.path.abspath(p) in done):
            yield p
    if "-" in paths and "<stdin>" not in done:
        yield "-"


# local-only options that client mode refuses rather than ignores (the server decides these)
LOCAL_ONLY = {"model": "--model", "threshold": "--threshold", "max_pixels": "--max-pixels", "max_batch": "--max-batch",
              "cache_dir": "--cache-dir", "threads": "--threads", "workers": "--workers",
              "image_formats": "--image-formats"}


def _remote_scanner(args):
    from clipscan.runtime import RemoteScanner

    given = [flag for attr, flag in LOCAL_ONLY.items() if getattr(args, attr) is not None]
    given += [f for f, v in (("--backend", args.backend != "auto"), ("--decode", args.decode != "auto"),
                             ("--no-fallback", args.no_fallback), ("--no-spin", args.no_spin), ("--device", args.device))
              if v]
    if given:
        raise InvalidArgumentError(f"{', '.join(given)} set(s) how a local scan runs; with --server the server's "
                                   "model and settings are used: drop them, or drop --server to scan here")
    token = None
    if args.token_file:
        try:
            with open(args.token_file, encoding="utf-8") as f:
                token = f.read().strip()
        except OSError as e:
            raise InvalidArgumentError(f"--token-file {args.token_file} cannot be read ({e.strerror or e})") from None
        if not token:
            raise InvalidArgumentError(f"--token-file {args.token_file} is empty; put the server's bearer token in it")
    return RemoteScanner(args.server, args.server_model, token=token, batch_size=args.batch_size,
                         **({"concurrency": args.concurrency} if args.concurrency else {}))


def run(args) -> int:
    from clipscan.runtime import Scanner
    from clipscan.runtime.decode import DEFAULT_MAX_PIXELS
    from clipscan.runtime.progress import Progress, count_in_background
    from clipscan.runtime.results import (OUTPUT_ERRORS, WRITERS, check_output_format, columns_for, csv_columns,
                                          model_identity, sidecar_path)
    from clipscan.runtime.resume import check_same_model, row_settings

    args.format = output_format(args)
    check_output_format(args.format, args.with_embedding)  # before anything is created at --output
    paths = _inputs(args)
    if (code := run_if_ray(args, paths)) is not None:
        return code
    done, mode = _already_done(args)
    client_only = [f for f, v in (("--server-model", args.server_model), ("--token-file", args.token_file),
                                  ("--concurrency", args.concurrency)) if v is not None]
    if client_only and not args.server:
        raise InvalidArgumentError(f"{', '.join(client_only)} only mean something with --server URL (client mode)")
    if args.server:
        scanner = _remote_scanner(args)
        identity, columns = scanner.identity, scanner.columns_for(args.format)
        settings = row_settings(args.format, args.with_embedding)
        log.info("model %s on %s (sha256 %s)", identity["name"], scanner.backend_name,
                 (identity.get("sha256") or "not given by the server")[:12])
    else:
        scanner = Scanner(args.model, backend=args.backend, fallback=not args.no_fallback,
                          batch_size=args.batch_size, threads=args.threads, workers=args.workers,
                          threshold=args.threshold, max_pixels=args.max_pixels or DEFAULT_MAX_PIXELS,
                          max_batch=args.max_batch, cache_dir=args.cache_dir, device_id=args.device,
                          decode=args.decode, spin=not args.no_spin, image_formats=args.image_formats)
        m = scanner.manifest
        log.info("model %s (%s, %s) on %s; decoding %s", m.name, m.backbone.get("id"), m.precision,
                 scanner.backend_name, scanner.decode_reason)
        identity, columns = model_identity(scanner.artifact), columns_for(scanner.manifest, args.format)
        settings = row_settings(args.format, args.with_embedding, threshold=scanner.threshold_override,
                                decode=scanner.decode, max_pixels=scanner.max_pixels,
                                image_formats=scanner.image_formats)
        if scanner.artifact.is_demo:
            log.warning("using the bundled DEMO model: its scores show the pipeline works, they are not a real "
                        "detector's (pass --model to scan with an exported model)")
    if args.output:
        try:
            check_same_model(args.output, identity, args.format, appending=mode == "a", settings=settings)
        except ValueError:
            scanner.close()
            raise
    if args.output:
        out = open_output(args.output, mode, OUTPUT_ERRORS)
    else:
        out = sys.stdout
        if hasattr(out, "reconfigure"):
            out.reconfigure(errors=OUTPUT_ERRORS)
    total = failed = 0
    start = time.perf_counter()
    # stderr only, and only on a terminal: rows on stdout never see it
    bar = Progress("scan", unit="img", note=scanner.backend_name, enabled=not args.quiet)
    count_in_background(lambda: _inputs_to_count(paths, args, done), bar)
    try:
        if mode == "a" and args.format == "csv":
            columns = csv_columns(args.output) or columns
        writer = WRITERS[args.format](out, with_embedding=args.with_embedding, header=mode == "w", columns=columns)
        for result in _results(scanner, paths, args, done):
            writer.write(result)
            total += 1
            bar.update(errors=1 if result.error else 0)
            if result.error:
                failed += 1
                log.debug("%s: %s", result.path, result.error)
    except ClipscanError:
        if args.output and mode == "w" and total == 0:  # refused before any row: leave no empty file behind
            for leftover in (args.output, sidecar_path(args.output)):
                with contextlib.suppress(OSError):
                    os.unlink(leftover)
        raise
    finally:
        bar.close()
        if out is not sys.stdout:
            out.close()
        scanner.close()
    seconds = time.perf_counter() - start
    stats = scanner.walk_stats
    skipped = f"; skipped {stats.skipped_non_image} non-image file(s)" if stats.skipped_non_image else ""
    log.log(NOTICE, "scanned %d input(s): %d ok, %d failed in %.2f s (%.1f images/s) on %s%s", total, total - failed,
             failed, seconds, (total - failed) / seconds if seconds > 0 else 0.0, scanner.backend_name, skipped)
    if total == 0 and not done:
        log.error("nothing to scan: no image files under %s (use --all-files to scan every file)", paths)
        return EXIT_ITEM_FAILED
    return EXIT_ITEM_FAILED if failed else EXIT_OK
