"""`clipscan bench`: benchmark artifacts (latency, throughput, memory, cold start, fidelity) with `clipscan.bench`.

Builds a `BenchConfig` from the options, runs it, prints the table and writes the JSON and the plot
asked for. Speed is reported, never judged: exit 0 unless the benchmark could not run.
"""
from __future__ import annotations

from clipscan.runtime.errors import InvalidArgumentError

from . import EXIT_OK, NOTICE
from .args import add_decode, add_no_spin, choices_help, non_negative, non_negative_int, positive, positive_int


DEFAULT_MODES, TRITON_MODES = "batching,batch-1", "batching,triton"


def add_arguments(p) -> None:
    from clipscan.bench.config import DECODES, MODES, BenchConfig
    from clipscan.bench.serve_bench import SERVE_MODES, ServeBenchConfig
    from clipscan.triton.knobs import KNOBS

    p.description = ("Time every artifact on every available backend (model-only: inference on "
                     "preprocessed batches in memory; e2e: read, decode, preprocess, infer, "
                     "postprocess through the Scanner), next to PyTorch eager FP32 with --torch "
                     "(the original recorded in the manifest), with each artifact's "
                     "fidelity; prints a table and writes JSON and a PNG plot. Speed is reported, "
                     "never judged; exit 0 unless the benchmark could not run.")
    p.add_argument("models", nargs="*", metavar="MODEL",
                   help="exported .onnx artifacts (e.g. the FP32 and FP16 export); with --serve or --ray at most "
                        "one (default: the bundled demo model, which says nothing about a real model's speed)")
    p.add_argument("--batch-sizes", default="1,8,32", help="comma-separated batch sizes (default 1,8,32)")
    p.add_argument("--backends", help="comma-separated backends (default: every available one)")
    p.add_argument("--mode", choices=tuple(MODES), default=BenchConfig.mode,
                   help=choices_help(MODES, BenchConfig.mode))
    p.add_argument("--images", metavar="DIR", help="benchmark images (default: 16 synthetic 640x480 JPEGs)")
    p.add_argument("--json", metavar="OUT.json", help="write the full results as JSON")
    p.add_argument("--plot", metavar="OUT.png", help="write throughput against batch size as a PNG")
    from clipscan.runtime.manifest import RESIZE_MODES

    p.add_argument("--torch", action="store_true",
                   help="also time the PyTorch original (needs clipscan[export]): the files export was given, "
                        "recorded in the first MODEL's manifest; the --torch-* options override parts of it")
    p.add_argument("--torch-arch", help="open_clip architecture of the PyTorch original (implies --torch)")
    p.add_argument("--torch-weights", help="the checkpoint the artifacts were exported from (implies --torch)")
    p.add_argument("--torch-heads", action="append", default=[], metavar="H",
                   help="heads file or [NAME=]FORMAT:PATH, as given to export (repeatable; implies --torch; "
                        "given, they replace every recorded head)")
    p.add_argument("--torch-resize-mode", choices=tuple(RESIZE_MODES),
                   help="the PyTorch original's one resize for every head (default: the first MODEL's): "
                        + choices_help(RESIZE_MODES))
    add_no_spin(p)
    add_decode(p, DECODES, BenchConfig.decode)  # the decoding of the e2e ONNX Runtime runs
    p.add_argument("--camera", type=non_negative_int, default=0, metavar="N",
                   help="also benchmark N camera-sized (12 MP) JPEGs: decode exact vs draft, e2e vs the plain "
                        "pipeline, draft fidelity")
    p.add_argument("--profile", action="store_true",
                   help="also run ONNX Runtime's profiler on each artifact (time by op kind, the matrix products' "
                        "share) and measure the machine's int8/fp32 GEMM ceilings in the same run")
    p.add_argument("--camera-dir", metavar="DIR", help="where the camera-sized JPEGs are written/reused")
    p.add_argument("--camera-models", metavar="A,B", help="artifacts of the camera section, comma-separated "
                                                          "(default: every MODEL)")
    p.add_argument("--min-iters", type=positive_int, default=10, help="timed runs per measurement, at least (default 10)")
    p.add_argument("--min-seconds", type=non_negative, default=2.0, help="timed seconds per measurement, at least (default 2)")
    p.add_argument("--max-seconds", type=positive, default=20.0, help="time box per measurement (default 20 s)")
    p.add_argument("--warmup", type=non_negative_int, default=2, help="untimed warm-up runs (default 2)")
    p.add_argument("--settle", type=non_negative, default=0.2, metavar="S",
                   help="untimed calls for S seconds at the start of each candidate's turn, so other "
                        "candidates' spinning worker threads are gone before timing (default 0.2)")
    p.add_argument("--block", type=non_negative, default=0.5, metavar="S",
                   help="timed calls per candidate's turn, for at least S seconds (default 0.5)")
    p.add_argument("--e2e-passes", type=positive_int, default=3, help="timed folder passes in e2e mode, at least (default 3)")
    p.add_argument("--workers", type=positive_int, help="decode threads of the Scanner in e2e mode (default: min(4, cores))")
    p.add_argument("--no-cold-start", action="store_true", help="skip the cold-start subprocess runs")
    serve = p.add_argument_group("the service under load (--serve; needs clipscan[serve])")
    serve.add_argument("--serve", action="store_true",
                       help="benchmark `clipscan serve` on 127.0.0.1 instead: a bounded closed-loop load from a "
                            "second process, with and without dynamic batching, malformed uploads mixed in, next "
                            "to the offline Scanner of the same run")
    serve.add_argument("--concurrency", default="1,4,16,64", help="concurrency sweep (default 1,4,16,64)")
    serve.add_argument("--requests", type=positive_int, default=200, help="requests per level (default 200)")
    serve.add_argument("--level-seconds", type=positive, default=60.0, help="time box per level (default 60 s)")
    serve.add_argument("--bad-every", type=non_negative_int, default=10,
                       help="every Nth request is a malformed upload (default 10: 10%%; 0: none)")
    serve.add_argument("--serve-max-batch", type=positive_int, default=32,
                       help="the server's --max-batch with batching (default 32)")
    serve.add_argument("--serve-delay-ms", type=non_negative, default=5.0,
                       help="the server's --max-delay-ms with batching (default 5)")
    serve.add_argument("--offline-images", type=positive_int, default=ServeBenchConfig.offline_images, metavar="N",
                       help=f"images per pass of the offline Scanner before and after the sweep (default "
                            f"{ServeBenchConfig.offline_images}; the passes next to each level: a third)")
    serve.add_argument("--serve-modes", metavar="A,B",
                       help=f"comma-separated, from: {choices_help(SERVE_MODES)} (default {DEFAULT_MODES}; with "
                            f"--triton {TRITON_MODES})")
    serve.add_argument("--triton", action="store_true",
                       help="--serve with the real tritonserver too (needs clipscan[triton]): the repository "
                            "`clipscan triton` writes for this machine, next to `clipscan serve` and the offline "
                            "Scanner, with tritonserver's own statistics (queue and compute time per request)")
    for knob in KNOBS:
        serve.add_argument("--triton-" + knob.flag[2:], dest="triton_" + knob.name, metavar="N",
                           type=positive_int if knob.minimum >= 1 else non_negative_int,
                           help=f"--triton: the repository's {knob.flag} (default: as `clipscan triton`)")
    p.add_argument("--ray", action="store_true",
                   help="instead: files/s of a local scan and of Ray scans with --ray-actors actors, in one run "
                        "(needs clipscan[ray]; on --images or synthetic JPEGs)")
    p.add_argument("--ray-actors", default="1,2", metavar="N,M", help="actor counts for --ray (default 1,2)")
    p.add_argument("--ray-files", type=positive_int, default=512, metavar="N",
                   help="synthetic images for --ray without --images (default 512)")
    p.add_argument("--skip-unavailable", action="store_true",
                   help="go on without an asked-for part that cannot run here (the PyTorch reference in a base "
                        "install), noting why in the report; without it that is an error (exit 2)")


