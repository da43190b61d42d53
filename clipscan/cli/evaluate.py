"""`clipscan evaluate`: how accurate an artifact is on a labelled set of the user's images (needs
clipscan[evaluate]; --reference needs clipscan[export] too).

Exit 0: every file was scanned by every model; 1: some file failed (each is listed, and counted in the
metrics as a wrong answer); 2: the evaluation could not run.
"""
from __future__ import annotations

from . import EXIT_ITEM_FAILED, EXIT_OK
from .args import BACKENDS, add_decode, add_original_args, check_output, heads_from, non_negative_int, positive_int

AS_GIVEN = ", as given to export (with --reference)"


def add_labelled_args(p, *, real_required: bool = False) -> None:
    """--real DIR and --generated [NAME=]DIR, repeatable (evaluate and threshold)."""
    p.add_argument("--real", action="append", default=[], metavar="DIR", required=real_required,
                   help="folder (walked recursively) or file of real images; repeatable")
    p.add_argument("--generated", action="append", default=[], metavar="[NAME=]DIR",
                   help="folder or file of generated images, NAME= naming their generator (default: the folder's "
                        "name); repeatable, one per generator")


def add_scan_args(p) -> None:
    p.add_argument("--backend", default="auto", choices=BACKENDS, help="inference backend (default: auto)")
    p.add_argument("-b", "--batch-size", type=positive_int, default=16, help="images per inference batch (default 16)")


def add_arguments(p) -> None:
    from clipscan.evaluation.metrics import FPR_POINTS

    rates = " and ".join(f"{100 * r:g}%" for r in FPR_POINTS)
    p.description = ("Scan a labelled set with the artifact and report, per head: AUC, average precision, "
                     f"accuracy and balanced accuracy at the artifact's threshold, true-positive rate at {rates} "
                     "false-positive rate, per-generator results, the confusion matrix and bootstrap confidence "
                     "intervals (detection and attribution heads; attribution adds top-1 and the confusion between "
                     "generators); SRCC and PLCC against MOS labels (quality heads). --compare and --reference put "
                     "other artifacts and the PyTorch original side by side on the same files. Exit 0: every file "
                     "scanned; 1: some file failed (listed, and counted as a wrong answer); 2: could not run.")
    p.add_argument("model", metavar="MODEL", help="the .onnx artifact to evaluate")
    add_labelled_args(p)
    p.add_argument("--labels", metavar="FILE",
                   help="a .csv (with a header) or .jsonl list of path,label[,generator][,mos] instead of folders; "
                        "label 0/real or 1/generated/fake; paths relative to the file")
    p.add_argument("--compare", nargs="+", default=[], metavar="OTHER.onnx",
                   help="other artifacts (FP16, INT8, another export) evaluated on the same files; the table shows "
                        "each metric's difference from MODEL")
    p.add_argument("--reference", action="store_true",
                   help="also evaluate the PyTorch original given by --arch/--weights/--heads/--head "
                        "(needs clipscan[export])")
    add_original_args(p, required=False, as_given=AS_GIVEN)
    add_scan_args(p)
    add_decode(p)
    p.add_argument("--bootstrap", type=non_negative_int, default=1000, metavar="N",
                   help="bootstrap resamples for the confidence intervals (default 1000; 0: none)")
    p.add_argument("--seed", type=int, default=0, help="the bootstrap's random seed (default 0)")
    p.add_argument("--json", metavar="OUT", help="write every metric, curve and failed file as JSON")
    p.add_argument("--html", metavar="OUT", help="write a self-contained HTML page (curves, histograms, tables)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing --json or --html file")


def _labelled(args):
    from clipscan.evaluation import LabelsError, from_folders, from_list

    if args.labels and (args.real or args.generated):
        raise LabelsError("pass either --labels FILE or --real/--generated folders, not both")
    return from_list(args.labels) if args.labels else from_folders(args.real, args.generated)


def _reference(args, labelled):
    """The PyTorch original's answers as a Scored record (torch is imported only here)."""
    from clipscan.calibration.reference_scores import reference_scores
    from clipscan.evaluation import Scored
    from clipscan.export import load_reference

    if not (args.arch and args.weights):
        from clipscan.runtime.errors import InvalidArgumentError

        raise InvalidArgumentError("--reference needs the original's files: --arch, --weights and --heads/--head"
                                   + AS_GIVEN)
    heads = heads_from(args, required=True, as_given=AS_GIVEN)
    reference = load_reference(args.arch, args.weights, heads, quick_gelu=args.quick_gelu,
                               resize_mode=args.resize_mode)
    r = reference_scores(args.model, reference, labelled.paths, batch_size=args.batch_size,
                         progress=not args.quiet)
    return Scored("pytorch", r.manifest, {"name": "PyTorch original", "precision": "fp32 (torch)",
                                          "backend": "torch", "file": args.weights, "sha256": ""},
                  r.heads, r.rows, r.errors)


def run(args) -> int:
    from clipscan.evaluation import evaluate, text_report, write_outputs

    labelled = _labelled(args)
    for path in (args.json, args.html):
        if path:
            check_output(path, args.overwrite)
    scored = [_reference(args, labelled)] if args.reference else []
    results = evaluate([args.model, *args.compare], labelled, scored=scored, backend=args.backend,
                       batch_size=args.batch_size, decode=args.decode, n_boot=args.bootstrap, seed=args.seed,
                       progress=not args.quiet)
    print(text_report(results))
    write_outputs(results, labelled, json_path=args.json, html_path=args.html)
    for what, path in (("JSON", args.json), ("page", args.html)):
        if path:
            print(f"{what}: {path}")
    return EXIT_ITEM_FAILED if any(r["failed"] for r in results) else EXIT_OK
