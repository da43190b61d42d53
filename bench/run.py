"""`run_benchmark(cfg)`: one benchmark run, section by section, into one report dict.

Order: decode the images once and compute the reference outputs; model mode; each artifact's
fidelity; e2e mode; cold starts; the camera-sized section; then ratios, GFLOP/s and the machine.
A candidate or section that fails is listed in the report's errors; bad settings raise.
"""
from __future__ import annotations

import logging
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path

from clipscan.runtime import load_artifact
from clipscan.runtime.errors import BackendError, InvalidArgumentError
from clipscan.runtime.progress import Progress

from .camera import camera_benchmark
from .cold_start import cold_starts
from .config import BenchConfig, check_config
from .context import BenchContext, available_backends
from .e2e import e2e_rows
from .images import benchmark_images
from .model_timing import model_rows
from .profile import profile_section
from .reference_fidelity import artifact_fidelity, prepare_reference
from .results import add_gflops, add_ratios, load_average, machine_info, new_report
from .torch_reference import load_torch_reference, plain_transform

log = logging.getLogger("clipscan.bench")


def _start(cfg: BenchConfig) -> BenchContext:
    """Check the settings, pick backends and images, load the artifacts and the PyTorch reference."""
    check_config(cfg)
    backends, skipped = available_backends(cfg.backends)
    if not backends:
        raise BackendError(f"no requested backend is available here: {skipped}; see `clipscan backends`")
    tmp = Path(tempfile.mkdtemp(prefix="clipscan-bench-"))
    try:
        paths, images_desc = benchmark_images(cfg, tmp)
        report = new_report(cfg, backends, skipped, images_desc)
        manifests = {m: load_artifact(m).manifest for m in cfg.models}
        check_own_size(cfg, manifests)
        ctx = BenchContext(cfg, backends, manifests, paths, report, tmp)
        ctx.torch_ref = load_torch_reference(cfg, report["errors"])
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return ctx


def check_own_size(cfg: BenchConfig, manifests: dict) -> None:
    """An artifact taking each image at its own size (input.own_size) is timed on the benchmark images at their
    own size, which must be one size for all of them (reference_fidelity.prepared_inputs says so otherwise). The
    parts that feed it one fixed size are refused: the PyTorch reference (it runs the tower at one input size)
    and the camera section (12 MP images, above such an artifact's input.own_size.max_pixels by default)."""
    own = [Path(m).name for m, man in manifests.items() if man.input.own_size is not None]
    if not own:
        return
    what = f"{', '.join(own)} take(s) each image at its own size"
    if cfg.wants_torch:
        raise InvalidArgumentError(f"{what}, and bench's PyTorch reference runs the tower at one fixed input size; "
                                   "leave out --torch/--torch-* (the first FP32 artifact is then the reference), and "
                                   "compare the artifact with its PyTorch original by `clipscan verify`, which runs "
                                   "it at each image's own size")
    if cfg.camera:
        raise InvalidArgumentError(f"{what}, and the camera section feeds {cfg.camera_size[0]}x{cfg.camera_size[1]} "
                                   "images through one fixed-size recipe; leave out --camera for it")


def _e2e(ctx: BenchContext) -> None:
    transform = None
    if ctx.torch_ref is not None:
        transform = plain_transform(ctx.manifests[ctx.first], ctx.errors)
    for bs in ctx.cfg.batch_sizes:
        ctx.report["results"] += e2e_rows(ctx, bs, transform)


def _camera(ctx: BenchContext) -> None:
    try:
        ctx.report["camera"] = camera_benchmark(ctx, ctx.backends[0])
    except Exception as e:
        ctx.errors.append(f"camera section: {type(e).__name__}: {e}")
        log.exception("camera section failed")


def _sections(ctx: BenchContext) -> list[tuple[str, Callable[[], None]]]:
    """The sections `ctx.cfg` asks for, in order, as (name, run)."""
    cfg, results = ctx.cfg, ctx.report["results"]
    steps: list[tuple[str, Callable[[], None]]] = [("reference", lambda: prepare_reference(ctx))]
    if "model" in cfg.modes:
        steps += [(f"model b{bs}", lambda bs=bs: results.extend(model_rows(ctx, bs))) for bs in cfg.batch_sizes]
    steps.append(("fidelity", lambda: artifact_fidelity(ctx)))
    if "e2e" in cfg.modes:
        steps.append(("e2e", lambda: _e2e(ctx)))
    if cfg.cold_start:
        steps.append(("cold start", lambda: _cold_start(ctx)))
    if cfg.camera > 0:
        steps.append(("camera", lambda: _camera(ctx)))
    if cfg.profile:
        steps.append(("profile", lambda: profile_section(ctx)))
    return steps


def _cold_start(ctx: BenchContext) -> None:
    if ctx.names:
        ctx.report["cold_start"] = cold_starts(ctx.cfg.models, ctx.backends, ctx.names[0])


def run_benchmark(cfg: BenchConfig, *, progress: bool = False) -> dict:
    """Run every section `cfg` asks for; returns the report (see `format_table`, `write_json`).
    `progress`: a bar over the sections on stderr when it is a terminal."""
    load_start = load_average()
    ctx = _start(cfg)
    report = ctx.report
    steps = _sections(ctx)
    try:
        with Progress("bench", len(steps), unit="sections", note=", ".join(ctx.backends), enabled=progress) as bar:
            for name, step in steps:
                errors_before = len(ctx.errors)
                bar.set_note(f"{name} ({', '.join(ctx.backends)})")
                step()
                bar.update(errors=len(ctx.errors) - errors_before)
    finally:
        shutil.rmtree(ctx.tmp, ignore_errors=True)  # the synthetic images and scratch files of this run
    add_ratios(report)
    add_gflops(report, ctx.manifests)
    report["machine"] = machine_info()
    report["machine"]["load_average_at_start"] = load_start
    return report
