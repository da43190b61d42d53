#!/usr/bin/env python3
"""The prepared GPU check: everything a GPU machine can tell about clipscan, in one run, into one folder.

    python tools/gpu_check.py OUT_DIR [--budget 480] [--dry-run]

Made for an NVIDIA machine that has PyTorch with CUDA, onnx and the CPU onnxruntime but no package
index (so neither onnxruntime-gpu nor TensorRT can be installed there: their wheels are hundreds of
MB). Stages, each timed and bounded by what is left of the budget (default 8 minutes):

  clipscan      every package of pyproject's package-dir must import from this checkout; where no
                clipscan is installed, this checkout is installed in editable mode (pip, no index, no
                dependencies, no build isolation; --no-install refuses that and says the command)
  environment   nvidia-smi, torch/CUDA, onnxruntime and its providers, tensorrt, `clipscan backends`
                run torch-free (what a user of the runtime would see)
  cuda_devices  real device memory and streams on every GPU (torch): allocation, two streams with
                events, per-device placement, and clipscan's own GPU probe against torch's count
  precision     FP32, TF32 and FP16 on real CUDA kernels against a float64 CPU reference: matrix
                products and a transformer block (LayerNorm, Softmax, GELU), TF32 on and off
  gpu_tests     pytest -m "gpu or not slow" on tests/test_gpu.py and tests/test_gpu_policy.py
  bench         `clipscan bench` (model-only) on every GPU backend that can run here and on the CPU
                backend for reference: the demo model (FP32) and its INT8 calibrated here for TensorRT
                (an FP16 artifact needs `clipscan export` and the PyTorch model: said, not run); with
                no GPU backend (or --dry-run) the CPU reference still runs, so the commands are proven

Every stage that cannot run says why (no GPU, no torch CUDA, no GPU backend, no pytest, out of time).
Results go to OUT_DIR: results.json, gpu_check.log, gpu_tests.txt and .xml, and one bench_BACKEND.json
per benchmarked backend (at most 8 files: a device machine returns no more). With no NVIDIA GPU visible
(or --dry-run) the GPU stages skip with their reasons, which is what tests/test_gpu_check.py runs.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
import tomllib
import traceback
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
DEMO_MODEL = REPO / "runtime" / "models" / "demo.onnx"
GPU_BACKENDS = ("tensorrt", "ort-tensorrt", "cuda")


class Skip(Exception):
    """A stage that cannot run here; the message says why."""


class Check:
    def __init__(self, out: Path, budget: float, dry_run: bool, install: bool = True):
        self.out, self.deadline, self.dry_run, self.install = out, time.monotonic() + budget, dry_run, install
        self.results: dict = {"started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "stages": {}}
        self.log_file = open(out / "gpu_check.log", "w", encoding="utf-8")

    def log(self, text: str) -> None:
        line = f"[{time.strftime('%H:%M:%S')}] {text}"
        print(line, flush=True)
        self.log_file.write(line + "\n")
        self.log_file.flush()

    def left(self) -> float:
        return self.deadline - time.monotonic()

    def run(self, cmd: list[str], timeout: float) -> subprocess.CompletedProcess:
        timeout = max(1.0, min(timeout, self.left() - 5))
        shown = " ".join(cmd)
        self.log("$ " + (shown if len(shown) < 300 and "\n" not in shown else shown.split("\n")[0][:200] + " ..."))
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, cwd=REPO)
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
                if record.get("failure"):   # a stage that ran and kept its results, but failed
                    record["status"], record["reason"] = "failed", record.pop("failure")
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
    def packages(self) -> dict[str, str | None]:
        """Where each package of pyproject's package-dir imports from in a fresh interpreter started as
        every stage starts one (in the repository root), or None where it does not import."""
        names = list(tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["setuptools"]["package-dir"])
        code = ("import importlib.util, json\n"
                "where = {}\n"
                f"for name in {names!r}:\n"
                "    try:\n"
                "        spec = importlib.util.find_spec(name)\n"
                "    except ImportError:\n"
                "        spec = None\n"
                "    where[name] = spec.origin if spec else None\n"
                "print(json.dumps(where))")
        proc = self.run([sys.executable, "-c", code], 60)
        if proc.returncode != 0:
            raise RuntimeError(f"cannot ask where clipscan imports from: {proc.stderr.strip()[-1000:]}")
        return json.loads(proc.stdout.splitlines()[-1])

    def not_from_repo(self, where: dict[str, str | None]) -> dict[str, str | None]:
        return {name: origin for name, origin in where.items()
                if origin is None or not Path(origin).resolve().is_relative_to(REPO.resolve())}

    def need_clipscan(self) -> None:
        record = self.results["stages"].get("clipscan", {})
        if record.get("status") != "ok":
            raise Skip(f"clipscan does not import from this checkout: {record.get('reason', 'not checked')}")

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
    def clipscan(self) -> dict:
        """Every package must import from this checkout, as the editable install of the README's development
        install gives it; the repository root holds a `clipscan/` folder, so without that install a
        process started there imports that folder alone and finds none of the subpackages."""
        wrong = self.not_from_repo(self.packages())
        if not wrong:
            return {"how": "already importable from this checkout"}
        command = [sys.executable, "-m", "pip", "install", "--no-index", "--no-deps", "--no-build-isolation",
                   "-e", str(REPO)]
        found = self.run([sys.executable, "-c", "import importlib.metadata as m, json, pathlib; print(json.dumps("
                          "[[d.version, str(pathlib.Path(d.locate_file('')).resolve())] for d in "
                          "m.distributions(name='clipscan')]))"], 60)
        # a clipscan.egg-info in the checkout itself is what an earlier editable build left there, no install
        if found.returncode != 0:
            raise RuntimeError(f"cannot ask which clipscan is installed: {found.stderr.strip()[-1000:]}")
        elsewhere = [f"{version} at {where}" for version, where in json.loads(found.stdout.splitlines()[-1])
                     if Path(where) != REPO.resolve()]
        if elsewhere:
            raise RuntimeError(f"clipscan {', '.join(elsewhere)} is installed, but these packages do not import from "
                               f"this checkout: {sorted(wrong)}; install this checkout instead: {' '.join(command)}")
        if not self.install:
            raise RuntimeError(f"clipscan is not installed, so these packages do not import: {sorted(wrong)}; "
                               f"install this checkout: {' '.join(command)} (or run without --no-install)")
        proc = self.run(command, 300)
        if proc.returncode != 0:
            raise RuntimeError(f"installing this checkout failed ({' '.join(command)}): {proc.stderr.strip()[-1500:]}")
        wrong = self.not_from_repo(self.packages())
        if wrong:
            raise RuntimeError(f"after the editable install these packages still do not import from this checkout: "
                               f"{wrong}")
        return {"how": f"installed from this checkout: {' '.join(command)}"}

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
        try:
            self.need_clipscan()
        except Skip as e:
            return {**info, "failure": f"`clipscan backends` cannot be asked: {e}"}
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
                            "freed_to": torch.cuda.memory_allocated(i),
                            "two_streams_ms": round(start.elapsed_time(end), 3), "results_ok": ok})
        try:
            self.need_clipscan()
        except Skip as e:
            return {"devices": devices, "clipscan_probe": str(e), "probe_agrees": None}
        probe = self.run([sys.executable, "-c", "from clipscan.runtime.backends.gpu_libs import nvidia_gpu; "
                          "p = nvidia_gpu(); print(p.devices, p.driver_cuda, p.problem)"], 60)
        return {"devices": devices, "clipscan_probe": probe.stdout.strip() or probe.stderr.strip()[-500:],
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
        self.need_clipscan()
        proc = self.run([sys.executable, "-c", "import pytest"], 60)
        if proc.returncode != 0:
            raise Skip("pytest is not installed here")
        junit = self.out / "gpu_tests.xml"
        proc = self.run([sys.executable, "-m", "pytest", "-m", "gpu or not slow", "-rs", "-q", "-p", "no:cacheprovider",
                         f"--junitxml={junit}", "tests/test_gpu.py", "tests/test_gpu_policy.py"],
                        min(self.left() - 60, 300))
        (self.out / "gpu_tests.txt").write_text(proc.stdout + proc.stderr)
        lines = proc.stdout.splitlines()
        summary = (proc.stdout.strip().splitlines() or ["(no output)"])[-1]
        out = {"summary": summary, "skips": [line for line in lines if line.startswith("SKIPPED")],
               "failures": [line for line in lines if line.startswith(("FAILED", "ERROR"))]}
        if proc.returncode not in (0, 5):
            out["failure"] = f"the GPU tests failed: {summary} (see gpu_tests.txt)"
        return out

    def bench(self) -> dict:
        self.need_clipscan()
        status = self.results.get("backends") or {}
        reachable = [b for b in GPU_BACKENDS if status.get(b, "not listed") is None] \
            if self.visible_gpu() else []
        reasons = {b: status.get(b, "not listed") for b in GPU_BACKENDS if b not in reachable}
        out: dict = {"not_reachable": reasons}
        if not reachable:
            why = ("dry run" if self.dry_run else "no NVIDIA GPU here" if not self.visible_gpu()
                   else "no GPU backend can run here")
            out["gpu_not_run"] = f"{why}: only the CPU reference ran; backends: {reasons}"
        precisions = {"fp32": "the demo model",
                      "fp16": "not run: an FP16 artifact is made by `clipscan export` from the PyTorch model"}
        runs = {}
        with tempfile.TemporaryDirectory(prefix="gpu_check_") as tmp:   # models stay out of OUT_DIR (8 files)
            models, int8 = [str(DEMO_MODEL)], Path(tmp) / "demo_int8_tensorrt.onnx"
            proc = self.run([sys.executable, "-m", "clipscan", "calibrate", str(DEMO_MODEL), "--images",
                             str(REPO / "samples"), "-o", str(int8), "--target", "tensorrt", "--no-progress",
                             "--no-cache", "--overwrite"], 120)
            if proc.returncode == 0:
                models.append(str(int8))
                precisions["int8"] = "the demo model calibrated here for TensorRT (on the 4 sample images)"
            else:
                precisions["int8"] = f"not run: calibration failed ({proc.stderr.strip()[-300:]})"
            for backend in [*reachable, "cpu"]:
                target = self.out / f"bench_{backend}.json"
                proc = self.run([sys.executable, "-m", "clipscan", "bench", "--backends", backend, "--mode", "model",
                                 "--batch-sizes", "1,8,32", "--max-seconds", "5", "--no-cold-start", "--json",
                                 str(target), *models], min(self.left() - 20, 150))
                runs[backend] = {"returncode": proc.returncode, "table": proc.stdout[-3000:],
                                 "error": proc.stderr.strip()[-1500:] if proc.returncode else None,
                                 "json": target.name if target.exists() else None}
        out.update(backends=runs, precisions=precisions)
        failed = [b for b, r in runs.items() if r["returncode"] != 0]
        if failed:
            out["failure"] = f"`clipscan bench` failed on {failed}"
        elif precisions["int8"].startswith("not run"):
            out["failure"] = f"INT8 {precisions['int8']}"
        return out


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("out", help="folder for results.json, gpu_check.log and the stage outputs")
    p.add_argument("--budget", type=float, default=480, help="seconds for the whole check (default 480)")
    p.add_argument("--dry-run", action="store_true", help="run only what needs no GPU; skip the rest with reasons")
    p.add_argument("--no-install", action="store_true",
                   help="where clipscan is not installed, stop and say the command instead of installing this checkout")
    args = p.parse_args(argv)
    out = Path(args.out)
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        p.error(f"cannot make the results folder {out}: {e.strerror}")
    check = Check(out, args.budget, args.dry_run, install=not args.no_install)
    check.stage("clipscan", check.clipscan)
    check.stage("environment", check.environment)
    check.stage("cuda_devices", check.cuda_devices)
    check.stage("precision", check.precision)
    check.stage("gpu_tests", check.gpu_tests, min_seconds=60)
    check.stage("bench", check.bench, min_seconds=60)
    check.results["finished"] = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    check.results["not_run"] = {k: v["reason"] for k, v in check.results["stages"].items() if v["status"] != "ok"}
    if "gpu_not_run" in check.results["stages"]["bench"]:
        check.results["not_run"]["bench on the GPU backends"] = check.results["stages"]["bench"]["gpu_not_run"]
    check.write()
    failed = [k for k, v in check.results["stages"].items() if v["status"] == "failed"]
    check.log(f"done: {len(check.results['stages']) - len(failed)} stage(s) ok or skipped, failed: {failed or 'none'}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
