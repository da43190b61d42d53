"""`clipscan scan --engine ray`: the scan's Ray options, and the run that hands the scan to clipscan.distributed."""
from __future__ import annotations

import logging

from clipscan.runtime.errors import InvalidArgumentError

from . import EXIT_ITEM_FAILED, EXIT_OK, NOTICE
from .args import choices_help, non_negative, positive_int

log = logging.getLogger("clipscan")

# --engine -> who scans
ENGINES = {
    "local": "this process scans",
    "ray": "Ray Data spreads the files over a pool of actors, one Scanner each, exactly once and resumable "
           "(needs --output)",
}


def add_ray_arguments(p) -> None:
    from clipscan.distributed import DEFAULTS

    g = p.add_argument_group("distributed scanning on Ray (needs clipscan[ray])")
    g.add_argument("--engine", choices=tuple(ENGINES), default="local", help=choices_help(ENGINES, "local"))
    g.add_argument("--ray-address", metavar="ADDR",
                   help="join this Ray cluster (HOST:PORT of its head, ray://HOST:PORT or auto); default: start "
                        "Ray on this machine, on loopback only")
    g.add_argument("--actors", type=positive_int, metavar="N",
                   help="actors, one Scanner each (default: one per CPU slot, or per GPU with --gpus-per-actor)")
    g.add_argument("--gpus-per-actor", type=non_negative, default=DEFAULTS["gpus_per_actor"], metavar="G",
                   help="GPUs each actor reserves (default 0: CPU actors); e.g. 1, or 0.5 for two per GPU")
    g.add_argument("--block-size", type=positive_int, default=DEFAULTS["block_size"], metavar="FILES",
                   help=f"files per Ray block, the unit committed (and rescanned after a kill) "
                        f"(default {DEFAULTS['block_size']})")


def run_if_ray(args, paths: list[str]) -> int | None:
    """With --engine ray: scan `paths` on Ray and return the exit code (as a local scan's); else None (the
    local scan goes on), after refusing the Ray-only options it would silently ignore."""
    if args.engine != "ray":
        from clipscan.distributed import DEFAULTS

        given = [flag for flag, value, default in (("--ray-address", args.ray_address, None),
                                                   ("--actors", args.actors, None),
                                                   ("--gpus-per-actor", args.gpus_per_actor, DEFAULTS["gpus_per_actor"]),
                                                   ("--block-size", args.block_size, DEFAULTS["block_size"]))
                 if value != default]
        if given:
            raise InvalidArgumentError(f"{', '.join(given)} only apply to --engine ray; add --engine ray, or drop them")
        return None
    from clipscan.distributed import RayScan, check_spec, scan_on_ray
    from clipscan.runtime.decode import DEFAULT_MAX_PIXELS

    options = {"backend": args.backend, "fallback": not args.no_fallback, "batch_size": args.batch_size,
               "threads": args.threads, "workers": args.workers, "threshold": args.threshold,
               "max_pixels": args.max_pixels or DEFAULT_MAX_PIXELS, "max_batch": args.max_batch,
               "cache_dir": args.cache_dir, "device_id": args.device, "decode": args.decode,
               "spin": not args.no_spin, "image_formats": args.image_formats}
    spec = RayScan(paths=paths, output=args.output, fmt=args.format, model=args.model, scanner_options=options,
                   all_files=args.all_files, with_embedding=args.with_embedding, resume=args.resume,
                   overwrite=args.overwrite, address=args.ray_address, actors=args.actors,
                   gpus_per_actor=args.gpus_per_actor, block_size=args.block_size, verbose=args.verbose >= 2)
    check_spec(spec)
    report = scan_on_ray(spec)
    stats = report.walk
    skipped = f"; skipped {stats.skipped_non_image} non-image file(s)" if stats.skipped_non_image else ""
    rate = (report.total - report.failed) / report.seconds if report.seconds > 0 else 0.0
    log.log(NOTICE, "scanned %d input(s) on Ray: %d ok, %d failed in %.2f s (%.1f images/s) with %d actor(s), "
                    "%d block(s)%s", report.total, report.total - report.failed, report.failed, report.seconds, rate,
            report.actors, report.blocks, skipped)
    if report.total == 0 and not report.already_done:
        log.error("nothing to scan: no image files under %s (use --all-files to scan every file)", paths)
        return EXIT_ITEM_FAILED
    return EXIT_ITEM_FAILED if report.failed else EXIT_OK
