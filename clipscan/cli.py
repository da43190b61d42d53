"""The `clipscan` command line: scan, info, export, backends.

Exit codes: 0 every input scanned; 1 at least one input failed (its row says why)
or nothing was found to scan; 2 the command could not start (bad arguments, model
or backend).
"""
from __future__ import annotations

import argparse
import json
import logging
import sys
import time

from clipscan import __version__

log = logging.getLogger("clipscan")

EXIT_OK, EXIT_ITEM_FAILED, EXIT_USAGE = 0, 1, 2


NO_SPIN_HELP = ("let ONNX Runtime's CPU worker threads sleep between calls instead of spinning: faster when "
                "decoding large images competes for the cores (12 MP JPEGs with --decode draft: +10%% here), "
                "slower for small images (see the README)")

def _add_scan(sub) -> None:
    p = sub.add_parser("scan", help="scan image files and folders (recursive)",
                       description="Scan files and folders; writes one line per input as results arrive.")
    p.add_argument("paths", nargs="+", metavar="PATH", help="image files and/or folders")
    p.add_argument("-m", "--model", help="exported .onnx artifact (default: the bundled demo model)")
    p.add_argument("-o", "--output", help="write results to this file instead of stdout (never overwritten "
                                          "unless --overwrite; --resume appends)")
    again = p.add_mutually_exclusive_group()
    again.add_argument("--resume", action="store_true",
                       help="continue an interrupted scan: skip inputs that already have a row in --output")
    again.add_argument("--overwrite", action="store_true", help="replace an existing --output file")
    p.add_argument("-f", "--format", choices=("jsonl", "csv"), default="jsonl", help="output format (default jsonl)")
    p.add_argument("-b", "--batch-size", type=int, default=16, help="images per inference batch (default 16)")
    p.add_argument("--backend", default="auto", choices=("auto", "tensorrt", "ort-tensorrt", "cuda", "cpu"),
                   help="auto (default) tries tensorrt, ort-tensorrt, cuda, cpu in order and logs why it skips "
                        "each; a named backend that cannot start is an error (`clipscan backends` lists them)")
    p.add_argument("--no-fallback", action="store_true", help="with auto: stop at the first backend that fails")
    p.add_argument("--max-batch", type=int, help="GPU engines: largest batch the engine accepts (default: --batch-size)")
    p.add_argument("--cache-dir", help="GPU engine and timing caches (default: $CLIPSCAN_CACHE_DIR or ~/.cache/clipscan)")
    p.add_argument("--device", type=int, default=0, help="CUDA device index (default 0)")
    p.add_argument("--threads", type=int, help="inference threads (default: the backend decides)")
    p.add_argument("--workers", type=int, help="decode/preprocess threads (default: min(4, cores))")
    p.add_argument("--threshold", type=float, help="override the manifest's decision threshold (probability)")
    p.add_argument("--max-pixels", type=int, help="refuse images larger than this many pixels (default 179 M)")
    p.add_argument("--all-files", action="store_true",
                   help="in folders, scan every file, not only those with an image extension")
    p.add_argument("--with-embedding", action="store_true", help="add the image embedding to each JSONL row")
    p.add_argument("--no-spin", action="store_true",
                   help=NO_SPIN_HELP)
    p.add_argument("--decode", choices=("auto", "exact", "draft"), default="auto",
                   help="exact: full-size decoding; draft: JPEGs decoded at a reduced DCT scale that still covers "
                        "the resize target (faster on camera images); auto (default): draft only if the artifact "
                        "records a passing draft check (clipscan verify --draft-check --record-draft), else exact")


def _add_info(sub) -> None:
    p = sub.add_parser("info", help="print the manifest of a model artifact")
    p.add_argument("model", nargs="?", help="exported .onnx artifact (default: the bundled demo model)")
    p.add_argument("--json", action="store_true", help="print the raw manifest JSON")


HEAD_FORMATS_HELP = ("a head in a published format: univfd:FILE, cozzolino:FILE, agiqa-tang:FILE, agiqa-fu:FILE, "
                     "captions:FILE, clipscan:FILE; repeatable (several heads share one backbone pass)")


