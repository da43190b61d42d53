#!/usr/bin/env python3
"""The prepared GPU check: everything a GPU machine can tell about clipscan, in one run, into one folder.

    python tools/gpu_check.py OUT_DIR [--budget 480] [--dry-run]

Made for an NVIDIA machine that has PyTorch with CUDA, onnx and the CPU onnxruntime but no package
index (so neither onnxruntime-gpu nor TensorRT can be installed there: their wheels are hundreds of
MB). clipscan does not need to be installed: the repository's packages are linked into OUT_DIR/site.
Stages, each timed and bounded by what is left of the budget (default 8 minutes):

  environment   nvidia-smi, torch/CUDA, onnxruntime and its providers, tensorrt, `clipscan backends`
                run torch-free (what a user of the runtime would see)
  cuda_devices  real device memory and streams on every GPU (torch): allocation, two streams with
                events, per-device placement, and clipscan's own GPU probe against torch's count
  precision     FP32, TF32 and FP16 on real CUDA kernels against a float64 CPU reference: matrix
                products and a transformer block (LayerNorm, Softmax, GELU), TF32 on and off
  gpu_tests     pytest -m gpu on tests/test_gpu.py and tests/test_gpu_policy.py
  bench         `clipscan bench` (model-only) on every GPU backend that can run here, and the CPU
                backend for reference: the demo model (FP32) and its INT8 calibrated here for TensorRT
                (an FP16 artifact needs `clipscan export` and the PyTorch model: said, not run)

Every stage that cannot run says why (no GPU, no torch CUDA, no GPU backend, no pytest, out of time).
Results go to OUT_DIR/results.json and OUT_DIR/gpu_check.log; with no NVIDIA GPU visible (or
--dry-run) the GPU stages skip with their reasons, which is what tests/test_gpu_check.py runs.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import time
import traceback
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
DEMO_MODEL = REPO / "runtime" / "models" / "demo.onnx"
GPU_BACKENDS = ("tensorrt", "ort-tensorrt", "cuda")


class Skip(Exception):
    """A stage that cannot run here; the message says why."""


class Check:
    def __init__(self, out: Path, budget: float, dry_run: bool):
        self.out, self.deadline, self.dry_run = out, time.monotonic() + budget, dry_run
        self.results: dict = {"started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "stages": {}}
        self.log_file = open(out / "gpu_check.log", "w", encoding="utf-8")
        self.env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [str(self.site()),
                                                                             os.environ.get("PYTHONPATH")])))

    def log(self, text: str) -> None:
        line = f"[{time.strftime('%H:%M:%S')}] {text}"
        print(line, flush=True)
        self.log_file.write(line + "\n")
        self.log_file.flush()

    def left(self) -> float:
        return self.deadline - time.monotonic()

    def site(self) -> Path:
        """A `clipscan` package made of links to the repository's folders (pyproject's package-dir), so the
        check runs without installing anything; an installed clipscan is used as it is."""
        site = self.out / "site"
        if (site / "clipscan").exists():
            return site
        pkg = site / "clipscan"
        pkg.mkdir(parents=True)
        for item in (REPO / "clipscan").iterdir():
            (pkg / item.name).symlink_to(item)
        mapping = {"runtime": "runtime", "export": "export", "calibration": "calibration", "bench": "bench",
                   "report": "report", "triton": "triton_repo", "serve": "serve", "distributed": "distributed"}
        for name, folder in mapping.items():
            if (REPO / folder).is_dir():
                (pkg / name).symlink_to(REPO / folder)
        return site

    def run(self, cmd: list[str], timeout: float, **kw) -> subprocess.CompletedProcess:
        timeout = max(1.0, min(timeout, self.left() - 5))
        self.log("$ " + " ".join(cmd))
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, cwd=REPO,
                              env=kw.pop("env", self.env), **kw)
        self.log_file.write(proc.stdout[-20000:] + proc.stderr[-20000:] + "\n")
        return proc

    def stage(self, name: str, fn, min_seconds: float = 10) -> None:
        start = time.monotonic()
        if self.left() < min_seconds:
            record = {"status": "skipped", "reason": f"out of time ({self.left():.0f} s left of the budget)"}
        else:
            self.log(f"== {name}")
            try:
                record = {"status": "ok", **(fn() or {})}
            except Skip as e:
                record = {"status": "skipped", "reason": str(e)}
            except subprocess.TimeoutExpired as e:
                record = {"status": "failed", "reason": f"timed out after {e.timeout:.0f} s: {' '.join(e.cmd)}"}
            except Exception as e:  # noqa: BLE001 - a stage failure is a result, recorded; the next stage runs
                record = {"status": "failed", "reason": f"{type(e).__name__}: {e}",
                          "traceback": traceback.format_exc()[-4000:]}
        record["seconds"] = round(time.monotonic() - start, 1)
        self.results["stages"][name] = record
        self.log(f"{name}: {record['status']}" + (f" ({record['reason']})" if "reason" in record else ""))
        self.write()

    def write(self) -> None:
        (self.out / "results.json").write_text(json.dumps(self.results, indent=1, default=str))

    # -- facts -------------------------------------------------------------------------------------
    def visible_gpu(self) -> bool:
        return not self.dry_run and (os.path.isdir("/proc/driver/nvidia") or shutil.which("nvidia-smi") is not None)

    def need_gpu(self) -> None:
        if self.dry_run:
            raise Skip("dry run: the GPU stages are not run")
        if not self.visible_gpu():
            raise Skip("no NVIDIA GPU here (no /proc/driver/nvidia, no nvidia-smi)")

    def torch_cuda(self):
        self.need_gpu()
        try:
            import torch
        except ImportError as e:
            raise Skip(f"torch is not installed ({e})") from None
        if not torch.cuda.is_available():
            raise Skip(f"torch {torch.__version__} sees no CUDA device (torch.version.cuda={torch.version.cuda})")
        return torch

    # -- stages ------------------------------------------------------------------------------------
    def environment(self) -> dict:
        info: dict = {"python": sys.version.split()[0], "platform": platform.platform(), "dry_run": self.dry_run,
                      "visible_gpu": self.visible_gpu()}
        if shutil.which("nvidia-smi"):
            proc = self.run(["nvidia-smi", "--query-gpu=name,driver_version,memory.total,compute_cap",
                             "--format=csv,noheader"], 30)
            info["nvidia_smi"] = proc.stdout.strip().splitlines()
        for module in ("torch", "onnxruntime", "onnx", "tensorrt", "pytest", "open_clip"):
            code = (f"import json, {module} as m; print(json.dumps([m.__version__, "
                    f"getattr(getattr(m, 'version', None), 'cuda', None), "
                    f"m.get_available_providers() if hasattr(m, 'get_available_providers') else None]))")
            proc = self.run([sys.executable, "-c", code], 120)
            info[module] = json.loads(proc.stdout) if proc.returncode == 0 else f"not importable: " \
                f"{(proc.stderr.strip().splitlines() or ['?'])[-1]}"
        status = self.run([sys.executable, "-c", "import json; from clipscan.runtime.backends import "
                           "backend_status; print(json.dumps({n: r for n, _, r in backend_status()}))"], 120)
        if status.returncode != 0:
            raise RuntimeError(f"clipscan cannot list its backends: {status.stderr[-2000:]}")
        info["backends"] = json.loads(status.stdout.splitlines()[-1])
        self.results["backends"] = info["backends"]
        return info

    def cuda_devices(self) -> dict:
        torch = self.torch_cuda()
        devices = []
        for i in range(torch.cuda.device_count()):
            torch.cuda.set_device(i)
            props = torch.cuda.get_device_properties(i)
            x = torch.empty(64 << 20, dtype=torch.float32, device=f"cuda:{i}")   # 256 MiB of real device memory
            x.fill_(1.0)
            allocated = torch.cuda.memory_allocated(i)
            s1, s2 = torch.cuda.Stream(device=i), torch.cuda.Stream(device=i)
            a = torch.randn(2048, 2048, device=f"cuda:{i}")
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            with torch.cuda.stream(s1):
                r1 = a @ a
            with torch.cuda.stream(s2):
                r2 = a.t() @ a
            torch.cuda.current_stream().wait_stream(s1)
            torch.cuda.current_stream().wait_stream(s2)
            end.record()
            torch.cuda.synchronize(i)
            ok = bool(torch.isfinite(r1).all() and torch.isfinite(r2).all() and x.sum().item() == x.numel())
            del x, a, r1, r2
            torch.cuda.empty_cache()
            devices.append({"index": i, "name": props.name, "capability": f"{props.major}.{props.minor}",
                            "memory_gib": round(props.total_memory / 2**30, 1), "allocated_bytes": allocated,
                            "freed_to": torch.cuda.memory_allocated(i), "two_streams_ms": round(start.elapsed_time(end), 3),
                            "results_ok": ok})
        probe = self.run([sys.executable, "-c", "from clipscan.runtime.backends.gpu_libs import nvidia_gpu; "
                          "p = nvidia_gpu(); print(p.devices, p.driver_cuda, p.problem)"], 60)
        return {"devices": devices, "clipscan_probe": probe.stdout.strip(),
                "probe_agrees": probe.stdout.split()[:1] == [str(len(devices))]}

    def precision(self) -> dict:
        torch = self.torch_cuda()
        torch.manual_seed(0)
        out = {}
        a, b = torch.randn(1024, 1024, dtype=torch.float64), torch.randn(1024, 1024, dtype=torch.float64)
        ref = a @ b
        layer = torch.nn.TransformerEncoderLayer(512, 8, 2048, dropout=0.0, activation="gelu", batch_first=True,
                                                 norm_first=True).double().eval()
        tokens = torch.randn(16, 50, 512, dtype=torch.float64)
        with torch.no_grad():
            block_ref = layer(tokens)
        saved = (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32)
        try:
            for label, dtype, tf32 in (("fp32_tf32_off", torch.float32, False), ("fp32_tf32_on", torch.float32, True),
                                       ("fp16", torch.float16, False)):
                torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = tf32
                got = (a.to("cuda", dtype) @ b.to("cuda", dtype)).double().cpu()
                gpu_layer = torch.nn.TransformerEncoderLayer(512, 8, 2048, dropout=0.0, activation="gelu",
                                                             batch_first=True, norm_first=True)
                gpu_layer.load_state_dict(layer.state_dict())
                gpu_layer = gpu_layer.to("cuda", dtype).eval()
                with torch.no_grad():
                    block = gpu_layer(tokens.to("cuda", dtype)).double().cpu()
                cos = torch.nn.functional.cosine_similarity(block.flatten(1), block_ref.flatten(1), dim=1)
                out[label] = {"matmul_max_rel_error": float(((got - ref).abs().max() / ref.abs().max())),
                              "block_cosine_min": float(cos.min()), "block_max_abs_error":
                              float((block - block_ref).abs().max())}
        finally:
            torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = saved
        capability = torch.cuda.get_device_capability()
        out["tf32_hardware"] = capability >= (8, 0)
        out["tf32_changes_results"] = out["fp32_tf32_on"]["matmul_max_rel_error"] > \
            10 * out["fp32_tf32_off"]["matmul_max_rel_error"]
        return out

    def gpu_tests(self) -> dict:
        proc = self.run([sys.executable, "-c", "import pytest"], 60)
        if proc.returncode != 0:
            raise Skip("pytest is not installed here")
        junit = self.out / "gpu_tests.xml"
        proc = self.run([sys.executable, "-m", "pytest", "-m", "gpu or not slow", "-rs", "-q", "-p", "no:cacheprovider",
                         f"--junitxml={junit}", "tests/test_gpu.py", "tests/test_gpu_policy.py"],
                        min(self.left() - 60, 300))
        (self.out / "gpu_tests.txt").write_text(proc.stdout + proc.stderr)
        summary = (proc.stdout.strip().splitlines() or ["(no output)"])[-1]
        if proc.returncode not in (0, 5):
            raise RuntimeError(f"the GPU tests failed: {summary} (see gpu_tests.txt)")
        return {"summary": summary, "skips": [line for line in proc.stdout.splitlines() if line.startswith("SKIPPED")]}

    def bench(self) -> dict:
        status = self.results.get("backends") or {}
        reachable = [b for b in GPU_BACKENDS if b in status and status[b] is None]
        reasons = {b: status.get(b, "not listed") for b in GPU_BACKENDS if b not in reachable}
        if self.dry_run or not self.visible_gpu():
            raise Skip(f"no GPU to benchmark on ({'dry run' if self.dry_run else 'no NVIDIA GPU here'}); "
                       f"backends: {reasons}")
        if not reachable:
            raise Skip(f"no GPU backend can run here: {reasons}")
        models, precisions = [str(DEMO_MODEL)], {"fp32": "the demo model"}
        int8 = self.out / "demo_int8_tensorrt.onnx"
        proc = self.run([sys.executable, "-m", "clipscan", "calibrate", str(DEMO_MODEL), "--images",
                         str(REPO / "samples"), "-o", str(int8), "--target", "tensorrt", "--no-progress",
                         "--no-cache", "--overwrite"], 120)
        if proc.returncode == 0:
            models.append(str(int8))
            precisions["int8"] = "the demo model calibrated here for TensorRT (on the 4 sample images)"
        else:
            precisions["int8"] = f"not run: calibration failed ({proc.stderr.strip()[-300:]})"
        precisions["fp16"] = "not run: an FP16 artifact is made by `clipscan export` from the PyTorch model"
        runs = {}
        for backend in [*reachable, "cpu"]:
            target = self.out / f"bench_{backend}.json"
            proc = self.run([sys.executable, "-m", "clipscan", "bench", "--backends", backend, "--mode", "model",
                             "--batch-sizes", "1,8,32", "--max-seconds", "5", "--no-cold-start", "--json",
                             str(target), *models], min(self.left() - 20, 150))
            runs[backend] = {"returncode": proc.returncode, "table": proc.stdout[-3000:],
                             "json": str(target) if target.exists() else None}
        return {"backends": runs, "precisions": precisions, "not_reachable": reasons}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("out", help="folder for results.json, gpu_check.log and the stage outputs")
    p.add_argument("--budget", type=float, default=480, help="seconds for the whole check (default 480)")
    p.add_argument("--dry-run", action="store_true", help="run only what needs no GPU; skip the rest with reasons")
    args = p.parse_args(argv)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    check = Check(out, args.budget, args.dry_run)
    check.stage("environment", check.environment)
    check.stage("cuda_devices", check.cuda_devices)
    check.stage("precision", check.precision)
    check.stage("gpu_tests", check.gpu_tests, min_seconds=60)
    check.stage("bench", check.bench, min_seconds=60)
    check.results["finished"] = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    check.results["not_run"] = {k: v["reason"] for k, v in check.results["stages"].items() if v["status"] != "ok"}
    check.write()
    failed = [k for k, v in check.results["stages"].items() if v["status"] == "failed"]
    check.log(f"done: {len(check.results['stages']) - len(failed)} stage(s) ok or skipped, failed: {failed or 'none'}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
