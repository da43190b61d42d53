"""`clipscan verify`: compare an exported artifact with its PyTorch original on images (needs clipscan[export]).

Loads the original (`clipscan.export.load_reference`), runs `clipscan.calibration.verify.verify`
(which checks its own arguments), prints the summary, and optionally runs and records the draft
JPEG decoding check. Exit 0: every gate passed; 1: a gate failed; 2: verify could not run.
"""
from __future__ import annotations

import json
from pathlib import Path

from clipscan.measure.thresholds import DEFAULT_MARGIN, DRAFT_MIN_IMAGES

from . import EXIT_ITEM_FAILED, EXIT_OK
from .args import AS_RECORDED, add_original_args, heads_from, non_negative, positive_int, probability


def add_arguments(p) -> None:
    p.description = ("Run the artifact (ONNX Runtime, CPU) and the PyTorch FP32 model it was exported "
                     "from on the same decoded images, check the fidelity gates (sources, "
                     "preprocessing, embedding cosine, decisions, quality SRCC, batch invariance, "
                     "determinism, laundered copies), and write report.json and report.html. "
                     "The PyTorch original is what export was given, recorded in the artifact's manifest "
                     "(a flag overrides one part of it). "
                     "Exit 0: every gate passed; 1: a gate failed; 2: verify could not run.")
    p.add_argument("model", metavar="MODEL", help="the exported .onnx artifact")
    add_original_args(p, required=False, as_given=AS_RECORDED)
    p.add_argument("--images", required=True, action="append", metavar="DIR",
                   help="folder (walked recursively) or file of images to compare on; repeatable")
    p.add_argument("--report", metavar="DIR", help="where report.json and report.html go "
                                                  "(default: ./<model file stem>-verify)")
    p.add_argument("--threshold", type=probability,
                   help="the decision threshold the reference uses, if export was given --threshold "
                        "(default: the heads file's)")
    p.add_argument("--mean", type=float, nargs=3, help="the normalisation mean export was given, if any")
    p.add_argument("--std", type=float, nargs=3, help="the normalisation std export was given, if any")
    p.add_argument("--margin", type=non_negative, default=DEFAULT_MARGIN,
                   help="no decision may flip for an image whose reference logit is farther than this from the "
                        "threshold's logit (default %(default)s)")
    p.add_argument("-b", "--batch-size", type=positive_int, default=16, help="images per inference batch (default 16)")
    p.add_argument("--no-launder", action="store_true",
                   help="skip the laundered copies (JPEG 75, blur, downscale + JPEG 85)")
    p.add_argument("--draft-check", action="store_true",
                   help="also compare draft (reduced-size) JPEG decoding with exact decoding on the JPEGs among "
                        "--images that draft decoding changes (runtime against runtime)")
    p.add_argument("--record-draft", action="store_true",
                   help="write the draft check's result into the artifact's manifest (implies --draft-check); "
                        "`clipscan scan` (--decode auto) then decodes drafts for this artifact if it passed")
    p.add_argument("--draft-min-images", type=positive_int, default=DRAFT_MIN_IMAGES, metavar="N",
                   help="affected images the draft check needs before it can pass (default %(default)s)")


def run(args) -> int:
    from clipscan.calibration.verify import verify
    from clipscan.export import load_reference
    from clipscan.export.recorded import original_from_manifest
    from clipscan.runtime import load_artifact

    # the PyTorch original: what export recorded in the manifest, unless a flag names it
    o = original_from_manifest(args.model, load_artifact(args.model).manifest, arch=args.arch, weights=args.weights,
                               heads=heads_from(args), resize_mode=args.resize_mode, quick_gelu=args.quick_gelu,
                               threshold=args.threshold, mean=args.mean, std=args.std)
    reference = load_reference(o.arch, o.weights, o.heads, quick_gelu=o.quick_gelu, threshold=o.threshold,
                               resize_mode=o.resize_mode)
    report_dir = args.report or f"{Path(args.model).stem}-verify"
    draft = None
    if args.draft_check or args.record_draft:
        from clipscan.calibration.draft_check import check_draft, record_draft

        # first, so that --record-draft's rewrite of the manifest happens before verify hashes the file:
        # the sha256 in the report is then the file's as it is left
        draft = check_draft(args.model, args.images, batch_size=args.batch_size, min_images=args.draft_min_images)
        if args.record_draft:
            record_draft(args.model, draft)
    report = verify(args.model, reference, args.images, report_dir, margin=args.margin, batch_size=args.batch_size,
                    launder=not args.no_launder, mean=o.mean, std=o.std, progress=not args.quiet)
    print(report.summary())
    if draft is not None:
        from clipscan.calibration.draft_check import summary

        Path(report_dir).mkdir(parents=True, exist_ok=True)
        (Path(report_dir) / "draft_check.json").write_text(json.dumps(draft, indent=1))
        print(summary(draft))
        if args.record_draft:
            print(f"recorded in {args.model}: --decode auto will use {'draft' if draft['passed'] else 'exact'} "
                  "decoding for this artifact (recorded before the comparison, so the report's sha256 is the "
                  "file's as it is now)")
    return EXIT_OK if report.passed else EXIT_ITEM_FAILED
