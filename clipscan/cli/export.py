"""`clipscan export`: an open_clip or Hugging Face CLIP backbone + heads (local files) -> one ONNX artifact
with its manifest.

Calls `clipscan.export.export_model` (needs clipscan[export]) and prints the file written and its
check against PyTorch.
"""
from __future__ import annotations

from . import EXIT_OK
from .args import add_original_args, add_output, check_output, choices_help, heads_from, probability


def add_arguments(p) -> None:
    from clipscan.export.choices import EXPORT_PRECISIONS, GRAPH_STYLES
    from clipscan.runtime.manifest import ENSEMBLE_RULES, NATIVE, OWN_SIZE_MAX_PIXELS

    p.description = ("Load an open_clip or Hugging Face CLIP image tower from a local checkpoint and heads, and "
                     "write one ONNX graph (one backbone pass, all heads, dynamic batch, FP32 or FP16) "
                     "with its manifest inside; with --verify (and --int8), verify it and calibrate an INT8 "
                     "model in the same command. Nothing is downloaded.")
    from clipscan.export.weights_formats import WEIGHTS_FORMAT_CHOICES, WEIGHTS_FORMAT_HELP

    add_original_args(p, required=True)
    p.add_argument("--weights-format", choices=WEIGHTS_FORMAT_CHOICES, default=WEIGHTS_FORMAT_CHOICES[0],
                   help=WEIGHTS_FORMAT_HELP)
    p.add_argument("--uint8-input", action="store_true",
                   help="fold mean/std into the patch embedding: the graph takes uint8 RGB (4x less input data)")
    add_output(p, "the .onnx file to write")
    p.add_argument("--max-input-pixels", type=int, metavar="N", default=OWN_SIZE_MAX_PIXELS,
                   help=f"with --resize-mode {NATIVE}: the most pixels (height x width) of an image the graph is "
                        f"fed whole; a larger image gets a per-item 'too_large' error (memory grows with the pixels) "
                        f"(default {OWN_SIZE_MAX_PIXELS})")
    p.add_argument("--name", help="model name for the manifest (default: output file stem)")
    p.add_argument("--description", default="", help="free text for the manifest")
    p.add_argument("--mean", type=float, nargs=3, help="normalisation mean (default: from the config)")
    p.add_argument("--std", type=float, nargs=3, help="normalisation std (default: from the config)")
    p.add_argument("--threshold", type=float, help="decision threshold to store (default: from the heads file)")
    p.add_argument("--opset", type=int, default=18, help="ONNX opset (>= 17, default 18)")
    decision = p.add_mutually_exclusive_group()
    decision.add_argument("--primary", metavar="HEAD",
                          help="the decision head whose p_generated/logit/verdict a row reports (default: the first)")
    decision.add_argument("--ensemble", choices=tuple(ENSEMBLE_RULES),
                          help="the row's verdict from a rule over every decision head instead: "
                               + choices_help(ENSEMBLE_RULES) + " (the ensemble threshold is --ensemble-threshold)")
    p.add_argument("--ensemble-threshold", type=probability, default=0.5,
                   help="threshold of --ensemble mean_logit (default 0.5)")
    p.add_argument("--graph", choices=tuple(GRAPH_STYLES), default="auto",
                   help="how the transformer blocks are written: " + choices_help(GRAPH_STYLES, "auto"))
    p.add_argument("--precision", choices=tuple(EXPORT_PRECISIONS), default="fp32",
                   help=choices_help(EXPORT_PRECISIONS, "fp32") + " (fp16 is refused unless it passes the FP16 "
                        "fidelity gates; INT8 comes from clipscan calibrate, or --int8 below)")
    from .export_pipeline import add_pipeline_arguments

    add_pipeline_arguments(p)


def run(args) -> int:
    from clipscan.runtime.progress import Progress

    from .export_pipeline import check_pipeline, run_pipeline, wants_pipeline

    heads = heads_from(args, required=True)
    check_output(args.output, args.overwrite)
    kwargs = dict(description=args.description, quick_gelu=args.quick_gelu, opset=args.opset,
                  mean=args.mean, std=args.std, threshold=args.threshold, uint8_input=args.uint8_input,
                  precision=args.precision, graph=args.graph, primary=args.primary,
                  ensemble=args.ensemble, ensemble_threshold=args.ensemble_threshold,
                  resize_mode=args.resize_mode, weights_format=args.weights_format,
                  max_input_pixels=args.max_input_pixels)
    if wants_pipeline(args):
        check_pipeline(args)
        return run_pipeline(args, heads, kwargs)
    # a bar over the export's stages on stderr when it is a terminal (not with -q), from the start: importing
    # torch and open_clip alone takes seconds
    with Progress("export", unit="steps", note="importing torch and open_clip", enabled=not args.quiet,
                  show_errors=False) as bar:
        from clipscan.export import export_model
        from clipscan.export.exporter import export_stages

        bar.set_total(1 + len(export_stages(args.precision)))
        bar.update()
        report = export_model(args.arch, args.weights, heads, args.output, name=args.name, progress=bar, **kwargs)
    print(f"wrote {report.path} ({report.path.stat().st_size / 1e6:.1f} MB, {args.precision}); "
          f"ONNX Runtime vs PyTorch: embedding cosine >= {report.checks['embedding_cosine_min']:.7f}, "
          f"max |diff| {max(report.checks['max_abs_diff'].values()):.2e}")
    if args.precision == "fp16":
        ort_cpu, half = report.checks["onnxruntime_cpu"], report.checks["torch_half_cpu"]
        print(f"FP16 vs PyTorch FP32 on {report.checks['images']} images, embedding cosine mean/worst: "
              f"ONNX Runtime CPU {ort_cpu['embedding_cosine_mean']:.7f}/{ort_cpu['embedding_cosine_min']:.7f} "
              f"(its CPU kernels are mostly float32), PyTorch float16 {half['embedding_cosine_mean']:.7f}/"
              f"{half['embedding_cosine_min']:.7f}")
    return EXIT_OK