def _add_original_args(p, *, required: bool, as_given: str = "") -> None:
    """--arch/--weights/--heads/--head/--quick-gelu/--gelu: the files of the PyTorch original."""
    p.add_argument("--arch", required=required,
                   help="open_clip model name (e.g. ViT-B-32) or a model-config .json" + as_given)
    p.add_argument("--weights", required=required, help="local backbone checkpoint (.pt/.bin/.safetensors)" + as_given)
    p.add_argument("--heads", help="clipscan heads file (see clipscan.export.heads)" + as_given)
    p.add_argument("--head", action="append", default=[], metavar="FORMAT:PATH", help=HEAD_FORMATS_HELP + as_given)
    act = p.add_mutually_exclusive_group()
    act.add_argument("--quick-gelu", dest="quick_gelu", action="store_true", default=None,
                     help="the checkpoint uses QuickGELU (OpenAI weights); default: from the config")
    act.add_argument("--gelu", dest="quick_gelu", action="store_false", help="the checkpoint uses plain GELU")


def _add_export(sub) -> None:
    p = sub.add_parser("export", help="export an open_clip backbone + heads to one ONNX artifact (needs clipscan[export])",
                       description="Load an open_clip image tower from a local checkpoint and clipscan heads, and "
                                   "write one ONNX graph (one backbone pass, all heads, dynamic batch, FP32 or FP16) "
                                   "with its manifest inside. Nothing is downloaded.")
    _add_original_args(p, required=True)
    p.add_argument("--uint8-input", action="store_true",
                   help="fold mean/std into the patch embedding: the graph takes uint8 RGB (4x less input data)")
    p.add_argument("-o", "--output", required=True, help="the .onnx file to write")
    p.add_argument("--name", help="model name for the manifest (default: output file stem)")
    p.add_argument("--description", default="", help="free text for the manifest")
    p.add_argument("--mean", type=float, nargs=3, help="normalisation mean (default: from the config)")
    p.add_argument("--std", type=float, nargs=3, help="normalisation std (default: from the config)")
    p.add_argument("--threshold", type=float, help="decision threshold to store (default: from the heads file)")
    p.add_argument("--opset", type=int, default=18, help="ONNX opset (>= 17, default 18)")
    p.add_argument("--graph", choices=("auto", "lean", "stock"), default="auto",
                   help="lean: transformer blocks written export-friendly (same function, 2-D Gemms, fewer "
                        "Transposes; faster in ONNX Runtime, INT8 especially); stock: open_clip's own forward as "
                        "traced; auto (default): lean when every block is open_clip's standard block")
    p.add_argument("--precision", choices=("fp32", "fp16"), default="fp32",
                   help="fp32 (default) or fp16: float16 weights and compute, LayerNorm/Softmax and the heads in "
                        "float32, float32 outputs; refused unless it passes the FP16 fidelity gates")


def _add_verify(sub) -> None:
    p = sub.add_parser("verify", help="compare an exported artifact with its PyTorch original on images "
                                      "(needs clipscan[export])",
                       description="Run the artifact (ONNX Runtime, CPU) and the PyTorch FP32 model it was exported "
                                   "from on the same decoded images, check the fidelity gates (sources, "
                                   "preprocessing, embedding cosine, decisions, quality SRCC, batch invariance, "
                                   "determinism, laundered copies), and write report.json and report.html. "
                                   "Exit 0: every gate passed; 1: a gate failed; 2: verify could not run.")
    p.add_argument("model", metavar="MODEL", help="the exported .onnx artifact")
    _add_original_args(p, required=True, as_given=", as given to export")
    p.add_argument("--images", required=True, action="append", metavar="DIR",
                   help="folder (walked recursively) or file of images to compare on; repeatable")
    p.add_argument("--report", metavar="DIR", help="where report.json and report.html go "
                                                  "(default: ./<model file stem>-verify)")
    p.add_argument("--threshold", type=float,
                   help="the decision threshold the reference uses, if export was given --threshold "
                        "(default: the heads file's)")
    p.add_argument("--mean", type=float, nargs=3, help="the normalisation mean export was given, if any")
    p.add_argument("--std", type=float, nargs=3, help="the normalisation std export was given, if any")
    p.add_argument("--margin", type=float, default=0.5,
                   help="no decision may flip for an image whose reference logit is farther than this from the "
                        "threshold's logit (default 0.5)")
    p.add_argument("-b", "--batch-size", type=int, default=16, help="images per inference batch (default 16)")
    p.add_argument("--no-launder", action="store_true",
                   help="skip the laundered copies (JPEG 75, blur, downscale + JPEG 85)")
    p.add_argument("--draft-check", action="store_true",
                   help="also compare draft (reduced-size) JPEG decoding with exact decoding on the JPEGs among "
                        "--images that draft decoding changes (runtime against runtime)")
    p.add_argument("--record-draft", action="store_true",
                   help="write the draft check's result into the artifact's manifest (implies --draft-check); "
                        "`clipscan scan` (--decode auto) then decodes drafts for this artifact if it passed")
    p.add_argument("--draft-min-images", type=int, default=200, metavar="N",
                   help="affected images the draft check needs before it can pass (default 200)")