def run_serve(args) -> int:
    import json

    from clipscan.bench import parse_list
    from clipscan.bench.serve_bench import SERVE_MODES, ServeBenchConfig, format_serve_table, run_serve_bench
    from clipscan.cli.serve import check_extra
    from clipscan.triton.knobs import KNOBS

    if len(args.models) > 1:
        raise InvalidArgumentError("--serve benchmarks one model at a time; name one MODEL (or none for the "
                                   "demo model)")
    modes = tuple(parse_list(args.serve_modes or (TRITON_MODES if args.triton else DEFAULT_MODES)))
    unknown = set(modes) - set(SERVE_MODES)
    if unknown:
        raise InvalidArgumentError(f"--serve-modes: unknown {sorted(unknown)}; choose from {', '.join(SERVE_MODES)}")
    if set(modes) - {"triton"}:
        check_extra()
    if "triton" in modes:
        from clipscan.triton.launch import bundled_tritonserver

        bundled_tritonserver()  # missing: one sentence naming the extra, before anything is measured
    cfg = ServeBenchConfig(model=args.models[0] if args.models else None, images=args.images,
                           concurrency=tuple(parse_list(args.concurrency, int)), requests=args.requests,
                           max_seconds=args.level_seconds, bad_every=args.bad_every, max_batch=args.serve_max_batch,
                           max_delay_ms=args.serve_delay_ms, modes=modes, workers=args.workers or 2,
                           spin=not args.no_spin, offline_images=args.offline_images,
                           triton_knobs={k.name: getattr(args, "triton_" + k.name) for k in KNOBS})
    report = run_serve_bench(cfg)
    print(format_serve_table(report))
    if args.json:
        with open(args.json, "w", encoding="utf-8") as fh:
            json.dump(report, fh, indent=1, default=str)
        print(f"wrote {args.json}")
    return EXIT_OK


