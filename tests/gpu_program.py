"""One backend, checked end to end in a process without torch: `python tests/gpu_program.py SPEC.json`.

tests/test_gpu.py runs it (under a sitecustomize that blocks torch, so no library torch would have
loaded can make a GPU backend pass), and tests/test_gpu_program.py runs it on the CPU backend so the
program itself is tested on machines without a GPU. SPEC: {"backend", "models": {precision: path},
"int8_cpu_target": path or null, "photos": dir, "cache_dir": dir, "batch_size", "max_batch"}. It prints
one JSON object: what ran, the scores and embeddings per precision, the batch sizes the backend took or
refused, whether the second start loaded the cached engine, the TF32 and placement settings found.
"""
from __future__ import annotations

import json
import logging
import os
import sys
from pathlib import Path

import numpy as np

from clipscan.runtime import BackendError, Scanner


class Collect(logging.Handler):
    def __init__(self):
        super().__init__(logging.DEBUG)
        self.messages: list[str] = []

    def emit(self, record):
        self.messages.append(record.getMessage())


def files(folder: str) -> list[str]:
    return sorted(str(p) for p in Path(folder).iterdir() if p.is_file())


def scan(model: str, backend: str, spec: dict) -> tuple[dict, Scanner]:
    scanner = Scanner(model, backend=backend, batch_size=spec["batch_size"], max_batch=spec["max_batch"],
                      cache_dir=spec["cache_dir"])
    rows = list(scanner.scan(files(spec["photos"])))
    return {"backend": scanner.backend_name, "errors": [r.error for r in rows if r.error],
            "p": [r.p_generated for r in rows], "verdicts": [r.verdict for r in rows],
            "embeddings": [np.asarray(r.embedding, dtype=float).round(7).tolist() for r in rows]}, scanner


def settings(scanner: Scanner, spec: dict) -> dict:
    """TF32 and placement as the running backend has them (not as clipscan meant to set them)."""
    backend, out = scanner.backend, {"name": scanner.backend_name}
    session = getattr(backend, "session", None)
    if session is not None:
        out["providers"] = session.get_providers()
        opts = session.get_session_options()
        try:
            out["disable_cpu_ep_fallback"] = opts.get_session_config_entry("session.disable_cpu_ep_fallback")
        except Exception:  # noqa: BLE001 - not set
            out["disable_cpu_ep_fallback"] = None
        out["provider_options"] = session.get_provider_options()
    out["NVIDIA_TF32_OVERRIDE"] = os.environ.get("NVIDIA_TF32_OVERRIDE")
    plan = getattr(backend, "plan_path", None)
    if plan is not None:
        out["plan"] = str(plan)
        out["plan_sidecar"] = json.loads(Path(plan).with_suffix(".json").read_text())
        out["plan_from_cache"] = backend.plan_from_cache
    return out


def batches(scanner: Scanner, spec: dict) -> dict:
    """Run the backend at batch 1, the batch size (the profile's opt), the max batch and one over it."""
    m = scanner.manifest
    out = {}
    for n in sorted({1, spec["batch_size"], spec["max_batch"], spec["max_batch"] + 1}):
        feeds = {m.input.name: np.zeros((n, 3, *m.input.size), dtype=np.dtype(m.input.dtype))}
        try:
            result = scanner.backend.run(feeds)
            out[str(n)] = {"ok": True, "rows": {k: int(v.shape[0]) for k, v in result.items()}}
        except BackendError as e:
            out[str(n)] = {"ok": False, "error": str(e)}
    return out


def cache_files(folder: str) -> list[str]:
    return sorted(str(p.relative_to(folder)) for p in Path(folder).rglob("*") if p.is_file())


def main(spec_path: str) -> int:
    spec = json.loads(Path(spec_path).read_text())
    log = Collect()
    logging.getLogger("clipscan").addHandler(log)
    logging.getLogger("clipscan").setLevel(logging.DEBUG)
    backend, result = spec["backend"], {"torch_loaded": "torch" in sys.modules}

    reference, _ = scan(spec["models"]["fp32"], "cpu", spec)
    result["reference"] = reference
    first, scanner = scan(spec["models"]["fp32"], backend, spec)
    result["fp32"] = first
    result["first_log"] = list(log.messages)
    result["settings"] = settings(scanner, spec)
    result["batches"] = batches(scanner, spec)
    scanner.close()
    result["cache_after_first"] = cache_files(spec["cache_dir"])
    log.messages.clear()

    second, scanner = scan(spec["models"]["fp32"], backend, spec)
    result["second"] = {"p": second["p"], "settings": settings(scanner, spec), "log": list(log.messages),
                        "cache": cache_files(spec["cache_dir"])}
    scanner.close()

    for precision, model in spec["models"].items():
        if precision != "fp32":
            result[precision], s = scan(model, backend, spec)
            s.close()
    if spec.get("int8_cpu_target"):
        try:
            Scanner(spec["int8_cpu_target"], backend=backend, cache_dir=spec["cache_dir"]).close()
            result["int8_cpu_target"] = "started"
        except BackendError as e:
            result["int8_cpu_target"] = str(e)
    result["torch_loaded"] = result["torch_loaded"] or "torch" in sys.modules
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1]))