def _add_bench(sub) -> None:
    p = sub.add_parser("bench", help="benchmark artifacts: latency, throughput, memory, cold start, fidelity",
                       description="Time every artifact on every available backend (model-only: inference on "
                                   "preprocessed batches in memory; e2e: read, decode, preprocess, infer, "
                                   "postprocess through the Scanner), next to PyTorch eager FP32 when "
                                   "--torch-arch/--torch-weights/--torch-heads are given, with each artifact's "
                                   "fidelity; prints a table and writes JSON and a PNG plot. Speed is reported, "
                                   "never judged; exit 0 unless the benchmark could not run.")
    p.add_argument("models", nargs="+", metavar="MODEL", help="exported .onnx artifacts (e.g. the FP32 and FP16 export)")
    p.add_argument("--batch-sizes", default="1,8,32", help="comma-separated batch sizes (default 1,8,32)")
    p.add_argument("--backends", help="comma-separated backends (default: every available one)")
    p.add_argument("--mode", choices=("model", "e2e", "both"), default="both", help="default both")
    p.add_argument("--images", metavar="DIR", help="benchmark images (default: 16 synthetic 640x480 JPEGs)")
    p.add_argument("--json", metavar="OUT.json", help="write the full results as JSON")
    p.add_argument("--plot", metavar="OUT.png", help="write throughput against batch size as a PNG")
    p.add_argument("--torch-arch", help="open_clip architecture of the PyTorch original (needs clipscan[export])")
    p.add_argument("--torch-weights", help="the checkpoint the artifacts were exported from")
    p.add_argument("--torch-heads", action="append", default=[], metavar="H",
                   help="heads file or FORMAT:PATH, as given to export (repeatable)")
    p.add_argument("--no-spin", action="store_true",
                   help=NO_SPIN_HELP)
    p.add_argument("--decode", choices=("exact", "draft"), default="exact",
                   help="decoding for the e2e ONNX Runtime runs (default exact; draft = reduced-size JPEG decoding)")
    p.add_argument("--camera", type=int, default=0, metavar="N",
                   help="also benchmark N camera-sized (12 MP) JPEGs: decode exact vs draft, e2e vs the plain "
                        "pipeline, draft fidelity")
    p.add_argument("--camera-dir", metavar="DIR", help="where the camera-sized JPEGs are written/reused")
    p.add_argument("--camera-models", metavar="A,B", help="artifacts of the camera section, comma-separated "
                                                          "(default: every MODEL)")
    p.add_argument("--min-iters", type=int, default=10, help="timed runs per measurement, at least (default 10)")
    p.add_argument("--min-seconds", type=float, default=2.0, help="timed seconds per measurement, at least (default 2)")
    p.add_argument("--max-seconds", type=float, default=20.0, help="time box per measurement (default 20 s)")
    p.add_argument("--warmup", type=int, default=2, help="untimed warm-up runs (default 2)")
    p.add_argument("--settle", type=float, default=0.2, metavar="S",
                   help="untimed calls for S seconds at the start of each candidate's turn, so other "
                        "candidates' spinning worker threads are gone before timing (default 0.2)")
    p.add_argument("--block", type=float, default=0.5, metavar="S",
                   help="timed calls per candidate's turn, for at least S seconds (default 0.5)")
    p.add_argument("--e2e-passes", type=int, default=3, help="timed folder passes in e2e mode, at least (default 3)")
    p.add_argument("--workers", type=int, help="decode threads of the Scanner in e2e mode (default: min(4, cores))")
    p.add_argument("--no-cold-start", action="store_true", help="skip the cold-start subprocess runs")


