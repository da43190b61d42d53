"""`clipscan calibrate`: post-training INT8 (QDQ) of an FP32 artifact, with its fidelity report.

The work is `clipscan.calibration.pipeline.calibrate_artifact` (which checks its inputs); this
module maps the options onto it, prints what was written (and the search rounds) and the report's
summary, and exits 0: written (and every gate passed); 1: an INT8 gate failed; 2: could not run.
"""
from __future__ import annotations

import logging
from pathlib import Path

from . import EXIT_ITEM_FAILED, EXIT_OK
from .args import (
    AS_RECORDED,
    add_original_args,
    add_output,
    check_output,
    choices_help,
    heads_from,
    percent,
    positive_int,
    probability,
)

log = logging.getLogger("clipscan")


def add_arguments(p) -> None:
    from clipscan.calibration.recipes import DEFAULT_RECIPE, DEFAULT_TARGET, METHODS, RECIPE_HELP, TARGETS, Recipe

    p.description = ("Calibrate an FP32 artifact on a folder of images (preprocessed as its manifest "
                     "says) and write an INT8 QDQ artifact whose manifest records the calibration. "
                     "With --val-images, the fidelity report of `clipscan verify` runs on the result against "
                     "the PyTorch original recorded in the manifest (or named by --arch/--weights/--heads) and "
                     "its gates go into the manifest; a model that fails a gate is not written at -o but kept "
                     "as <stem>.failed-gates.onnx, and every command that loads it warns. "
                     "Exit 0: written (and every gate passed); 1: an INT8 gate failed; 2: could not run.")
    p.add_argument("model", metavar="MODEL", help="the FP32 .onnx artifact written by `clipscan export`")
    p.add_argument("--images", required=True, action="append", metavar="DIR",
                   help="calibration images: folder (walked recursively) or file; repeatable")
    add_output(p, "the INT8 .onnx file to write")
    p.add_argument("--target", choices=tuple(TARGETS), default=DEFAULT_TARGET,
                   help=choices_help(TARGETS, DEFAULT_TARGET))
    p.add_argument("--recipe", choices=tuple(RECIPE_HELP), default=DEFAULT_RECIPE,
                   help=choices_help(RECIPE_HELP, DEFAULT_RECIPE))
    p.add_argument("--method", choices=tuple(METHODS),
                   help="override the recipe's calibration method: " + choices_help(METHODS))
    p.add_argument("--percentile", type=percent, default=Recipe.percentile,
                   help=f"percentile calibration's percentile (default {Recipe.percentile:g})")
    p.add_argument("--smooth-alpha", type=probability, help="override the SmoothQuant migration strength (0..1)")
    p.add_argument("--exclude", action="append", default=[], metavar="NODE", help="keep this node in float (repeatable)")
    from clipscan.runtime.backends.ort_cpu import ATTENTION_ONNXRUNTIME_TEXT  # no onnxruntime import

    fuse = p.add_mutually_exclusive_group()
    fuse.add_argument("--fuse-attention", action="store_true", default=None,
                      help="run each layer's attention as one ONNX Attention node (opset 23, read by onnxruntime "
                           f">= {ATTENTION_ONNXRUNTIME_TEXT}): the default for --target cpu with the smooth, matmul and "
                           "dynamic recipes when the installed onnxruntime runs it; given explicitly, an error where "
                           "it cannot run")
    fuse.add_argument("--no-fuse-attention", dest="fuse_attention", action="store_false", default=None,
                      help="keep the attention products explicit (an opset-18 artifact that onnxruntime < "
                           f"{ATTENTION_ONNXRUNTIME_TEXT} runs too)")
    p.add_argument("--search", action="store_true",
                   help="accuracy-aware search: while the INT8 bar fails on --val-images (against the FP32 "
                        "graph), keep the layers adding the most error in float and quantize again")
    p.add_argument("-b", "--batch-size", type=positive_int, default=8, help="calibration batch size (all batches equal)")
    p.add_argument("--max-images", type=positive_int, help="use at most this many calibration images")
    p.add_argument("--cache-dir", help="calibration tensor cache (default: $CLIPSCAN_CACHE_DIR or ~/.cache/clipscan)")
    p.add_argument("--no-cache", action="store_true", help="neither read nor write the calibration cache")
    p.add_argument("--no-progress", action="store_true", help="no progress bar on stderr")
    g = p.add_argument_group("fidelity report (as `clipscan verify`)")
    g.add_argument("--val-images", action="append", default=[], metavar="DIR",
                   help="validation images, disjoint from the calibration images; repeatable")
    add_original_args(g, required=False, as_given=AS_RECORDED)
    g.add_argument("--threshold", type=probability, help="the reference's decision threshold" + AS_RECORDED)
    g.add_argument("--mean", type=float, nargs=3, help="the normalisation mean" + AS_RECORDED)
    g.add_argument("--std", type=float, nargs=3, help="the normalisation std" + AS_RECORDED)
    g.add_argument("--report", metavar="DIR", help="where report.json/html go (default: ./<output stem>-verify)")
    g.add_argument("--no-launder", action="store_true", help="skip the laundered copies in the report")
    g.add_argument("--allow-overlap", action="store_true",
                   help="only warn (instead of refusing) when calibration and validation images overlap")


