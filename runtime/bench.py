"""`clipscan bench`: throughput, latency, memory, cold start and fidelity in one run.

Importable without torch: torch and open_clip are imported lazily, only for the
PyTorch eager reference (`TorchReference`). What each timed region holds:

- model mode: one call of the backend's `run` (ONNX Runtime `session.run`) on a
  preprocessed float batch already in memory, or one PyTorch eager forward of the
  reference graph under `torch.inference_mode()`; nothing else.
- e2e mode: one full pass over a folder through `Scanner.scan` (file read, decode
  in the Scanner's thread pool, preprocessing, inference, postprocessing into
  ScanResult rows); the PyTorch "plain pipeline" pass is sequential PIL
  `Image.open().convert("RGB")`, open_clip's `image_transform`, a batched eager
  forward, and sigmoid/threshold.
- cold start: wall time from launching `python -m clipscan scan` on one image to its
  first result line on stdout (interpreter start, imports, session creation, one scan).
- ratios on a shared machine: for each batch size every candidate (PyTorch, each
  artifact on each backend) is loaded, warmed up and then timed in interleaved rounds
  (order rotated), so load from other processes falls on all of them alike; each turn
  first runs untimed for `settle_seconds` (the previous candidate's worker threads keep
  spinning for tens of ms), then timed for `block_seconds`.
- peak memory: the process's peak resident set size (VmHWM from /proc/self/status,
  reset through /proc/self/clear_refs where the kernel allows it, flagged
  `peak_rss_reset`) while one candidate is created and run once on its own:
  `peak_rss_mb` is the whole process (Python, ONNX Runtime, torch, candidates loaded
  before it), `peak_rss_added_mb` the part over the RSS just before it was created.
"""
from __future__ import annotations

import json
import logging
import os
import platform
import subprocess
import sys
import tempfile
import time
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image

log = logging.getLogger("clipscan.bench")

from .metrics import compare_outputs
from .thresholds import DRAFT_MIN_AGREEMENT, DRAFT_MIN_COSINE_MEAN
from .timing import percentiles, time_loop, timed_turn  # noqa: F401  (percentiles, time_loop: public here too)


# -- measuring ------------------------------------------------------------------------------------

def parse_list(text: str, cast=str) -> list:
    items = [t.strip() for t in str(text).split(",") if t.strip()]
    if not items:
        raise ValueError(f"empty list: {text!r}")
    return [cast(t) for t in items]


def _status_kb(field_name: str) -> float | None:
    try:
        with open("/proc/self/status") as fh:
            for line in fh:
                if line.startswith(field_name + ":"):
                    return float(line.split()[1])
    except OSError:
        return None
    return None


def reset_peak_rss() -> bool:
    """Reset the kernel's peak-RSS counter of this process (Linux >= 4.0); False if not possible."""
    try:
        with open("/proc/self/clear_refs", "w") as fh:
            fh.write("5")
        return True
    except OSError:
        return False


def peak_rss_mb() -> float | None:
    kb = _status_kb("VmHWM")
    if kb is None:
        try:
            import resource

            kb = float(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)
        except Exception:
            return None
    return kb / 1024.0


def machine_info() -> dict:
    from .machine import cpu_info, describe_cpu, tool_versions

    cpu = cpu_info()
    versions = tool_versions(("numpy", "pillow", "onnxruntime", "torch", "open_clip"), loaded_only=True)
    try:
        load = list(os.getloadavg())
    except OSError:
        load = None
    return {"cpu": cpu["model"], "cpu_description": describe_cpu(cpu), "isa": cpu["isa"], "cores": cpu["cores"],
            "machine": platform.machine(), "system": platform.platform(), "versions": versions,
            "load_average_1_5_15": load}


# -- images ---------------------------------------------------------------------------------------

