"""`clipscan threshold`: set an artifact's thresholds for a target false-positive rate on the user's own
real images, and write a new artifact that records them (needs clipscan[evaluate]; never onnx or torch).

Exit 0: thresholds chosen (and written with -o); 1: chosen, but some file failed (listed); 2: could not run.
"""
from __future__ import annotations

from . import EXIT_ITEM_FAILED, EXIT_OK
from .args import check_output
from .evaluate import add_labelled_args, add_scan_args


def _rate(text: str) -> float:
    import argparse

    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not 0.0 < value < 1.0:
        raise argparse.ArgumentTypeError(f"{text} is not a rate in (0, 1), e.g. 0.01 for 1%")
    return value


def add_arguments(p) -> None:
    p.description = ("Pick, for every decision head, the threshold whose false-positive rate on the --real images "
                     "is the --fpr asked (with the Clopper-Pearson interval of the rate achieved and the count "
                     "behind it), report the detection rate on --generated, and with -o write a new artifact whose "
                     "manifest carries the thresholds and how, on what and when they were chosen. The input "
                     "artifact is never changed.")
    p.add_argument("model", metavar="MODEL", help="the .onnx artifact")
    add_labelled_args(p, real_required=True)
    p.add_argument("--fpr", type=_rate, required=True, help="the target false-positive rate, e.g. 0.01")
    p.add_argument("-o", "--output", metavar="OUT.onnx", help="write the artifact with the new thresholds here")
    p.add_argument("--overwrite", action="store_true", help="replace an existing --output file (never MODEL)")
    add_scan_args(p)


def run(args) -> int:
    from clipscan.evaluation import set_threshold, threshold_text

    if args.output:
        check_output(args.output, args.overwrite)
    result = set_threshold(args.model, args.real, args.fpr, generated=args.generated, output=args.output,
                           backend=args.backend, batch_size=args.batch_size, progress=not args.quiet)
    print(threshold_text(result))
    return EXIT_ITEM_FAILED if result.failed else EXIT_OK