def print_written(outcome, target: str) -> None:
    """The search rounds (if any) and the INT8 file written, as soon as it is written."""
    calibration = outcome.result.calibration
    if calibration.get("search_speed_measured_on"):
        print(f"search speed ratios measured on {calibration['search_speed_measured_on']}")
    for step in outcome.search_history:
        speed = (f", {step['speedup_vs_fp32']:.2f}x FP32 ORT at batch {step['speed_batch']}"
                 if "speedup_vs_fp32" in step else "")
        gain = f", gain {step['gain']:+.0%}" if "gain" in step else ""
        failing = f" (failing: {', '.join(step['failing'])})" if step.get("failing") else ""
        print(f"search round {step['round']} ({step['recipe']}): cosine mean {step.get('cosine_mean', 0):.5f} "
              f"worst {step.get('cosine_worst', 0):.5f}, agreement {step.get('agreement', 0):.4f}, "
              f"SRCC {step.get('srcc', float('nan')):.4f}{speed}: {'pass' if step['passed'] else 'fail'}{failing}, "
              f"shortfall {step['shortfall']:.3g}{gain}"
              + (f"; then {step['action']}" if step.get("action") else ""))
    if outcome.search_history:
        kept = calibration["search_kept_round"]
        print(f"search stopped ({calibration['search_stopped']}); kept round {kept}"
              + (" (the best; later rounds did not beat it)" if kept != outcome.search_history[-1]["round"] else ""))
        if calibration.get("slower_than_fp32"):
            step = outcome.search_history[kept]
            print(f"warning: the INT8 model written runs at {step['speedup_vs_fp32']:.2f}x the FP32 graph's speed on "
                  "this CPU: it is slower than FP32 (keep the FP32 artifact unless its size matters more)")
    from clipscan.runtime.backends.ort_cpu import ATTENTION_ONNXRUNTIME_TEXT

    fused = (f", attention fused in {calibration['fused_attention']} layer(s): opset 23, onnxruntime >= "
             f"{ATTENTION_ONNXRUNTIME_TEXT}" if calibration.get("fused_attention") else "")
    output = outcome.result.path
    print(f"wrote {output} (INT8 {calibration['recipe']}, target {target}{fused}, "
          f"{calibration['calibration_set']['n_images']} calibration image(s), "
          f"{Path(output).stat().st_size / 1e6:.1f} MB)")


def run(args) -> int:
    from clipscan.calibration.pipeline import calibrate_artifact

    check_output(args.output, args.overwrite)

    outcome = calibrate_artifact(
        args.model, args.images, args.output, target=args.target, recipe=args.recipe, method=args.method,
        percentile=args.percentile, smooth_alpha=args.smooth_alpha, exclude=args.exclude,
        fuse_attention=args.fuse_attention, search=args.search,
        val_images=args.val_images, batch_size=args.batch_size, max_images=args.max_images,
        cache=False if args.no_cache else args.cache_dir, arch=args.arch, weights=args.weights,
        heads=heads_from(args), quick_gelu=args.quick_gelu, threshold=args.threshold, mean=args.mean, std=args.std,
        report_dir=args.report, launder=not args.no_launder, allow_overlap=args.allow_overlap,
        resize_mode=args.resize_mode,
        progress=not (args.no_progress or args.quiet), on_written=lambda outcome: print_written(outcome, args.target))
    if outcome.report is None:
        log.warning("no --val-images: the INT8 model was not checked against its PyTorch original "
                    "(run `clipscan verify` on it, or pass --val-images with --arch/--weights/--heads)")
        return EXIT_OK
    print(outcome.report.summary())
    if outcome.report.passed:
        return EXIT_OK
    print(failed_sentence(outcome, args.output))
    return EXIT_ITEM_FAILED


def failed_sentence(outcome, output) -> str:
    """What a user must not miss when the INT8 model failed a gate: where it went, and what to use instead."""
    from pathlib import Path

    from clipscan.runtime.failed_gates import fidelity_label

    kept = "an earlier file there is left as it was" if Path(output).exists() else "nothing was written there"
    return (f"INT8 model {fidelity_label(outcome.result.manifest)}; it is NOT at -o {output} ({kept}) but kept as "
            f"{outcome.result.path} for inspection, marked failed in its manifest (every command that loads it "
            f"warns). Report: {outcome.report_dir}. Try another --recipe, --search, or more validation images.")