def run(args) -> int:
    if (args.serve or args.triton) and args.ray:
        raise InvalidArgumentError("--serve and --ray are two different benchmarks; run one at a time")
    if args.serve or args.triton:
        return run_serve(args)
    if args.ray:
        return _run_ray(args)
    if not args.models:
        import logging

        from clipscan.runtime.artifact import DEMO_MODEL

        logging.getLogger("clipscan.bench").log(NOTICE, "no MODEL given: benchmarking the bundled demo model (a 4 MB "
                                                    "tiny ViT; its speed says nothing about yours)")
        args.models = [str(DEMO_MODEL)]
    from clipscan.bench import BenchConfig, format_table, parse_list, run_benchmark, write_json, write_plot

    original = _torch_original(args)
    cfg = BenchConfig(models=list(args.models), batch_sizes=parse_list(args.batch_sizes, int),
                      backends=parse_list(args.backends) if args.backends else None, mode=args.mode,
                      images=args.images, torch_arch=original.arch if original else None,
                      torch_weights=original.weights if original else None,
                      torch_heads=list(original.heads) if original else [],
                      torch_resize_mode=original.resize_mode if original else None,
                      quick_gelu=original.quick_gelu if original else None,
                      warmup=args.warmup, min_iters=args.min_iters,
                      min_seconds=args.min_seconds, max_seconds=args.max_seconds, e2e_passes=args.e2e_passes,
                      cold_start=not args.no_cold_start, camera=args.camera, camera_dir=args.camera_dir,
                      decode=args.decode, workers=args.workers, spin=not args.no_spin, settle_seconds=args.settle,
                      block_seconds=args.block, skip_unavailable=args.skip_unavailable, profile=args.profile,
                      camera_models=parse_list(args.camera_models) if args.camera_models else None)
    report = run_benchmark(cfg, progress=not args.quiet)
    print(format_table(report))
    if args.json:
        print(f"wrote {write_json(report, args.json)}")
    if args.plot:
        written = write_plot(report, args.plot)
        if written:
            print(f"wrote {written}")
    return EXIT_OK


def _torch_original(args):
    """The PyTorch original asked for (--torch or any --torch-*): what the first MODEL's manifest records,
    with the --torch-* options given instead; None when none was asked for."""
    if not (args.torch or args.torch_arch or args.torch_weights or args.torch_heads or args.torch_resize_mode):
        return None
    from clipscan.export.recorded import original_from_manifest
    from clipscan.runtime import load_artifact

    model = args.models[0]
    return original_from_manifest(model, load_artifact(model).manifest, arch=args.torch_arch,
                                  weights=args.torch_weights, heads=args.torch_heads,
                                  resize_mode=args.torch_resize_mode, prefix="--torch-")


def _run_ray(args) -> int:
    from clipscan.bench import parse_list, write_json
    from clipscan.bench.ray_scale import format_ray_table, ray_benchmark

    if len(args.models) > 1:
        raise InvalidArgumentError("--ray benchmarks one artifact; give at most one MODEL")
    report = ray_benchmark(args.models[0] if args.models else None, args.images, files=args.ray_files,
                           actors=parse_list(args.ray_actors, int))
    print(format_ray_table(report))
    if args.json:
        print(f"wrote {write_json(report, args.json)}")
    return EXIT_OK
