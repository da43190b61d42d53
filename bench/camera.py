"""The camera-sized section: 12 MP JPEGs, where decoding costs as much as inference.

Decode cost exact vs draft (shared by artifacts with the same preprocessing), then per artifact:
inference cost, e2e images/s with exact and with draft decoding, how much inference overlapped
decoding, and draft decoding's fidelity against exact decoding under the draft gates; with the
PyTorch reference, the plain pipeline at batch 1 and at the largest batch size, and ratios to it.
"""
from __future__ import annotations

import logging
import time
from pathlib import Path

import numpy as np
from PIL import Image

from clipscan.calibration.draft_check import compare_draft_rows
from clipscan.measure.thresholds import DRAFT_MIN_AGREEMENT, DRAFT_MIN_COSINE_MEAN
from clipscan.measure.timing import time_loop
from clipscan.runtime import Scanner, load_artifact
from clipscan.runtime.decode import load_image

from .config import BenchConfig
from .context import BenchContext
from .images import camera_files
from .overlap import overlap_trace
from .torch_reference import plain_pipeline, plain_transform

log = logging.getLogger("clipscan.bench")


def decode_cost(model: str, backend: str, bs: int, files: list[str]) -> dict:
    """Median decode and decode+preprocess ms per image on one thread, exact vs draft, and the decoded sizes."""
    out: dict = {}
    with Scanner(model, backend=backend, batch_size=bs, decode="draft") as draft:
        for name, draft_size in (("exact", None), ("draft", draft.draft_size)):
            dec, pre = [], []
            for f in files:
                t0 = time.perf_counter()
                img = load_image(f, draft_size=draft_size)
                t1 = time.perf_counter()
                draft.preprocess(img)
                pre.append(time.perf_counter() - t1)
                dec.append(t1 - t0)
            out[f"decode_ms_{name}"] = float(np.median(dec) * 1e3)
            out[f"decode_preprocess_ms_{name}"] = float(np.median(np.add(dec, pre)) * 1e3)
            out[f"decoded_size_{name}"] = list(img.size)
    return out


def draft_fidelity(manifest, exact_rows: list, draft_rows: list) -> dict:
    """Draft- against exact-decoded rows, with the draft gates and whether they held."""
    fid, good = compare_draft_rows(manifest, exact_rows, draft_rows)
    fid["against"] = "exact decoding (same artifact, same backend)"
    fid["gates"] = {"agreement_min": DRAFT_MIN_AGREEMENT, "cosine_mean_min": DRAFT_MIN_COSINE_MEAN}
    fid["passed"] = bool(fid.get("agreement", 0.0) >= DRAFT_MIN_AGREEMENT
                         and fid.get("cosine_mean", 0.0) >= DRAFT_MIN_COSINE_MEAN)
    fid["note"] = ("draft stays opt-in: the gates are checked on these images only; "
                   f"{len(good)} images cannot show agreement to 0.1%")
    return fid


def _e2e_passes(cfg: BenchConfig, scanner: Scanner, files: list[str]) -> tuple[float, list]:
    """(median seconds of a whole scan pass, the rows of the last pass)."""
    rows: list = []

    def one_pass():
        rows[:] = list(scanner.scan(files))

    samples = time_loop(one_pass, warmup=1, min_iters=cfg.e2e_passes, min_seconds=0.0, max_seconds=cfg.max_seconds)
    return float(np.median(samples)), rows


def camera_artifact(cfg: BenchConfig, model: str, backend: str, files: list[str], bs: int) -> dict:
    out: dict = {"artifact": Path(model).name, "precision": load_artifact(model).manifest.precision}
    with Scanner(model, backend=backend, batch_size=bs, decode="exact", spin=cfg.spin) as exact, \
            Scanner(model, backend=backend, batch_size=bs, decode="draft", spin=cfg.spin) as draft:
        x = np.concatenate([exact.prepare(f) for f in files[:bs]])   # inference only, on the same rows
        inf = time_loop(lambda: exact.predict(x), warmup=1, min_iters=3, min_seconds=1.0, max_seconds=10.0)
        out["inference_ms_per_image"] = float(np.median(inf) / len(x) * 1e3)
        rows = {}
        for name, sc in (("exact", exact), ("draft", draft)):
            med, rows[name] = _e2e_passes(cfg, sc, files)
            out[f"e2e_images_per_s_{name}"] = len(files) / med
            out[f"e2e_seconds_{name}"] = med
        out["ratio_draft_vs_exact"] = out["e2e_images_per_s_draft"] / out["e2e_images_per_s_exact"]
        out["overlap_trace"] = overlap_trace(draft, files)
        out["workers"] = exact.workers
        out["draft_fidelity"] = draft_fidelity(exact.manifest, rows["exact"], rows["draft"])
    return out


def _plain(ctx: BenchContext, model: str, files: list[str], bs: int, out: dict) -> None:
    """The plain pipeline at batch 1 and `bs` (out["plain"]) and every artifact's ratios to it."""
    manifest = load_artifact(model).manifest
    errors: list[str] = []
    transform = plain_transform(manifest, errors)
    if transform is None:
        out.setdefault("errors", []).extend(errors)
        return
    out["plain"] = {}
    for pbs in sorted({1, bs}):
        samples = time_loop(lambda pbs=pbs: plain_pipeline(ctx.torch_ref, transform, manifest, files, pbs), warmup=1,
                            min_iters=ctx.cfg.e2e_passes, min_seconds=0.0, max_seconds=ctx.cfg.max_seconds * 3)
        med = float(np.median(samples))
        out["plain"][str(pbs)] = {"batch_size": pbs, "images_per_s": len(files) / med, "seconds": med}
    for a in out["artifacts"]:
        for pbs, plain in out["plain"].items():
            a[f"ratio_exact_vs_plain_b{pbs}"] = a["e2e_images_per_s_exact"] / plain["images_per_s"]
            a[f"ratio_draft_vs_plain_b{pbs}"] = a["e2e_images_per_s_draft"] / plain["images_per_s"]


def camera_benchmark(ctx: BenchContext, backend: str) -> dict:
    """The whole camera section on `backend` at the largest batch size."""
    cfg = ctx.cfg
    folder, files = camera_files(cfg, ctx.tmp)
    bs = max(cfg.batch_sizes)
    with Image.open(files[0]) as im:
        size = list(im.size)
    out: dict = {"images": len(files), "size": size, "jpeg_quality": 90,
                 "folder": str(folder), "backend": backend, "batch_size": bs, "artifacts": []}
    models = cfg.camera_models or cfg.models
    out.update(decode_cost(models[0], backend, bs, files))
    for model in models:
        try:
            out["artifacts"].append(camera_artifact(cfg, model, backend, files, bs))
        except Exception as e:
            out.setdefault("errors", []).append(f"{Path(model).name}: {type(e).__name__}: {e}")
            log.exception("camera section for %s failed", model)
    if ctx.torch_ref is not None:
        _plain(ctx, models[0], files, bs, out)
    return out