def _add_calibrate(sub) -> None:
    p = sub.add_parser("calibrate", help="post-training INT8 (QDQ) of an FP32 artifact, with its fidelity report "
                                         "(needs clipscan[export])",
                       description="Calibrate an FP32 artifact on a folder of images (preprocessed as its manifest "
                                   "says) and write an INT8 QDQ artifact whose manifest records the calibration. "
                                   "With --arch/--weights/--heads and --val-images, the fidelity report of "
                                   "`clipscan verify` runs on the result and its gates go into the manifest. "
                                   "Exit 0: written (and every gate passed); 1: an INT8 gate failed; 2: could not run.")
    p.add_argument("model", metavar="MODEL", help="the FP32 .onnx artifact written by `clipscan export`")
    p.add_argument("--images", required=True, action="append", metavar="DIR",
                   help="calibration images: folder (walked recursively) or file; repeatable")
    p.add_argument("-o", "--output", required=True, help="the INT8 .onnx file to write")
    p.add_argument("--target", choices=("cpu", "tensorrt"), default="cpu",
                   help="cpu (default): uint8 activations, int8 per-channel weights; tensorrt: symmetric int8 "
                        "activations and weights with dedicated Q/DQ pairs")
    p.add_argument("--recipe", choices=("smooth", "stock", "percentile", "matmul", "dynamic"), default="smooth",
                   help="smooth (default): SmoothQuant rescaling of LayerNorm->MatMul pairs, percentile "
                        "calibration, MatMul/Gemm/Conv only, projection and heads in float; stock: min-max, "
                        "every op; percentile; matmul: min-max, MatMul/Gemm/Conv only; dynamic: weights only")
    p.add_argument("--method", choices=("minmax", "percentile", "entropy", "dynamic"),
                   help="override the recipe's calibration method")
    p.add_argument("--percentile", type=float, default=99.999, help="percentile calibration's percentile")
    p.add_argument("--smooth-alpha", type=float, help="override the SmoothQuant migration strength (0..1)")
    p.add_argument("--exclude", action="append", default=[], metavar="NODE", help="keep this node in float (repeatable)")
    p.add_argument("--search", action="store_true",
                   help="accuracy-aware search: while the INT8 bar fails on --val-images (against the FP32 "
                        "graph), keep the layers adding the most error in float and quantize again")
    p.add_argument("-b", "--batch-size", type=int, default=8, help="calibration batch size (all batches equal)")
    p.add_argument("--max-images", type=int, help="use at most this many calibration images")
    p.add_argument("--cache-dir", help="calibration tensor cache (default: $CLIPSCAN_CACHE_DIR or ~/.cache/clipscan)")
    p.add_argument("--no-cache", action="store_true", help="neither read nor write the calibration cache")
    p.add_argument("--no-progress", action="store_true", help="no progress bar on stderr")
    g = p.add_argument_group("fidelity report (as `clipscan verify`)")
    g.add_argument("--val-images", action="append", default=[], metavar="DIR",
                   help="validation images, disjoint from the calibration images; repeatable")
    _add_original_args(g, required=False, as_given=", as given to export")
    g.add_argument("--threshold", type=float, help="the decision threshold export was given, if any")
    g.add_argument("--mean", type=float, nargs=3, help="the normalisation mean export was given, if any")
    g.add_argument("--std", type=float, nargs=3, help="the normalisation std export was given, if any")
    g.add_argument("--report", metavar="DIR", help="where report.json/html go (default: ./<output stem>-verify)")
    g.add_argument("--no-launder", action="store_true", help="skip the laundered copies in the report")
    g.add_argument("--allow-overlap", action="store_true",
                   help="only warn (instead of refusing) when calibration and validation images overlap")


