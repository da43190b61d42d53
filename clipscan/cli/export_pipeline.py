"""`clipscan export ... --verify DIR [--int8 DIR]`: export, verify and INT8 in one command.

Each stage writes under a hidden name and an artifact takes its final name only when its gates passed:
- the FP32 (or FP16) export is verified on the --verify images (as `clipscan verify`) and renamed to
  -o only when every gate passed; when one failed, it is deleted and its report kept;
- with --int8, the verified export is calibrated on the --int8 images and its fidelity report runs on
  the --verify images (as `clipscan calibrate --val-images`): passed, it takes --int8-output's name
  (default <stem>-int8.onnx); failed, it is kept as <stem>-int8.failed-gates.onnx, marked in its manifest.
An interrupted or failed run leaves no half-written file. The command ends with one table: which
artifact passed which stage, and where each report is.
"""
from __future__ import annotations

import logging
import os
from pathlib import Path

from . import EXIT_ITEM_FAILED, EXIT_OK
from .args import check_output, choices_help

log = logging.getLogger("clipscan")


def add_pipeline_arguments(p) -> None:
    from clipscan.calibration.recipes import DEFAULT_RECIPE, RECIPE_HELP

    g = p.add_argument_group("verify and INT8 in the same command")
    g.add_argument("--verify", action="append", default=[], metavar="DIR",
                   help="then verify the export on these images (as `clipscan verify`; repeatable): it takes -o's "
                        "name only when every gate passed (report in ./<stem>-verify)")
    g.add_argument("--int8", action="append", default=[], metavar="DIR",
                   help="then calibrate an INT8 model on these images (repeatable; needs --verify, whose images "
                        "must differ): written to --int8-output when every gate passed on the --verify images, "
                        "else kept as <stem>.failed-gates.onnx")
    g.add_argument("--int8-output", metavar="FILE", help="the INT8 file (default: <-o stem>-int8.onnx)")
    g.add_argument("--int8-recipe", choices=tuple(RECIPE_HELP), default=DEFAULT_RECIPE,
                   help="calibrate's --recipe: " + choices_help(RECIPE_HELP, DEFAULT_RECIPE))
    g.add_argument("--int8-search", action="store_true", help="calibrate's --search (accuracy-aware search)")
    g.add_argument("--no-launder", action="store_true", help="skip the laundered copies in the fidelity reports")


def wants_pipeline(args) -> bool:
    return bool(args.verify or args.int8)


def int8_output(args) -> Path:
    out = Path(args.output)
    return Path(args.int8_output) if args.int8_output else out.with_name(f"{out.stem}-int8{out.suffix}")


def check_pipeline(args) -> None:
    """Refuse, before the export, what the later stages could not do."""
    from clipscan.runtime.errors import InvalidArgumentError, InputNotFoundError

    if args.int8 and not args.verify:
        raise InvalidArgumentError("--int8 needs --verify DIR: the INT8 model is checked on those validation images "
                                   "(disjoint from the --int8 calibration images)")
    from clipscan.runtime.manifest import NATIVE

    if args.int8 and args.int8_search and args.resize_mode == NATIVE:
        raise InvalidArgumentError(f"--int8-search was asked for with --resize-mode {NATIVE}: the search compares "
                                   "batches of validation images of one size, and this artifact takes each image at "
                                   "its own size; drop --int8-search (its INT8 model is calibrated with minmax, one "
                                   "image at a time)")
    if args.int8 and args.precision != "fp32":
        raise InvalidArgumentError(f"--int8 calibrates an FP32 export; drop --precision {args.precision}")
    for folder in args.verify + args.int8:
        if not Path(folder).exists():
            raise InputNotFoundError(f"image folder {folder} does not exist; pass an existing folder of images")
    if args.int8:
        check_output(str(int8_output(args)), args.overwrite)
        from clipscan.calibration.pipeline import check_disjoint

        check_disjoint(list(args.int8), list(args.verify))


def run_pipeline(args, heads: list[str], export_kwargs: dict) -> int:
    from clipscan.calibration.fidelity_report import write_report
    from clipscan.calibration.verify import verify
    from clipscan.export import export_model, load_reference

    out = Path(args.output)
    work = out.with_name(f".{out.name}.exporting-{os.getpid()}{out.suffix}")
    rows: list[tuple[str, str, str]] = []
    try:
        exported = export_model(args.arch, args.weights, heads, work, name=args.name or out.stem, **export_kwargs)
        rows.append((out.name, f"export ({args.precision}) vs PyTorch on random pixels",
                     f"PASS (embedding cosine >= {exported.checks['embedding_cosine_min']:.7f})"))
        reference = load_reference(args.arch, args.weights, heads, quick_gelu=args.quick_gelu,
                                   threshold=args.threshold, resize_mode=args.resize_mode)
        report_dir = Path(f"{out.stem}-verify")
        report = verify(work, reference, args.verify, None, launder=not args.no_launder, mean=args.mean,
                        std=args.std, progress=not args.quiet)
        report.model = str(out)
        write_report(report, report_dir)
        print(report.summary())
        rows.append((out.name, f"verify: {len(report.gates)} gates on {report.metrics.get('n_images')} image(s)",
                     _result(report) + f"; report {report_dir}/"))
        if not report.passed:
            rows.append((out.name, "kept", "NO: deleted (a model that fails verify is not written)"))
            _table(rows)
            return EXIT_ITEM_FAILED
        work.replace(out)
    finally:
        work.unlink(missing_ok=True)
    print(f"wrote {out} (verified)")
    if args.int8:
        rc = _int8_stage(args, out, rows)
    else:
        rc = EXIT_OK
    _table(rows)
    return rc


def _int8_stage(args, fp32: Path, rows: list) -> int:
    from clipscan.calibration.pipeline import calibrate_artifact

    target = int8_output(args)
    outcome = calibrate_artifact(fp32, list(args.int8), target, recipe=args.int8_recipe, search=args.int8_search,
                                 val_images=list(args.verify), launder=not args.no_launder,
                                 progress=not args.quiet, report_dir=f"{target.stem}-verify")
    report = outcome.report
    print(report.summary())
    rows.append((outcome.result.path.name, f"INT8 ({outcome.result.calibration['recipe']}): {len(report.gates)} gates "
                 f"on {report.metrics.get('n_images')} image(s)", _result(report) + f"; report {outcome.report_dir}/"))
    if report.passed:
        print(f"wrote {target} (INT8, verified)")
        return EXIT_OK
    rows.append((outcome.result.path.name, "kept", f"as {outcome.result.path} (NOT {target}), marked failed: every "
                                                   "command that loads it warns"))
    return EXIT_ITEM_FAILED


def _result(report) -> str:
    failed = [g.name for g in report.failed_gates()]
    return "PASS" if report.passed else f"FAIL ({', '.join(failed)})"


def _table(rows: list[tuple[str, str, str]]) -> None:
    widths = [max(len(r[i]) for r in rows + [("artifact", "stage", "")]) for i in range(2)]
    print("\n" + "  ".join(("artifact".ljust(widths[0]), "stage".ljust(widths[1]), "result")))
    for a, stage, result in rows:
        print("  ".join((a.ljust(widths[0]), stage.ljust(widths[1]), result)))
