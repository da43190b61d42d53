"""Fidelity next to speed: each artifact's outputs against the run's reference on the benchmark images.

The reference is the PyTorch original when given, else the first FP32 artifact on ONNX Runtime's
CPU backend. Both sides see the same preprocessed tensors (decoded once, by the runtime), and the
comparison is `clipscan.runtime.fidelity_metrics.compare_outputs`, the one every fidelity check uses.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from clipscan.runtime import Scanner
from clipscan.runtime.errors import InvalidArgumentError
from clipscan.runtime.fidelity_metrics import compare_outputs

from .context import BenchContext

CHUNK = 32


def prepared_inputs(scanner: Scanner, paths: list[Path]) -> tuple[np.ndarray, list[str], list[dict]]:
    """The benchmark images decoded and preprocessed once, (N, 3, H, W); undecodable files listed."""
    rows, names, bad = [], [], []
    for p in paths:
        x = scanner.prepare(str(p))
        if isinstance(x, np.ndarray):
            rows.append(x[:1])
            names.append(str(p))
        else:
            bad.append({"path": str(p), "error": str(x)})
    if not rows:
        raise InvalidArgumentError(f"none of the {len(paths)} benchmark image(s) could be decoded (first: "
                                   f"{bad[0]['error'] if bad else '-'}); pass --images with JPEG/PNG/WebP files")
    sizes = sorted({tuple(r.shape[-2:]) for r in rows})
    if len(sizes) > 1:   # only an artifact taking each image at its own size (input.own_size) gets here
        shown = ", ".join(f"{w}x{h}" for h, w in sizes[:6]) + (", ..." if len(sizes) > 6 else "")
        raise InvalidArgumentError(f"{scanner.artifact.path.name} takes each image at its own size, and the "
                                   f"benchmark images have {len(sizes)} sizes ({shown}); clipscan bench times "
                                   "batches of one size: pass --images with images of one size (one camera's photos; "
                                   "the default synthetic images are 640x480), or time mixed sizes with clipscan scan")
    return np.concatenate(rows), names, bad


def own_size_inputs(ctx: BenchContext) -> dict:
    """{artifact name: [height, width]} of the images each artifact taking them at their own size was fed."""
    return {Path(m).name: list(ctx.inputs[m].shape[-2:]) for m in ctx.cfg.models
            if ctx.manifests[m].input.own_size is not None and m in ctx.inputs}


def predict_all(run, x: np.ndarray, chunk: int = CHUNK) -> dict:
    """`run` (a batch -> {output: array}) over `x` in chunks, outputs concatenated."""
    out: dict = {}
    for i in range(0, len(x), chunk):
        for k, v in run(x[i:i + chunk]).items():
            out.setdefault(k, []).append(np.asarray(v))
    return {k: np.concatenate(v) for k, v in out.items()}


def prepare_reference(ctx: BenchContext) -> None:
    """Decode the images once (ctx.x_all, ctx.names) and compute the reference outputs on them."""
    cfg, report = ctx.cfg, ctx.report
    fp32 = next((m for m in cfg.models if ctx.manifests[m].precision == "fp32"), None)
    with Scanner(fp32 or ctx.first, backend="cpu", batch_size=max(cfg.batch_sizes), decode="exact") as sc:
        ctx.x_all, ctx.names, bad = prepared_inputs(sc, ctx.paths)
        ctx.x_source = fp32 or ctx.first
        prepare_artifact_inputs(ctx, ctx.x_source)
        report["settings"]["decoded_images"] = len(ctx.names)
        report["settings"]["undecodable_images"] = bad
        if own_size_inputs(ctx):
            report["settings"]["own_size_inputs"] = own_size_inputs(ctx)
        if ctx.torch_ref is not None:
            x = ctx.torch_ref.input_from_runtime(sc.manifest, ctx.x_all)
            ctx.ref_outputs = predict_all(ctx.torch_ref.run, x)
            report["reference"] = {"kind": "pytorch", "what": f"PyTorch eager FP32 ({cfg.torch_arch}, "
                                   f"{cfg.torch_weights}, torch threads {ctx.torch_ref.threads})"}
        elif fp32 is not None:
            ctx.ref_outputs = predict_all(sc.predict, ctx.x_all)
            report["reference"] = {"kind": "fp32_artifact", "artifact": Path(fp32).name,
                                   "what": f"{Path(fp32).name} on ONNX Runtime CPU (no PyTorch reference given): "
                                           "speed ratios and fidelity are against this artifact"}
        else:
            report["reference"] = {"kind": None,
                                   "what": "no PyTorch reference and no FP32 artifact: no ratios/fidelity"}


def _input_recipe(manifest) -> str:
    return json.dumps([manifest.input.to_dict(), manifest.preprocess.to_dict()], sort_keys=True)


def prepare_artifact_inputs(ctx: BenchContext, source: str) -> None:
    """ctx.inputs[artifact]: the images as each artifact takes them (its own dtype and preprocessing:
    a uint8-input artifact gets raw pixels, a float one normalised floats); `source`'s are ctx.x_all."""
    by_recipe = {_input_recipe(ctx.manifests[source]): ctx.x_all}
    for model in ctx.cfg.models:
        recipe = _input_recipe(ctx.manifests[model])
        if recipe not in by_recipe:
            with Scanner(model, backend="cpu", decode="exact") as sc:
                x, names, _ = prepared_inputs(sc, [Path(n) for n in ctx.names])
            if names != ctx.names:
                raise InvalidArgumentError(f"{Path(model).name} decodes other benchmark images than "
                                           f"{Path(source).name} ({len(names)} vs {len(ctx.names)}); benchmark "
                                           "with images both can read, or the two models separately")
            by_recipe[recipe] = x
        ctx.inputs[model] = by_recipe[recipe]


def artifact_fidelity(ctx: BenchContext) -> None:
    """report["fidelity"][artifact] for every artifact, on the first backend."""
    if ctx.ref_outputs is None:
        return
    for model in ctx.cfg.models:
        try:
            with Scanner(model, backend=ctx.backends[0], batch_size=CHUNK) as sc:
                fid = compare_outputs(sc.manifest, ctx.ref_outputs, predict_all(sc.predict, ctx.inputs[model]))
                fid["against"] = ctx.report["reference"]["kind"]
                fid["backend"] = sc.backend_name
                ctx.report["fidelity"][Path(model).name] = fid
        except Exception as e:
            ctx.errors.append(f"fidelity {Path(model).name}: {type(e).__name__}: {e}")