def _verbosity(defaults: bool) -> argparse.ArgumentParser:
    """-v/-q, accepted before or after the command."""
    p = argparse.ArgumentParser(add_help=False)
    p.add_argument("-v", "--verbose", action="count", default=0 if defaults else argparse.SUPPRESS,
                   help="more log output (-vv for debug)")
    p.add_argument("-q", "--quiet", action="store_true", default=False if defaults else argparse.SUPPRESS,
                   help="only errors on stderr")
    return p


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="clipscan", description=__doc__.split("\n")[0], parents=[_verbosity(True)])
    parser.add_argument("--version", action="version", version=f"clipscan {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    common = _verbosity(False)
    add_parser = sub.add_parser
    sub.add_parser = lambda *a, **k: add_parser(*a, parents=[common], **k)  # every command takes -v/-q
    _add_scan(sub)
    _add_info(sub)
    _add_export(sub)
    _add_verify(sub)
    _add_bench(sub)
    _add_calibrate(sub)
    sub.add_parser("backends", help="list inference backends and whether each can run here")
    return parser


def cmd_scan(args) -> int:
    from clipscan.runtime import Scanner
    from clipscan.runtime.decode import DEFAULT_MAX_PIXELS
    from clipscan.runtime.results import WRITERS, columns_for

    import os

    from clipscan.runtime.results import OUTPUT_ERRORS, completed_paths

    if args.batch_size < 1:
        raise ValueError("--batch-size must be >= 1")
    done: set[str] = set()
    mode = "w"
    if args.resume and not args.output:
        raise ValueError("--resume needs --output FILE: the file whose rows say what is already done")
    if args.output and os.path.exists(args.output) and os.path.getsize(args.output) > 0:
        if args.resume:
            previous = completed_paths(args.output, args.format)
            log.info("resuming: %d input(s) already in %s are skipped", len(previous), args.output)
            done = previous | {os.path.abspath(p) for p in previous}
            mode = "a"
        elif not args.overwrite:
            raise ValueError(f"{args.output} already exists; pass --resume to continue the scan that wrote it, "
                             "or --overwrite to replace it")
    scanner = Scanner(args.model, backend=args.backend, fallback=not args.no_fallback, batch_size=args.batch_size,
                      threads=args.threads, workers=args.workers, threshold=args.threshold,
                      max_pixels=args.max_pixels or DEFAULT_MAX_PIXELS, max_batch=args.max_batch,
                      cache_dir=args.cache_dir, device_id=args.device, decode=args.decode,
                      spin=not args.no_spin)
    m = scanner.manifest
    log.info("model %s (%s, %s) on %s; decoding %s", m.name, m.backbone.get("id"), m.precision,
             scanner.backend_name, scanner.decode_reason)
    if scanner.artifact.is_demo:
        log.warning("using the bundled DEMO model: its scores show the pipeline works, they are not a real "
                    "detector's (pass --model to scan with an exported model)")
    if args.output:
        out = open(args.output, mode, encoding="utf-8", errors=OUTPUT_ERRORS, newline="")
    else:
        out = sys.stdout
        if hasattr(out, "reconfigure"):
            out.reconfigure(errors=OUTPUT_ERRORS)
    total = failed = 0
    start = time.perf_counter()
    try:
        writer = WRITERS[args.format](out, with_embedding=args.with_embedding, header=mode == "w",
                                      columns=columns_for(scanner.manifest))
        for result in scanner.scan(args.paths, all_files=args.all_files, skip=done):
            writer.write(result)
            total += 1
            if result.error:
                failed += 1
                log.debug("%s: %s", result.path, result.error)
    finally:
        if out is not sys.stdout:
            out.close()
        scanner.close()
    seconds = time.perf_counter() - start
    stats = scanner.walk_stats
    skipped = f"; skipped {stats.skipped_non_image} non-image file(s)" if stats.skipped_non_image else ""
    log.info("scanned %d input(s): %d ok, %d failed in %.2f s (%.1f images/s) on %s%s", total, total - failed,
             failed, seconds, (total - failed) / seconds if seconds > 0 else 0.0, scanner.backend_name, skipped)
    if total == 0 and not done:
        log.error("nothing to scan: no image files under %s (use --all-files to scan every file)", args.paths)
        return EXIT_ITEM_FAILED
    return EXIT_ITEM_FAILED if failed else EXIT_OK


def _describe_manifest(artifact) -> str:
    m = artifact.manifest
    lines = [
        f"model        {m.name}" + ("  [bundled demo model: not a real detector]" if artifact.is_demo else ""),
        f"file         {artifact.path}",
        f"sha256       {artifact.sha256()}",
        f"schema       {m.schema_version}    precision {m.precision}    opset {m.opset}",
        f"backbone     {m.backbone.get('id')}  activation={m.backbone.get('activation')}  "
        f"embed_dim={m.backbone.get('embed_dim')}",
    ]
    if m.description:
        lines.append(f"description  {m.description}")
    i = m.input
    norm = "folded into the graph" if i.folded else f"mean={list(i.mean)} std={list(i.std)}"
    lines.append(f"input        {i.name} {i.layout} {i.dtype} {i.size[0]}x{i.size[1]} {i.color}, {norm}")
    p = m.preprocess
    lines.append(f"preprocess   exif={p.exif_orientation}; resize {p.resize_mode} {p.resize_size[0]}x{p.resize_size[1]} "
                 f"{p.interpolation}; crop {p.crop_mode} {p.crop_size[0]}x{p.crop_size[1]} pad={p.pad_fill}; "
                 f"RGB (alpha {p.alpha})")
    for h in m.heads:
        outs = ", ".join(f"{role}={name}" for role, name in h.outputs.items())
        extra = (f"labels={list(h.labels)} threshold={h.threshold}" if h.task in ("detection", "attribution")
                 else f"scale={h.scale}")
        lines.append(f"head         {h.name} ({h.task}): {outs}; {extra}")
    if m.embedding:
        lines.append(f"embedding    {m.embedding['output']} dim={m.embedding.get('dim')} "
                     f"normalized={m.embedding.get('normalized')}")
    for key, src in m.sources.items():
        lines.append(f"source       {key}: {src.get('file')} sha256={src.get('sha256')}")
    lines.append("tools        " + ", ".join(f"{k} {v}" for k, v in m.tools.items()))
    lines.append(f"calibration  {m.calibration or 'none (not quantized)'}")
    draft = m.draft_decoding_record()
    lines.append("draft JPEG   " + ("no check recorded: scans decode exactly unless --decode draft" if not draft else
                                    f"{'passed' if draft.get('passed') else 'not passed'} on {draft.get('n_affected')} "
                                    f"images (agreement {draft.get('agreement')}, cosine mean "
                                    f"{draft.get('cosine_mean')}): --decode auto uses "
                                    f"{'draft' if draft.get('passed') else 'exact'}"))
    lines.append(f"created      {m.created_utc}")
    return "\n".join(lines)


def cmd_info(args) -> int:
    from clipscan.runtime import load_artifact

    artifact = load_artifact(args.model)
    if args.json:
        print(json.dumps(artifact.manifest.to_dict(), indent=2))
    else:
        print(_describe_manifest(artifact))
    return EXIT_OK


def cmd_export(args) -> int:
    try:
        from clipscan.export import export_model
    except ImportError as e:  # torch/open_clip/onnx missing or broken
        from clipscan.runtime.errors import MissingExtraError

        if isinstance(e.__cause__, MissingExtraError):
            raise e.__cause__ from None
        raise
    heads = ([args.heads] if args.heads else []) + list(args.head)
    if not heads:
        raise ValueError("no head given: pass --heads FILE (clipscan format) and/or --head FORMAT:PATH")
    report = export_model(args.arch, args.weights, heads, args.output, name=args.name,
                          description=args.description, quick_gelu=args.quick_gelu, opset=args.opset,
                          mean=args.mean, std=args.std, threshold=args.threshold, uint8_input=args.uint8_input,
                          precision=args.precision, graph=args.graph)
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


def cmd_verify(args) -> int:
    from pathlib import Path

    heads = ([args.heads] if args.heads else []) + list(args.head)
    if not heads:
        raise ValueError("no head given: pass --heads FILE (clipscan format) and/or --head FORMAT:PATH, "
                         "as given to export")
    if args.batch_size < 1:
        raise ValueError("--batch-size must be >= 1")
    if args.margin < 0:
        raise ValueError("--margin must be >= 0")
    if not Path(args.model).is_file():
        raise FileNotFoundError(f"model file {args.model} does not exist")
    for folder in args.images:
        if not Path(folder).exists():
            raise FileNotFoundError(f"image folder {folder} does not exist")
    from clipscan.calibration.verify import verify
    from clipscan.export import load_reference

    reference = load_reference(args.arch, args.weights, heads, quick_gelu=args.quick_gelu, threshold=args.threshold)
    report_dir = args.report or f"{Path(args.model).stem}-verify"
    report = verify(args.model, reference, args.images, report_dir, margin=args.margin, batch_size=args.batch_size,
                    launder=not args.no_launder, mean=args.mean, std=args.std)
    print(report.summary())
    if args.draft_check or args.record_draft:
        from clipscan.calibration.draft_check import check_draft, record_draft, summary

        draft = check_draft(args.model, args.images, batch_size=args.batch_size, min_images=args.draft_min_images)
        Path(report_dir).mkdir(parents=True, exist_ok=True)
        (Path(report_dir) / "draft_check.json").write_text(json.dumps(draft, indent=1))
        print(summary(draft))
        if args.record_draft:
            record_draft(args.model, draft)
            print(f"recorded in {args.model}: --decode auto will use {'draft' if draft['passed'] else 'exact'} "
                  "decoding for this artifact")
    return EXIT_OK if report.passed else EXIT_ITEM_FAILED


def cmd_bench(args) -> int:
    from clipscan.runtime.bench import BenchConfig, format_table, parse_list, run_benchmark, write_json, write_plot

    cfg = BenchConfig(models=list(args.models), batch_sizes=parse_list(args.batch_sizes, int),
                      backends=parse_list(args.backends) if args.backends else None, mode=args.mode,
                      images=args.images, torch_arch=args.torch_arch, torch_weights=args.torch_weights,
                      torch_heads=list(args.torch_heads), warmup=args.warmup, min_iters=args.min_iters,
                      min_seconds=args.min_seconds, max_seconds=args.max_seconds, e2e_passes=args.e2e_passes,
                      cold_start=not args.no_cold_start, camera=args.camera, camera_dir=args.camera_dir,
                      decode=args.decode, workers=args.workers, spin=not args.no_spin, settle_seconds=args.settle,
                      block_seconds=args.block, camera_models=parse_list(args.camera_models) if args.camera_models else None)
    report = run_benchmark(cfg)
    print(format_table(report))
    if args.json:
        print(f"wrote {write_json(report, args.json)}")
    if args.plot:
        written = write_plot(report, args.plot)
        if written:
            print(f"wrote {written}")
    return EXIT_OK


def cmd_calibrate(args) -> int:
    from pathlib import Path

    if args.batch_size < 1:
        raise ValueError("--batch-size must be >= 1")
    if not Path(args.model).is_file():
        raise FileNotFoundError(f"model file {args.model} does not exist")
    for folder in list(args.images) + list(args.val_images):
        if not Path(folder).exists():
            raise FileNotFoundError(f"image folder {folder} does not exist")
    heads = ([args.heads] if args.heads else []) + list(args.head)
    want_report = bool(args.val_images)
    if want_report and not (args.arch and args.weights and heads):
        raise ValueError("the fidelity report (--val-images) needs the PyTorch original: --arch, --weights and "
                         "--heads/--head, as given to export")
    if args.search and not args.val_images:
        raise ValueError("--search needs --val-images to measure the error on")
    try:
        from clipscan.calibration import calib_data, int8
    except ImportError as e:
        from clipscan.runtime.errors import MissingExtraError

        if isinstance(e.__cause__, MissingExtraError):
            raise e.__cause__ from None
        raise
    import dataclasses

    from clipscan.runtime.artifact import load_artifact

    artifact = load_artifact(args.model)
    manifest, sha = artifact.manifest, artifact.sha256()
    if want_report:
        overlap = calib_data.overlap(args.images, args.val_images)
        if overlap:
            msg = (f"{len(overlap)} validation image(s) are also calibration images (same content), e.g. "
                   f"{overlap[0]}: the fidelity report would flatter the INT8 model")
            if not args.allow_overlap:
                raise ValueError(msg + "; use disjoint folders (or --allow-overlap)")
            log.warning("%s", msg)
    cache = False if args.no_cache else args.cache_dir
    cset = calib_data.load_calibration_set(manifest, sha, args.images, max_images=args.max_images, cache=cache,
                                           progress=not args.no_progress)
    log.info("calibration set: %d image(s) (%s), sha256 %s%s", len(cset), "cached" if cset.from_cache else "read",
             cset.images_hash[:16], f"; {len(cset.failed)} unreadable" if cset.failed else "")
    recipe = dataclasses.replace(int8.RECIPES[args.recipe], percentile=args.percentile,
                                 exclude=list(args.exclude), name="")
    if args.method:
        recipe = dataclasses.replace(recipe, method=args.method)
    if args.smooth_alpha is not None:
        recipe = dataclasses.replace(recipe, smooth_alpha=args.smooth_alpha)
    if args.search:
        from clipscan.calibration.search import search

        vset = calib_data.load_calibration_set(manifest, sha, args.val_images, cache=cache,
                                               progress=not args.no_progress)
        found = search(args.model, args.output, cset, vset.tensors, recipe, args.target, batch_size=args.batch_size,
                       progress=not args.no_progress)
        result = found["result"]
        result.calibration["search"] = found["history"]
        if any("speedup_vs_fp32" in step for step in found["history"]):
            from clipscan.runtime.machine import describe_cpu

            result.calibration["search_speed_measured_on"] = describe_cpu()
            print(f"search speed ratios measured on {result.calibration['search_speed_measured_on']}")
        for step in found["history"]:
            speed = (f", {step['speedup_vs_fp32']:.2f}x FP32 ORT at batch {step['speed_batch']}"
                     if "speedup_vs_fp32" in step else "")
            print(f"search round {step['round']} ({step['recipe']}): cosine mean {step.get('cosine_mean', 0):.5f} "
                  f"worst {step.get('cosine_worst', 0):.5f}, agreement {step.get('agreement', 0):.4f}, "
                  f"SRCC {step.get('srcc', float('nan')):.4f}{speed}: {'pass' if step['passed'] else 'fail'}"
                  + (f"; then {step['action']}" if step.get("action") else ""))
        int8.write_manifest(Path(args.output), dataclasses.replace(result.manifest, calibration=result.calibration))
    else:
        result = int8.quantize_artifact(args.model, args.output, cset, recipe, args.target,
                                        batch_size=args.batch_size, progress=not args.no_progress)
    print(f"wrote {args.output} (INT8 {result.calibration['recipe']}, target {args.target}, "
          f"{len(cset)} calibration image(s), {Path(args.output).stat().st_size / 1e6:.1f} MB)")
    if not want_report:
        log.warning("no --val-images: the INT8 model was not checked against its PyTorch original "
                    "(run `clipscan verify` on it, or pass --val-images with --arch/--weights/--heads)")
        return EXIT_OK
    from clipscan.calibration.verify import verify
    from clipscan.export import load_reference

    reference = load_reference(args.arch, args.weights, heads, quick_gelu=args.quick_gelu, threshold=args.threshold)
    report_dir = args.report or f"{Path(args.output).stem}-verify"
    report = verify(args.output, reference, args.val_images, report_dir, launder=not args.no_launder,
                    mean=args.mean, std=args.std)
    calibration = dict(result.calibration)
    calibration["fidelity"] = {
        "passed": report.passed, "failed_gates": [g.name for g in report.failed_gates()],
        "gates": [{"name": g.name, "value": g.value, "threshold": g.threshold, "passed": g.passed}
                  for g in report.gates],
        "validation_set": {"sha256": calib_data.content_hash(calib_data.list_images(args.val_images)),
                           "n_images": report.metrics.get("n_images")},
        "report": str(report_dir), "verified_sha256": report.sha256,
    }
    int8.write_manifest(Path(args.output), dataclasses.replace(result.manifest, calibration=calibration))
    print(report.summary())
    return EXIT_OK if report.passed else EXIT_ITEM_FAILED


def cmd_backends(args) -> int:
    from clipscan.runtime.backends import AUTO_CHAIN, backend_status
    from clipscan.runtime.backends.ort_gpu import onnxruntime_flavour_problem

    print(f"auto tries, in order: {' -> '.join(AUTO_CHAIN)}")
    for name, summary, reason in backend_status():
        state = "available" if reason is None else f"unavailable: {reason}"
        print(f"  {name:<14} {summary:<40} {state}")
    problem = onnxruntime_flavour_problem()
    if problem:
        print(f"warning: {problem}")
    print("'available' means the package and device are present; whether a GPU session really runs on the GPU "
          "is checked when it starts (a scan logs the backend that ran)")
    return EXIT_OK


COMMANDS = {"scan": cmd_scan, "info": cmd_info, "export": cmd_export, "verify": cmd_verify, "bench": cmd_bench,
            "calibrate": cmd_calibrate, "backends": cmd_backends}


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    level = logging.ERROR if args.quiet else (logging.DEBUG if args.verbose > 1 else logging.INFO)
    logging.basicConfig(level=level, format="clipscan: %(message)s", stream=sys.stderr)
    from clipscan.runtime.errors import ClipscanError

    try:
        return COMMANDS[args.command](args)
    except ClipscanError as e:
        print(f"clipscan {args.command}: error: {e}", file=sys.stderr)
        return EXIT_USAGE
    except (FileNotFoundError, ValueError) as e:
        print(f"clipscan {args.command}: error: {e}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        print("clipscan: interrupted; lines already written are complete", file=sys.stderr)
        return 130
    except BrokenPipeError:
        return EXIT_OK