def synthetic_images(folder: Path, n: int = 16, size: tuple[int, int] = (640, 480), seed: int = 0) -> list[Path]:
    """Torch-free stand-in images (smooth gradients, blobs and noise) written as JPEG q=90."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    w, h = size
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    out = []
    for i in range(n):
        base = np.zeros((h, w, 3), np.float32)
        for c in range(3):
            a, b, ph = rng.uniform(-3, 3, 3)
            base[..., c] = 127 + 90 * np.sin(a * xx / w * 3.14 + b * yy / h * 3.14 + ph)
        for _ in range(4):
            cx, cy, r = rng.uniform(0, w), rng.uniform(0, h), rng.uniform(20, h / 3)
            mask = ((xx - cx) ** 2 + (yy - cy) ** 2) < r * r
            base[mask] = rng.uniform(0, 255, 3)
        base += rng.normal(0, rng.uniform(0, 20), base.shape)
        p = folder / f"synthetic_{i:03d}.jpg"
        Image.fromarray(np.clip(base, 0, 255).astype(np.uint8)).save(p, "JPEG", quality=90)
        out.append(p)
    return out


def camera_images(folder: Path, n: int = 24, size: tuple[int, int] = (4000, 3000), seed: int = 0,
                  quality: int = 90) -> list[Path]:
    """Camera-sized JPEGs with detail at every scale, so reduced-size decoding is tested on fine texture
    and not only on smooth upscaled content: a photo or render upscaled to `size` as the backdrop, then
    several photos pasted at their native resolution (or up to 1.5x), sharp-edged shapes drawn at full
    resolution, and sensor-like noise; saved at JPEG `quality`. Photos and renders come from
    `clipscan.export.demo_data` (scikit-image's samples) when installed, else synthetic images."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    try:
        import importlib

        demo_data = importlib.import_module("clipscan.export.demo_data")
        names = list(demo_data.TRAIN_PHOTOS) + list(demo_data.SAMPLE_PHOTOS)
        photos = [demo_data.photo(nm).convert("RGB") for nm in names]
        renders = [demo_data.render(1000 + i).convert("RGB") for i in range(8)]
    except Exception as e:  # no scikit-image: synthetic sources
        log.info("camera images from synthetic sources (%s)", e)
        tmp = Path(tempfile.mkdtemp(prefix="clipscan-bench-src-"))
        photos = [Image.open(p).convert("RGB") for p in synthetic_images(tmp, 8, seed=seed)]
        renders = photos[::-1]
    from PIL import ImageDraw

    w, h = size
    out = []
    for i in range(n):
        backdrop = (photos if i % 2 == 0 else renders)[(i // 2) % len(photos if i % 2 == 0 else renders)]
        big = backdrop.resize(size, Image.Resampling.BICUBIC)
        for _ in range(int(rng.integers(3, 8))):   # native-resolution detail
            tile = photos[int(rng.integers(len(photos)))]
            scale = float(rng.uniform(0.7, 1.5))
            tw, th = max(8, min(w, int(tile.width * scale))), max(8, min(h, int(tile.height * scale)))
            tile = tile.resize((tw, th), Image.Resampling.BICUBIC)
            big.paste(tile, (int(rng.integers(0, max(1, w - tw))), int(rng.integers(0, max(1, h - th)))))
        draw = ImageDraw.Draw(big)
        for _ in range(int(rng.integers(5, 20))):    # sharp edges and thin lines at full resolution
            x, y = float(rng.uniform(0, w)), float(rng.uniform(0, h))
            color = tuple(int(v) for v in rng.integers(0, 256, 3))
            if rng.random() < 0.5:
                draw.line([(x, y), (x + float(rng.uniform(-w / 3, w / 3)), y + float(rng.uniform(-h / 3, h / 3)))],
                          fill=color, width=int(rng.integers(1, 6)))
            else:
                r = float(rng.uniform(10, 300))
                draw.rectangle((x - r, y - r, x + r, y + r * float(rng.uniform(0.3, 1.5))), outline=color,
                               width=int(rng.integers(1, 4)))
        arr = np.asarray(big, np.int16)
        noise = rng.integers(-6, 7, size=arr.shape, dtype=np.int16)
        arr = np.clip(arr + noise, 0, 255).astype(np.uint8)
        p = folder / f"camera_{i:03d}.jpg"
        Image.fromarray(arr).save(p, "JPEG", quality=quality)
        out.append(p)
    return out


def list_images(folder: str | Path) -> list[Path]:
    from .discover import iter_files

    return [Path(p) for p in iter_files([str(folder)]) if isinstance(p, (str, Path))]


# -- the PyTorch reference ------------------------------------------------------------------------

class TorchReference:
    """The PyTorch eager FP32 original (clipscan.export.load_reference); torch is imported here only."""

    def __init__(self, arch: str, weights: str, heads: list[str], *, quick_gelu=None):
        import torch

        from clipscan.export import load_reference

        self.torch = torch
        self.reference = load_reference(arch, weights, heads, quick_gelu=quick_gelu)
        self.graph = self.reference.graph()
        self.names = self.graph.output_names()
        self.threads = torch.get_num_threads()

    def run(self, x: np.ndarray) -> dict[str, np.ndarray]:
        torch = self.torch
        with torch.inference_mode():
            outs = self.graph(torch.from_numpy(np.ascontiguousarray(x, np.float32)))
        return {n: o.float().numpy() for n, o in zip(self.names, outs)}

    def transform(self, manifest):
        """open_clip's own inference transform for the manifest's recipe (the plain pipeline's)."""
        import open_clip

        spec, inp = manifest.preprocess, manifest.input
        norm = manifest.backbone.get("normalization_folded") or {}
        mean = tuple(inp.mean) if not inp.folded else tuple(norm["mean"])
        std = tuple(inp.std) if not inp.folded else tuple(norm["std"])
        h, w = spec.resize_size
        size = h if spec.resize_mode == "shortest" and h == w else (h, w)
        return open_clip.image_transform(size, is_train=False, mean=mean, std=std, resize_mode=spec.resize_mode,
                                         interpolation=spec.interpolation, fill_color=spec.pad_fill)


def _float_input(manifest, x: np.ndarray) -> np.ndarray:
    """The normalised float32 input the PyTorch reference takes, from the runtime's tensor."""
    if not manifest.input.folded:
        return x.astype(np.float32)
    norm = manifest.backbone.get("normalization_folded") or {}
    mean = np.asarray(norm["mean"], np.float32).reshape(1, 3, 1, 1)
    std = np.asarray(norm["std"], np.float32).reshape(1, 3, 1, 1)
    return (x.astype(np.float32) / np.float32(255.0) - mean) / std


# -- fidelity -------------------------------------------------------------------------------------

def compare_draft_rows(manifest, exact_rows: list, draft_rows: list) -> tuple[dict, list[int]]:
    """`compare_outputs` of draft- against exact-decoded scan rows of the same files, on the rows both
    decoded without error; returns (metrics, indices of those rows). Gates are the caller's."""
    good = [i for i, (e, d) in enumerate(zip(exact_rows, draft_rows)) if not e.error and not d.error]
    if not good:
        return {"n": 0}, good
    fid = compare_outputs(manifest, results_to_outputs(manifest, [exact_rows[i] for i in good]),
                          results_to_outputs(manifest, [draft_rows[i] for i in good]))
    return fid, good


def results_to_outputs(manifest, results) -> dict:
    """ScanResult rows (no errors) -> arrays keyed like graph outputs, for compare_outputs."""
    out: dict = {}
    det, q, emb = manifest.decision_head(), manifest.head("quality"), manifest.embedding
    if det is not None and "probability" in det.outputs:
        out[det.outputs["probability"]] = np.array([r.p_generated for r in results], np.float64)
    if q is not None and "score" in q.outputs:
        out[q.outputs["score"]] = np.array([r.quality for r in results], np.float64)
    if emb is not None and all(r.embedding is not None for r in results):
        out[emb["output"]] = np.stack([r.embedding for r in results])
    return out


# -- the benchmark ----------------------------------------------------------------------------------

@dataclass
class BenchConfig:
    models: list[str]
    batch_sizes: list[int] = field(default_factory=lambda: [1, 8, 32])
    backends: list[str] | None = None        # None: every available backend
    mode: str = "both"                        # model | e2e | both
    images: str | None = None
    torch_arch: str | None = None
    torch_weights: str | None = None
    torch_heads: list[str] = field(default_factory=list)
    quick_gelu: bool | None = None
    warmup: int = 2
    min_iters: int = 10
    min_seconds: float = 2.0
    max_seconds: float = 20.0
    e2e_passes: int = 3
    settle_seconds: float = 0.2               # untimed calls at the start of each candidate's turn
    block_seconds: float = 0.5                # timed calls per candidate's turn (at least one)
    cold_start: bool = True
    camera: int = 0                           # > 0: also run the 12 MP section with this many images
    camera_size: tuple[int, int] = (4000, 3000)
    camera_dir: str | None = None
    camera_models: list[str] | None = None   # artifacts of the camera section (default: every artifact)
    decode: str = "exact"                     # decode option of the e2e ONNX Runtime runs
    workers: int | None = None
    spin: bool = True                         # ONNX Runtime worker threads spin between calls (e2e and camera runs)


def available_backends(requested: list[str] | None) -> tuple[list[str], list[dict]]:
    from .backends import backend_status

    status = backend_status()
    names = [n for n, _, reason in status if reason is None]
    skipped = [{"backend": n, "reason": reason} for n, _, reason in status if reason is not None]
    if requested:
        unknown = [b for b in requested if b not in {n for n, _, _ in status}]
        if unknown:
            raise ValueError(f"unknown backend(s) {unknown}; known: {[n for n, _, _ in status]}")
        skipped = [s for s in skipped if s["backend"] in requested]
        names = [b for b in requested if b in names]
    return names, skipped


def _label(scanner) -> str:
    return f"{Path(scanner.artifact.path).name}"


def _measure(fn, cfg: BenchConfig, *, iters: int | None = None) -> dict:
    reset_ok = reset_peak_rss()
    samples = time_loop(fn, warmup=cfg.warmup, min_iters=iters or cfg.min_iters, min_seconds=cfg.min_seconds,
                        max_seconds=cfg.max_seconds)
    return {"iterations": len(samples), "latency_ms": percentiles(samples), "peak_rss_mb": peak_rss_mb(),
            "peak_rss_reset": reset_ok, "_median_s": float(np.median(samples))}


def _prepared_inputs(scanner, paths: list[Path]) -> tuple[np.ndarray, list[str], list[dict]]:
    """The benchmark images decoded and preprocessed once, (N, 3, H, W); undecodable files listed."""
    rows, names, bad = [], [], []
    for p in paths:
        x = scanner._prepare(str(p))
        if isinstance(x, np.ndarray):
            rows.append(x[:1])
            names.append(str(p))
        else:
            bad.append({"path": str(p), "error": str(x)})
    if not rows:
        raise ValueError("none of the benchmark images could be decoded")
    return np.concatenate(rows), names, bad


def _tile(x: np.ndarray, n: int) -> np.ndarray:
    reps = -(-n // len(x))
    return np.ascontiguousarray(np.concatenate([x] * reps)[:n])


def cold_start(model: str, backend: str, image: str, timeout: float = 300.0) -> dict:
    """Seconds from launching `python -m clipscan scan` on one image to its first result line."""
    cmd = [sys.executable, "-m", "clipscan", "scan", "-q", "--model", model, "--backend", backend, image]
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        line = proc.stdout.readline()
        first = time.perf_counter() - t0
        proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.communicate()
        return {"seconds": None, "error": "timeout"}
    total = time.perf_counter() - t0
    ok = bool(line.strip())
    return {"seconds": first if ok else None, "process_seconds": total, "exit_code": proc.returncode,
            "error": None if ok else "no result line", "command": " ".join(cmd[1:])}


def run_benchmark(cfg: BenchConfig) -> dict:
    from .artifact import load_artifact
    from .scanner import Scanner

    if cfg.mode not in ("model", "e2e", "both"):
        raise ValueError(f"mode must be model, e2e or both, got {cfg.mode!r}")
    if cfg.decode not in ("exact", "draft"):
        raise ValueError(f"decode must be exact or draft, got {cfg.decode!r}")
    if any(b < 1 for b in cfg.batch_sizes):
        raise ValueError("batch sizes must be >= 1")
    for m in cfg.models:
        if not Path(m).is_file():
            raise FileNotFoundError(f"model file {m} does not exist")
    backends, skipped = available_backends(cfg.backends)
    if not backends:
        raise ValueError(f"no requested backend is available here: {skipped}")
    tmp = Path(tempfile.mkdtemp(prefix="clipscan-bench-"))
    if cfg.images:
        if not Path(cfg.images).exists():
            raise FileNotFoundError(f"image folder {cfg.images} does not exist")
        paths = list_images(cfg.images)
        images_desc = f"{cfg.images} ({len(paths)} files)"
    else:
        paths = synthetic_images(tmp / "images", 16)
        images_desc = f"16 synthetic 640x480 JPEGs (q=90) in {tmp / 'images'}"
    if not paths:
        raise ValueError(f"no image files found in {cfg.images}")

    try:
        load_start = list(os.getloadavg())
    except OSError:
        load_start = None
    report: dict = {
        "clipscan_bench": 1,
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "machine": None,
        "settings": {"batch_sizes": cfg.batch_sizes, "backends": backends, "skipped_backends": skipped,
                     "mode": cfg.mode, "images": images_desc, "warmup": cfg.warmup, "min_iters": cfg.min_iters,
                     "min_seconds": cfg.min_seconds, "max_seconds": cfg.max_seconds, "e2e_passes": cfg.e2e_passes,
                     "settle_seconds": cfg.settle_seconds, "block_seconds": cfg.block_seconds,
                     "decode": cfg.decode, "spin": cfg.spin},
        "timed_region": {
            "model": "one inference call on a preprocessed float32 batch already in memory (ONNX Runtime "
                     "session.run / PyTorch eager forward under inference_mode); no decode, no preprocessing",
            "e2e": "one full pass over the image folder: file read, decode (Scanner thread pool), preprocessing, "
                   "inference, postprocessing to result rows; PyTorch plain pipeline: sequential PIL decode + "
                   "open_clip transform + eager forward + threshold",
            "cold_start": "launch of `python -m clipscan scan` on one image until its first result line",
            "peak_rss_mb": "process peak RSS (VmHWM) while the candidate is created and run once; "
                           "peak_rss_added_mb: the part over the RSS before it was created",
            "interleaving": "per batch size, all candidates timed in rotating rounds (shared-machine noise); each "
                            "turn: untimed calls for settle_seconds (other candidates' worker threads stop "
                            "spinning), then timed calls for block_seconds",
        },
        "reference": None,
        "results": [],
        "fidelity": {},
        "cold_start": [],
        "errors": [],
    }

    torch_ref = None
    if cfg.torch_weights or cfg.torch_arch:
        if not (cfg.torch_arch and cfg.torch_weights and cfg.torch_heads):
            raise ValueError("the PyTorch reference needs --torch-arch, --torch-weights and --torch-heads")
        try:
            torch_ref = TorchReference(cfg.torch_arch, cfg.torch_weights, cfg.torch_heads, quick_gelu=cfg.quick_gelu)
        except ImportError as e:
            report["errors"].append(f"PyTorch reference skipped: {e}")
            log.warning("PyTorch reference skipped (torch/open_clip not installed?): %s", e)

    manifests = {m: load_artifact(m).manifest for m in cfg.models}
    first = cfg.models[0]
    # fidelity reference: PyTorch, else the (first) FP32 artifact on the CPU backend
    fp32 = next((m for m in cfg.models if manifests[m].precision == "fp32"), None)
    cpu_ref_scanner = Scanner(first if fp32 is None else fp32, backend="cpu", batch_size=max(cfg.batch_sizes),
                              decode="exact")
    x_all, names, bad = _prepared_inputs(cpu_ref_scanner, paths)
    report["settings"]["decoded_images"] = len(names)
    report["settings"]["undecodable_images"] = bad
    if torch_ref is not None:
        ref_outputs = {}
        for i in range(0, len(x_all), 32):
            part = torch_ref.run(_float_input(cpu_ref_scanner.manifest, x_all[i:i + 32]))
            for k, v in part.items():
                ref_outputs.setdefault(k, []).append(v)
        ref_outputs = {k: np.concatenate(v) for k, v in ref_outputs.items()}
        report["reference"] = {"kind": "pytorch", "what": f"PyTorch eager FP32 ({cfg.torch_arch}, {cfg.torch_weights}, "
                                                          f"torch threads {torch_ref.threads})"}
    elif fp32 is not None:
        ref_outputs = {k: v for k, v in _predict_all(cpu_ref_scanner, x_all).items()}
        report["reference"] = {"kind": "fp32_artifact", "artifact": Path(fp32).name,
                               "what": f"{Path(fp32).name} on ONNX Runtime CPU (no PyTorch reference given): "
                                       "speed ratios and fidelity are against this artifact"}
    else:
        ref_outputs = None
        report["reference"] = {"kind": None, "what": "no PyTorch reference and no FP32 artifact: no ratios/fidelity"}
    cpu_ref_scanner.close()

    # -- model mode: per batch size, every candidate measured in interleaved rounds -----------------------
    if cfg.mode in ("model", "both"):
        for bs in cfg.batch_sizes:
            with ExitStack() as stack:
                cands = []
                if torch_ref is not None:
                    xt = _tile(_float_input(manifests[first], x_all), bs)
                    fn = (lambda xt=xt: torch_ref.run(xt))
                    cands.append((("pytorch", "eager-cpu", "pytorch-fp32", "fp32", None), fn, _memory_probe(None, fn)))
                def predict_run(model, holder, bs=bs):
                    xb = _tile(x_all, bs).astype(manifests[model].input.dtype)
                    return lambda: holder["sc"].predict(xb)

                cands += [c[:3] for c in _scanner_candidates(stack, cfg, manifests, backends, bs, report, "model",
                                                             {}, predict_run)]
                for key, m in _interleaved(cands, cfg, cfg.min_iters):
                    runtime, backend_ran, artifact, precision, requested = key
                    row = _row("model", runtime, backend_ran, artifact, precision, bs, m)
                    if requested:
                        row["backend_requested"] = requested
                    report["results"].append(row)

    # -- fidelity of each artifact next to its speed --------------------------------------------------
    if ref_outputs is not None:
        for model in cfg.models:
            try:
                with Scanner(model, backend=backends[0], batch_size=32) as sc:
                    got = _predict_all(sc, x_all)
                    fid = compare_outputs(sc.manifest, ref_outputs, got)
                    fid["against"] = report["reference"]["kind"]
                    fid["backend"] = sc.backend_name
                    report["fidelity"][Path(model).name] = fid
            except Exception as e:
                report["errors"].append(f"fidelity {Path(model).name}: {type(e).__name__}: {e}")

    # -- e2e mode: whole folder passes, interleaved the same way ------------------------------------------
    if cfg.mode in ("e2e", "both"):
        files = [str(p) for p in paths]
        transform = torch_ref.transform(manifests[first]) if torch_ref is not None else None
        for bs in cfg.batch_sizes:
            with ExitStack() as stack:
                cands = []
                errors: dict = {}
                if torch_ref is not None:
                    fn = (lambda bs=bs: plain_pipeline(torch_ref, transform, manifests[first], files, bs))
                    cands.append((("pytorch", "eager-cpu", "pytorch-fp32", "fp32", None), fn, _memory_probe(None, fn)))
                def scan_run(model, holder):
                    holder["errors"] = []

                    def one_pass():
                        holder["errors"][:] = [r.error for r in holder["sc"].scan(files) if r.error]
                    return one_pass

                for key, fn, mem, holder in _scanner_candidates(stack, cfg, manifests, backends, bs, report, "e2e",
                                                                {"decode": cfg.decode, "workers": cfg.workers, "spin": cfg.spin},
                                                                scan_run):
                    errors[key] = holder["errors"]
                    cands.append((key, fn, mem))
                for key, m in _interleaved(cands, cfg, cfg.e2e_passes):
                    runtime, backend_ran, artifact, precision, requested = key
                    row = _row("e2e", runtime, backend_ran, artifact, precision, bs, m, images=len(files),
                               decode="exact (plain PIL)" if runtime == "pytorch" else cfg.decode)
                    if requested:
                        row["backend_requested"] = requested
                        row["error_rows"] = len(errors[key])
                    report["results"].append(row)

    # -- cold start -----------------------------------------------------------------------------------
    if cfg.cold_start and names:
        for model in cfg.models:
            for backend in backends:
                cs = cold_start(model, backend, names[0])
                cs.update(artifact=Path(model).name, backend=backend)
                report["cold_start"].append(cs)

    # -- camera-sized images --------------------------------------------------------------------------
    if cfg.camera > 0:
        try:
            report["camera"] = camera_benchmark(cfg, torch_ref, backends[0], tmp)
        except Exception as e:
            report["errors"].append(f"camera section: {type(e).__name__}: {e}")
            log.exception("camera section failed")

    add_ratios(report)
    add_gflops(report, manifests)
    report["machine"] = machine_info()
    report["machine"]["load_average_at_start"] = load_start
    return report


def _scanner_candidates(stack, cfg: BenchConfig, manifests: dict, backends, bs: int, report: dict, mode: str,
                        scanner_kwargs: dict, make_run) -> list:
    """(key, run, memory, holder) for every artifact on every backend at batch `bs`.

    `make_run(model, holder)` returns the call to time; the Scanner is created inside the memory
    probe and put in holder["sc"]. A candidate that fails to start is reported, not fatal.
    """
    from .scanner import Scanner

    out = []
    for model in cfg.models:
        for backend in backends:
            try:
                holder: dict = {}

                def create(model=model, backend=backend, holder=holder):
                    holder["sc"] = stack.enter_context(Scanner(model, backend=backend, batch_size=bs, **scanner_kwargs))

                run = make_run(model, holder)
                mem = _memory_probe(create, run)
                key = ("onnxruntime", holder["sc"].backend_name, Path(model).name, manifests[model].precision, backend)
                out.append((key, run, mem, holder))
            except Exception as e:
                report["errors"].append(f"{mode} {Path(model).name} {backend} batch {bs}: {type(e).__name__}: {e}")
                log.error("%s %s on %s at batch %d failed: %s", mode, model, backend, bs, e)
    return out


def _current_rss_mb() -> float | None:
    kb = _status_kb("VmRSS")
    return None if kb is None else kb / 1024.0


def _memory_probe(create, fn) -> dict:
    """Peak RSS while one candidate is created (if `create`) and run once, alone: the process peak
    and the part added over the RSS before it (other candidates already loaded stay resident)."""
    import gc

    gc.collect()
    reset_ok = reset_peak_rss()
    before = _current_rss_mb()
    if create is not None:
        create()
    fn()
    peak = peak_rss_mb()
    added = (peak - before) if (reset_ok and peak is not None and before is not None) else None
    return {"peak_rss_mb": peak, "peak_rss_added_mb": added, "peak_rss_reset": reset_ok}


def _interleaved(cands, cfg: BenchConfig, min_iters: int):
    """Time every candidate in rounds, order rotated every round, so load from other processes on a
    shared machine falls on all of them alike. Yields (key, measurement).

    Each candidate's turn is a block: first untimed calls for `cfg.settle_seconds` (at least one),
    then timed calls for `cfg.block_seconds` (at least one); calls that take over 5x the settle time
    (whole e2e passes) skip it after the first round. The settle matters: ONNX Runtime's (and
    OpenMP's) worker threads keep spinning for tens of milliseconds after a call returns, so a call
    timed right after another candidate's shares the cores with that candidate's spinning threads
    (measured here: a ViT-B/32 INT8 call at batch 1 took 35-40 ms right after another session's call,
    19-23 ms on its own). Stopping rule: at least `min_iters` timed calls per candidate and
    `min_seconds` x candidates, or the time box `max_seconds` x candidates after 3 rounds."""
    if not cands:
        return
    for _, fn, _ in cands:
        for _ in range(cfg.warmup):
            fn()
    samples = {key: [] for key, _, _ in cands}
    n = len(cands)
    start = time.perf_counter()
    rnd = 0
    while True:
        order = cands[rnd % n:] + cands[:rnd % n]
        for key, fn, _ in order:
            # settle, unless one call already lasts far longer than the spinning it outwaits (e2e passes)
            settle = not samples[key] or float(np.median(samples[key])) < 5 * cfg.settle_seconds
            samples[key] += timed_turn(fn, cfg.settle_seconds, cfg.block_seconds, settle=settle)
        rnd += 1
        elapsed = time.perf_counter() - start
        fewest = min(len(v) for v in samples.values())
        if rnd >= 3 and elapsed >= cfg.max_seconds * n:
            break
        if fewest >= min_iters and elapsed >= cfg.min_seconds * n and rnd >= 2:
            break
    for key, _, mem in cands:
        xs = samples[key]
        yield key, {"iterations": len(xs), "latency_ms": percentiles(xs), **mem, "_median_s": float(np.median(xs)),
                    "interleaved_with": n - 1, "rounds": rnd}


def _predict_all(scanner, x: np.ndarray, chunk: int = 32) -> dict:
    out: dict = {}
    for i in range(0, len(x), chunk):
        for k, v in scanner.predict(x[i:i + chunk]).items():
            out.setdefault(k, []).append(np.asarray(v))
    return {k: np.concatenate(v) for k, v in out.items()}


def _row(mode, runtime, backend, artifact, precision, bs, m, *, images: int | None = None, decode=None) -> dict:
    med = m.pop("_median_s")
    row = {"mode": mode, "runtime": runtime, "backend": backend, "artifact": artifact, "precision": precision,
           "batch_size": bs, **m}
    if mode == "model":
        row["images_per_s"] = bs / med if med > 0 else None
    else:
        row["images"] = images
        row["decode"] = decode
        row["images_per_s"] = images / med if med > 0 else None
    return row


def add_gflops(report: dict, manifests: dict) -> None:
    """Achieved GFLOP/s of every row: images/s x the model's FLOPs per image as counted at export
    (`gflops_per_image` in the manifest; the PyTorch rows use the same model's count). Shows how
    close a run is to the machine's arithmetic peak, which bounds every speed-up."""
    by_name = {Path(m).name: man.backbone.get("gflops_per_image") for m, man in manifests.items()}
    shared = next((g for g in by_name.values() if g), None)
    report["gflops_per_image"] = shared
    for r in report["results"]:
        g = by_name.get(r["artifact"]) or (shared if r["runtime"] == "pytorch" else None)
        r["gflops_per_s"] = g * r["images_per_s"] if (g and r.get("images_per_s")) else None


def add_ratios(report: dict) -> None:
    """images/s of every row divided by the reference row's (same mode and batch size, same run):
    the PyTorch row when there is one, else the FP32 artifact on the CPU backend."""
    rows = report["results"]
    kind = (report.get("reference") or {}).get("kind")
    for r in rows:
        r["ratio_vs_reference"] = None
        r["ratio_reference"] = None
    for r in rows:
        if kind == "pytorch":
            ref = next((x for x in rows if x["runtime"] == "pytorch" and x["mode"] == r["mode"]
                        and x["batch_size"] == r["batch_size"]), None)
        elif kind == "fp32_artifact":
            ref = next((x for x in rows if x["runtime"] == "onnxruntime" and x["artifact"] == report["reference"]["artifact"]
                        and x.get("backend_requested") == "cpu" and x["mode"] == r["mode"]
                        and x["batch_size"] == r["batch_size"]), None)
        else:
            ref = None
        if ref is not None and ref.get("images_per_s") and r.get("images_per_s"):
            r["ratio_vs_reference"] = r["images_per_s"] / ref["images_per_s"]
            r["ratio_reference"] = f"{ref['runtime']}:{ref['artifact']}:{ref['backend']}"
    # second ratio for reduced-precision rows: against the FP32 artifact on the same backend, same run
    for r in rows:
        r["ratio_vs_fp32_artifact"] = None
        if r["runtime"] != "onnxruntime" or r["precision"] == "fp32" or not r.get("images_per_s"):
            continue
        ref = next((x for x in rows if x["runtime"] == "onnxruntime" and x["precision"] == "fp32"
                    and x["backend"] == r["backend"] and x["mode"] == r["mode"] and x["batch_size"] == r["batch_size"]
                    and x.get("images_per_s")), None)
        if ref is not None:
            r["ratio_vs_fp32_artifact"] = r["images_per_s"] / ref["images_per_s"]


def plain_pipeline(torch_ref: TorchReference, transform, manifest, files: list[str], batch_size: int) -> list[float]:
    """The plain pipeline: PIL full decode + open_clip transform + PyTorch eager, sequential; returns p."""
    torch = torch_ref.torch
    det = manifest.decision_head()
    ps: list[float] = []
    batch = []

    def flush():
        if not batch:
            return
        with torch.inference_mode():
            outs = torch_ref.graph(torch.stack(batch))
        named = dict(zip(torch_ref.names, outs))
        if det is not None and det.outputs.get("probability") in named:
            ps.extend(named[det.outputs["probability"]].reshape(len(batch), -1)[:, 0].tolist())
        batch.clear()

    for f in files:
        try:
            with Image.open(f) as im:
                img = im.convert("RGB")
        except Exception:
            continue
        batch.append(transform(img))
        if len(batch) >= batch_size:
            flush()
    flush()
    return ps


# -- camera-sized images: decode cost, overlap, draft fidelity --------------------------------------------

def camera_benchmark(cfg: BenchConfig, torch_ref, backend: str, tmp: Path) -> dict:
    """The 12 MP section: decode cost exact vs draft (shared), the plain pipeline (PIL full decode +
    open_clip transform + PyTorch eager) at batch 1 and at the benchmark's largest batch, and per
    artifact: inference cost, e2e images/s exact and draft with their ratios to the plain pipeline,
    overlap of decoding with inference, and draft decoding's fidelity against exact decoding."""
    from .decode import load_image
    from .scanner import Scanner

    folder = Path(cfg.camera_dir) if cfg.camera_dir else tmp / "camera"
    existing = sorted(folder.glob("camera_*.jpg")) if folder.exists() else []
    if len(existing) >= cfg.camera:
        paths = existing[:cfg.camera]
    else:
        t0 = time.perf_counter()
        paths = camera_images(folder, cfg.camera, cfg.camera_size)
        log.info("wrote %d camera-sized JPEGs in %.1f s", len(paths), time.perf_counter() - t0)
    files = [str(p) for p in paths]
    bs = max(cfg.batch_sizes)
    out: dict = {"images": len(files), "size": list(Image.open(files[0]).size), "jpeg_quality": 90,
                 "folder": str(folder), "backend": backend, "batch_size": bs, "artifacts": []}
    models = cfg.camera_models or cfg.models
    # decode (+ preprocessing) cost per image on one thread, exact vs draft (the same for every artifact
    # with the same preprocessing; measured with the first one's)
    with Scanner(models[0], backend=backend, batch_size=bs, decode="draft") as draft:
        for name, draft_size in (("exact", None), ("draft", draft._draft_size)):
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
    for model in models:
        try:
            out["artifacts"].append(_camera_artifact(cfg, model, backend, files, bs))
        except Exception as e:
            out.setdefault("errors", []).append(f"{Path(model).name}: {type(e).__name__}: {e}")
            log.exception("camera section for %s failed", model)
    if torch_ref is not None:
        manifest = load_artifact_manifest(models[0])
        transform = torch_ref.transform(manifest)
        out["plain"] = {}
        for pbs in sorted({1, bs}):
            samples = time_loop(lambda pbs=pbs: plain_pipeline(torch_ref, transform, manifest, files, pbs), warmup=1,
                                min_iters=cfg.e2e_passes, min_seconds=0.0, max_seconds=cfg.max_seconds * 3)
            med = float(np.median(samples))
            out["plain"][str(pbs)] = {"batch_size": pbs, "images_per_s": len(files) / med, "seconds": med}
        for a in out["artifacts"]:
            for pbs, plain in out["plain"].items():
                a[f"ratio_exact_vs_plain_b{pbs}"] = a["e2e_images_per_s_exact"] / plain["images_per_s"]
                a[f"ratio_draft_vs_plain_b{pbs}"] = a["e2e_images_per_s_draft"] / plain["images_per_s"]
    return out


def _camera_artifact(cfg: BenchConfig, model: str, backend: str, files: list[str], bs: int) -> dict:
    from .scanner import Scanner

    out: dict = {"artifact": Path(model).name, "precision": load_artifact_precision(model)}
    with Scanner(model, backend=backend, batch_size=bs, decode="exact", spin=cfg.spin) as exact, \
            Scanner(model, backend=backend, batch_size=bs, decode="draft", spin=cfg.spin) as draft:
        # inference only, on the same number of rows
        x = np.concatenate([exact._prepare(f) for f in files[:bs]])
        inf = time_loop(lambda: exact.predict(x), warmup=1, min_iters=3, min_seconds=1.0, max_seconds=10.0)
        out["inference_ms_per_image"] = float(np.median(inf) / len(x) * 1e3)
        # end to end through the Scanner (decode in its thread pool, overlapped with inference)
        results = {}
        for name, sc in (("exact", exact), ("draft", draft)):
            rows = []

            def one_pass():
                rows[:] = list(sc.scan(files))

            samples = time_loop(one_pass, warmup=1, min_iters=cfg.e2e_passes, min_seconds=0.0,
                                max_seconds=cfg.max_seconds)
            med = float(np.median(samples))
            out[f"e2e_images_per_s_{name}"] = len(files) / med
            out[f"e2e_seconds_{name}"] = med
            results[name] = rows
        out["ratio_draft_vs_exact"] = out["e2e_images_per_s_draft"] / out["e2e_images_per_s_exact"]
        out["overlap_trace"] = overlap_trace(draft, files)
        out["workers"] = exact.workers
        fid, good = compare_draft_rows(exact.manifest, results["exact"], results["draft"])
        fid["against"] = "exact decoding (same artifact, same backend)"
        fid["gates"] = {"agreement_min": DRAFT_MIN_AGREEMENT, "cosine_mean_min": DRAFT_MIN_COSINE_MEAN}
        fid["passed"] = bool(fid.get("agreement", 0.0) >= DRAFT_MIN_AGREEMENT
                             and fid.get("cosine_mean", 0.0) >= DRAFT_MIN_COSINE_MEAN)
        fid["note"] = ("draft stays opt-in: the gates are checked on these images only; "
                       f"{len(good)} images cannot show agreement to 0.1%")
        out["draft_fidelity"] = fid
    return out


def overlap_trace(scanner, files: list[str]) -> dict:
    """One traced Scanner pass: how much of the inference time had a decode running at the same time.

    Wraps the scanner's per-file `_prepare` (decode + preprocess, in its thread pool) and `predict`
    (inference) to record their intervals; the wrappers are removed afterwards.
    """
    import threading

    lock = threading.Lock()
    dec: list[tuple[float, float]] = []
    inf: list[tuple[float, float]] = []
    prepare, predict = scanner._prepare, scanner.predict

    def traced_prepare(source):
        t0 = time.perf_counter()
        try:
            return prepare(source)
        finally:
            with lock:
                dec.append((t0, time.perf_counter()))

    def traced_predict(x):
        t0 = time.perf_counter()
        try:
            return predict(x)
        finally:
            inf.append((t0, time.perf_counter()))

    scanner._prepare, scanner.predict = traced_prepare, traced_predict
    try:
        t0 = time.perf_counter()
        for _ in scanner.scan(files):
            pass
        wall = time.perf_counter() - t0
    finally:
        del scanner._prepare, scanner.predict
    inf_total = sum(b - a for a, b in inf)
    dec_total = sum(b - a for a, b in dec)
    overlapped = 0.0
    for a, b in inf:  # length of [a, b] covered by the union of decode intervals
        cuts = sorted((max(a, c), min(b, d)) for c, d in dec if d > a and c < b)
        end = a
        for c, d in cuts:
            if d > end:
                overlapped += d - max(c, end)
                end = d
    return {"wall_seconds": wall, "decode_busy_seconds": dec_total, "inference_seconds": inf_total,
            "inference_overlapped_fraction": overlapped / inf_total if inf_total else None,
            "note": "decode_busy sums the worker threads' decode+preprocess time (can exceed wall); "
                    "inference_overlapped_fraction = share of inference time during which a decode was running"}


def load_artifact_precision(model: str) -> str:
    return load_artifact_manifest(model).precision


def load_artifact_manifest(model: str):
    from .artifact import load_artifact

    return load_artifact(model).manifest


# -- output ---------------------------------------------------------------------------------------------

def _f(v, fmt="{:.1f}") -> str:
    return "-" if v is None else fmt.format(v)


def format_table(report: dict) -> str:
    lines = [f"machine: {report['machine'].get('cpu_description') or report['machine']['cpu']} (load average at start "
             f"{report['machine'].get('load_average_at_start')}, at end {report['machine'].get('load_average_1_5_15')}); "
             f"reference: {(report.get('reference') or {}).get('what')}"]
    if report.get("gflops_per_image"):
        lines.append(f"model: {report['gflops_per_image']:.2f} GFLOP per image (counted at export; GFLOP/s = img/s x that, "
                     "int8 rows count integer operations the same way)")
    head = f"{'mode':<6}{'runtime':<12}{'backend':<17}{'artifact':<26}{'prec':<6}{'batch':>6}{'iters':>6}" \
           f"{'p50 ms':>10}{'p95 ms':>10}{'p99 ms':>10}{'img/s':>9}{'ratio':>7}{'GFLOP/s':>8}{'RSS MB':>8}"
    lines += [head, "-" * len(head)]
    for r in report["results"]:
        lat = r["latency_ms"]
        lines.append(f"{r['mode']:<6}{r['runtime']:<12}{r['backend'][:16]:<17}{r['artifact'][:25]:<26}{r['precision']:<6}"
                     f"{r['batch_size']:>6}{r['iterations']:>6}{_f(lat['p50']):>10}{_f(lat['p95']):>10}"
                     f"{_f(lat['p99']):>10}{_f(r['images_per_s']):>9}{_f(r['ratio_vs_reference'], '{:.2f}x'):>7}"
                     f"{_f(r.get('gflops_per_s'), '{:.0f}'):>8}{_f(r['peak_rss_mb'], '{:.0f}'):>8}")
    vs32 = [r for r in report["results"] if r.get("ratio_vs_fp32_artifact")]
    if vs32:
        lines.append("against the FP32 artifact on the same backend (same run): " + ", ".join(
            f"{r['mode']} {r['artifact']} b{r['batch_size']} {r['ratio_vs_fp32_artifact']:.2f}x" for r in vs32))
    if report["fidelity"]:
        lines.append("fidelity (against %s):" % (report.get("reference") or {}).get("kind"))
        for name, f in report["fidelity"].items():
            lines.append(f"  {name:<30} cosine mean {_f(f.get('cosine_mean'), '{:.7f}')} worst "
                         f"{_f(f.get('cosine_worst'), '{:.7f}')}  agreement {_f(f.get('agreement'), '{:.4f}')} "
                         f"on {f['n']} images")
    for c in report["cold_start"]:
        lines.append(f"cold start {c['artifact']} on {c['backend']}: {_f(c['seconds'], '{:.2f}')} s "
                     f"(to the first result line)")
    cam = report.get("camera")
    if cam:
        lines.append(f"camera-sized: {cam['images']} JPEGs {cam['size'][0]}x{cam['size'][1]} q90 on {cam['backend']}, "
                     f"batch {cam['batch_size']}; decode+preprocess ms/image (one thread) exact "
                     f"{cam['decode_preprocess_ms_exact']:.1f} (decoded {cam['decoded_size_exact']}) vs draft "
                     f"{cam['decode_preprocess_ms_draft']:.1f} (decoded {cam['decoded_size_draft']})")
        plain = cam.get("plain") or {}
        if plain:
            lines.append("  plain pipeline (PIL full decode + open_clip transform + PyTorch eager): "
                         + ", ".join(f"batch {p['batch_size']} {p['images_per_s']:.2f} img/s" for p in plain.values()))
        for a in cam["artifacts"]:
            ratios = "".join(f", vs plain b{k}: exact {a[f'ratio_exact_vs_plain_b{k}']:.2f}x draft "
                             f"{a[f'ratio_draft_vs_plain_b{k}']:.2f}x" for k in plain)
            f = a["draft_fidelity"]
            lines.append(f"  {a['artifact']} ({a['precision']}): inference {a['inference_ms_per_image']:.1f} ms/image; "
                         f"e2e img/s exact {a['e2e_images_per_s_exact']:.2f}, draft {a['e2e_images_per_s_draft']:.2f}"
                         f"{ratios}")
            lines.append(f"    draft vs exact: agreement {_f(f.get('agreement'), '{:.4f}')} cosine mean "
                         f"{_f(f.get('cosine_mean'), '{:.6f}')} worst {_f(f.get('cosine_worst'), '{:.6f}')} on {f['n']} "
                         f"images: gates {'passed' if f['passed'] else 'FAILED'}; inference overlapped with decoding "
                         f"{_f(a['overlap_trace']['inference_overlapped_fraction'], '{:.0%}')}")
        for e in cam.get("errors", []):
            lines.append(f"  error: {e}")
    for e in report["errors"]:
        lines.append(f"error: {e}")
    return "\n".join(lines)


def write_plot(report: dict, path: str | Path) -> Path | None:
    """Throughput against batch size, one line per (mode, runtime, backend, precision/artifact)."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        log.warning("matplotlib is not installed: no plot written")
        return None
    modes = sorted({r["mode"] for r in report["results"]})
    fig, axes = plt.subplots(1, max(1, len(modes)), figsize=(6 * max(1, len(modes)), 4.5), squeeze=False)
    for ax, mode in zip(axes[0], modes):
        series: dict = {}
        for r in report["results"]:
            if r["mode"] == mode and r["images_per_s"]:
                key = f"{r['runtime']} {r['backend']} {r['precision']} ({r['artifact']})"
                series.setdefault(key, []).append((r["batch_size"], r["images_per_s"]))
        for key, pts in sorted(series.items()):
            pts.sort()
            ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="o", label=key)
        ax.set_xscale("log", base=2)
        ax.set_xlabel("batch size")
        ax.set_ylabel("images / s")
        ax.set_title(f"{mode} mode")
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize=7)
    fig.suptitle(f"clipscan bench: {report['machine'].get('cpu_description') or report['machine']['cpu']}", fontsize=8)
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def write_json(report: dict, path: str | Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(report, indent=2, default=lambda o: o.tolist() if hasattr(o, "tolist") else str(o)))
    return path
