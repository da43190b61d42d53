"""The benchmark's results document: its skeleton, one row per measurement, ratios, GFLOP/s, the machine, JSON.

Ratios are always between rows of the same run: against the reference row (PyTorch when given,
else the FP32 artifact on the CPU backend) and, for reduced-precision rows, against the FP32
artifact on the same backend. GFLOP/s uses the FLOP count stored in the manifest at export.
"""
from __future__ import annotations

import json
import os
import platform
import time
from pathlib import Path

from clipscan.measure.machine import cpu_info, describe_cpu, tool_versions
from clipscan.runtime.atomic import write_text

from .config import BenchConfig

TIMED_REGION = {
    "model": "one inference call on a preprocessed float32 batch already in memory (ONNX Runtime "
             "session.run / PyTorch eager forward under inference_mode); no decode, no preprocessing",
    "e2e": "one full pass over the image folder: file read, decode (Scanner thread pool), preprocessing, "
           "inference, postprocessing to result rows; PyTorch plain pipeline: sequential PIL decode + "
           "reference transform (open_clip / torchvision) + eager forward + threshold",
    "cold_start": "launch of `python -m clipscan scan` on one image until its first result line",
    "peak_rss_mb": "process peak RSS (VmHWM) while the candidate is created and run once; "
                   "peak_rss_added_mb: the part over the RSS before it was created",
    "interleaving": "per batch size, all candidates timed in rotating rounds (shared-machine noise); each "
                    "turn: untimed calls for settle_seconds (other candidates' worker threads stop "
                    "spinning), then timed calls for block_seconds",
}


def load_average() -> list[float] | None:
    try:
        return list(os.getloadavg())
    except OSError:
        return None


def load_text(load) -> str:
    """A load average (1, 5, 15 minutes) as `0.52 / 0.61 / 0.70`; `unknown` where the system gives none."""
    return "unknown" if not load else " / ".join(f"{v:.2f}" for v in load)


def new_report(cfg: BenchConfig, backends: list[str], skipped: list[dict], images_desc: str) -> dict:
    """The report before anything is measured: settings and what each timed region holds."""
    settings = {"batch_sizes": cfg.batch_sizes, "backends": backends, "skipped_backends": skipped,
                "mode": cfg.mode, "images": images_desc, "warmup": cfg.warmup, "min_iters": cfg.min_iters,
                "min_seconds": cfg.min_seconds, "max_seconds": cfg.max_seconds, "e2e_passes": cfg.e2e_passes,
                "settle_seconds": cfg.settle_seconds, "block_seconds": cfg.block_seconds,
                "decode": cfg.decode, "spin": cfg.spin}
    return {"clipscan_bench": 1, "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "machine": None,
            "settings": settings, "timed_region": dict(TIMED_REGION), "reference": None, "results": [],
            "fidelity": {}, "cold_start": [], "errors": []}


def machine_info() -> dict:
    cpu = cpu_info()
    versions = tool_versions(("numpy", "pillow", "onnxruntime", "torch", "open_clip"), loaded_only=True)
    return {"cpu": cpu["model"], "cpu_description": describe_cpu(cpu), "isa": cpu["isa"], "cores": cpu["cores"],
            "machine": platform.machine(), "system": platform.platform(), "versions": versions,
            "load_average_1_5_15": load_average()}


def result_row(mode: str, cand, bs: int, measurement: dict, *, images: int | None = None, decode=None) -> dict:
    """One results row from a Candidate and its interleaved measurement."""
    m = dict(measurement)
    med = m.pop("median_s")
    row = {"mode": mode, "runtime": cand.runtime, "backend": cand.backend, "artifact": cand.artifact,
           "precision": cand.precision, "batch_size": bs, **m}
    count = bs if mode == "model" else images
    if mode != "model":
        row["images"] = images
        row["decode"] = decode
    row["images_per_s"] = count / med if med > 0 else None
    if cand.requested:
        row["backend_requested"] = cand.requested
    return row


def _reference_row(rows: list[dict], r: dict, reference: dict) -> dict | None:
    kind = reference.get("kind")
    for x in rows:
        if x["mode"] != r["mode"] or x["batch_size"] != r["batch_size"]:
            continue
        if kind == "pytorch" and x["runtime"] == "pytorch":
            return x
        if (kind == "fp32_artifact" and x["runtime"] != "pytorch" and x["artifact"] == reference["artifact"]
                and x.get("backend_requested") == "cpu"):
            return x
    return None


def _fp32_row(rows: list[dict], r: dict) -> dict | None:
    return next((x for x in rows if x["runtime"] != "pytorch" and x["precision"] == "fp32"
                 and x["backend"] == r["backend"] and x["mode"] == r["mode"] and x["batch_size"] == r["batch_size"]
                 and x.get("images_per_s")), None)


def add_ratios(report: dict) -> None:
    """images/s of every row divided by the reference row's (same mode and batch size, same run):
    the PyTorch row when there is one, else the FP32 artifact on the CPU backend; reduced-precision
    rows also get `ratio_vs_fp32_artifact` (the FP32 artifact on the same backend)."""
    rows = report["results"]
    reference = report.get("reference") or {}
    for r in rows:
        r["ratio_vs_reference"] = r["ratio_reference"] = r["ratio_vs_fp32_artifact"] = None
        ref = _reference_row(rows, r, reference)
        if ref is not None and ref.get("images_per_s") and r.get("images_per_s"):
            r["ratio_vs_reference"] = r["images_per_s"] / ref["images_per_s"]
            r["ratio_reference"] = f"{ref['runtime']}:{ref['artifact']}:{ref['backend']}"
        if r["runtime"] != "pytorch" and r["precision"] != "fp32" and r.get("images_per_s"):
            fp32 = _fp32_row(rows, r)
            if fp32 is not None:
                r["ratio_vs_fp32_artifact"] = r["images_per_s"] / fp32["images_per_s"]


def add_gflops(report: dict, manifests: dict) -> None:
    """Achieved GFLOP/s of every row: images/s x the model's FLOPs per image as counted at export
    (`gflops_per_image` in the manifest; the PyTorch rows use the same model's count). Shows how
    close a run is to the machine's arithmetic peak, which bounds every speed-up."""
    # an artifact taking each image at its own size (input.own_size) was counted at the traced size only
    by_name = {Path(m).name: None if man.input.own_size is not None else man.backbone.get("gflops_per_image")
               for m, man in manifests.items()}
    shared = next((g for g in by_name.values() if g), None)
    report["gflops_per_image"] = shared
    for r in report["results"]:
        g = by_name.get(r["artifact"]) or (shared if r["runtime"] == "pytorch" else None)
        r["gflops_per_s"] = g * r["images_per_s"] if (g and r.get("images_per_s")) else None


def write_json(report: dict, path: str | Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    write_text(path, json.dumps(report, indent=2, default=lambda o: o.tolist() if hasattr(o, "tolist") else str(o)))
    return path
