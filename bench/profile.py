"""Where an artifact's time goes, and what the machine could do: `clipscan bench --profile`.

`op_profile` runs ONNX Runtime's own profiler on an artifact (CPU execution provider) and sums the
node events by kind: integer and float matrix products (QGemm/MatMulInteger/QLinearMatMul and
Gemm/MatMul/Conv, with the attention score and context products among them), LayerNorm, GELU,
Softmax, Quantize/Dequantize, layout ops (Transpose/Reshape/...), and the rest.

Each artifact's achieved GOP/s (manifest FLOPs per image x images/s of its model row) is printed as a
share of the GEMM ceilings of the runtime it ran on (`clipscan.bench.ceilings`), and each runtime's
ceilings say which integer kernels it ran (VNNI or AMX) and whether AMX could run in this process.
"""
from __future__ import annotations

import json
import os
import tempfile
from collections import defaultdict
from pathlib import Path

import numpy as np

from .ceilings import RUNTIME_BACKENDS, amx_status, ceiling_runtimes, gemm_ceilings, integer_path

# op type -> the kind it is reported under
KINDS = {
    "QGemm": "int8 matrix products", "MatMulInteger": "int8 matrix products", "QLinearMatMul": "int8 matrix products",
    "MatMulIntegerToFloat": "int8 matrix products", "DynamicQuantizeMatMul": "int8 matrix products",
    "QLinearConv": "int8 matrix products", "ConvInteger": "int8 matrix products",
    "Gemm": "float matrix products", "MatMul": "float matrix products", "FusedMatMul": "float matrix products",
    "Conv": "float matrix products", "FusedGemm": "float matrix products", "Attention": "float matrix products",
    "MultiHeadAttention": "float matrix products",
    "LayerNormalization": "LayerNorm", "SkipLayerNormalization": "LayerNorm",
    "Gelu": "GELU", "FastGelu": "GELU", "BiasGelu": "GELU", "Erf": "GELU", "QuickGelu": "GELU", "Sigmoid": "GELU",
    "Softmax": "Softmax",
    "QuantizeLinear": "Quantize/Dequantize", "DequantizeLinear": "Quantize/Dequantize",
    "DynamicQuantizeLinear": "Quantize/Dequantize",
    "Transpose": "Transpose/Reshape", "Reshape": "Transpose/Reshape", "Squeeze": "Transpose/Reshape",
    "Unsqueeze": "Transpose/Reshape", "Concat": "Transpose/Reshape", "Slice": "Transpose/Reshape",
    "Gather": "Transpose/Reshape", "Split": "Transpose/Reshape", "Flatten": "Transpose/Reshape",
    "Expand": "Transpose/Reshape",
}
MATRIX_KINDS = ("int8 matrix products", "float matrix products")
# ceiling runtime -> the backend name its artifact rows carry
ROW_BACKENDS = {runtime: backend_class.name for runtime, (backend_class, _) in RUNTIME_BACKENDS.items()}


def op_profile(model_path, feed: dict, *, runs: int = 5, threads: int | None = None) -> dict:
    """{"by_kind": {kind: ms per run}, "by_op": {op type: ms per run}, "matrix_share": fraction of node
    time in matrix products, "node_ms": total node time per run} from ONNX Runtime's profiler."""
    import onnxruntime as ort

    with tempfile.TemporaryDirectory() as tmp:
        so = ort.SessionOptions()
        so.enable_profiling = True
        so.profile_file_prefix = os.path.join(tmp, "clipscan-profile")
        if threads:
            so.intra_op_num_threads = threads
        sess = ort.InferenceSession(str(model_path), so, providers=["CPUExecutionProvider"])
        names = [o.name for o in sess.get_outputs()]
        sess.run(names, feed)   # warm-up, excluded below by counting only the last `runs` runs
        for _ in range(runs):
            sess.run(names, feed)
        events = json.loads(Path(sess.end_profiling()).read_text())
    runs_seen = [e for e in events if e.get("cat") == "Session" and e.get("name") == "model_run"]
    keep_after = runs_seen[-runs]["ts"] if len(runs_seen) >= runs else 0
    by_op: dict[str, float] = defaultdict(float)
    for e in events:
        if e.get("cat") != "Node" or not str(e.get("name", "")).endswith("_kernel_time") or e["ts"] < keep_after:
            continue
        by_op[(e.get("args") or {}).get("op_name", "?")] += e.get("dur", 0) / 1e3 / runs
    by_kind: dict[str, float] = defaultdict(float)
    for op, ms in by_op.items():
        by_kind[KINDS.get(op, "other")] += ms
    total = sum(by_op.values())
    return {"by_kind": dict(sorted(by_kind.items(), key=lambda kv: -kv[1])),
            "by_op": dict(sorted(by_op.items(), key=lambda kv: -kv[1])),
            "node_ms": total, "matrix_share": sum(by_kind.get(k, 0.0) for k in MATRIX_KINDS) / total if total else 0.0,
            "runs": runs}


def profile_lines(name: str, prof: dict, batch: int, gflops_per_image: float | None,
                  shares: list[tuple[str, float, dict]]) -> list[str]:
    """The profile of one artifact as table lines (ms per run and share, by kind), then for each
    (runtime, images/s, its ceilings) in `shares` the achieved GOP/s as a share of that runtime's ceilings."""
    total = prof["node_ms"] or 1.0
    lines = [(f"  {name} (batch {batch}): {prof['node_ms']:.1f} ms of node time per run, "
             f"{prof['matrix_share']:.0%} in matrix products")]
    lines += [f"    {kind:<24} {ms:8.2f} ms  {ms / total:5.1%}" for kind, ms in prof["by_kind"].items()]
    for runtime, ips, c in shares:
        if not (gflops_per_image and ips and c.get("int8_gops") and c.get("fp32_gops")):
            continue
        achieved = gflops_per_image * ips
        lines.append(f"    on {runtime}: achieved {achieved:.0f} GOP/s = {achieved / c['int8_gops']:.0%} of its "
                     f"int8 GEMM ceiling ({c['int8_gops']:.0f}), {achieved / c['fp32_gops']:.0%} of its fp32 one "
                     f"({c['fp32_gops']:.0f})")
    return lines


def profile_section(ctx) -> None:
    """The bench section: every artifact profiled at the largest batch size (random input of its own dtype),
    and the machine's GEMM ceilings measured in the same run."""
    from clipscan.measure.machine import cpu_info, describe_cpu

    batch = max(ctx.cfg.batch_sizes)
    # measured with the model rows of this batch size when model mode ran; else here, on its own
    ceilings = ctx.report.get("gemm_ceilings") or gemm_ceilings(runtimes=ceiling_runtimes(ctx.backends))
    cpu = cpu_info()
    out = {"batch_size": batch, "cpu": describe_cpu(cpu), "isa": cpu["isa"], "ceilings": ceilings,
           "amx": amx_status(), "artifacts": {}}
    out["integer_path"] = {rt: integer_path(c["int8_gops"], c["fp32_gops"])
                           for rt, c in ceilings.get("runtimes", {}).items() if c.get("int8_gops") and c.get("fp32_gops")}
    rng = np.random.default_rng(0)
    for model, manifest in ctx.manifests.items():
        h, w = manifest.input.size
        if manifest.input.dtype == "uint8":
            x = rng.integers(0, 256, (batch, 3, h, w), dtype=np.uint8)
        else:
            x = rng.standard_normal((batch, 3, h, w), dtype=np.float32)
        out["artifacts"][Path(model).name] = op_profile(model, {manifest.input.name: x})
    ctx.report["profile"] = out


def _amx_lines(prof: dict) -> list[str]:
    """Whether AMX could run here, what each runtime's ceilings show it ran, and where the two disagree."""
    amx = prof.get("amx")
    lines = [f"  AMX: {'usable' if amx['usable'] else 'not usable'}: {amx['why']}"] if amx else []
    for runtime, verdict in prof.get("integer_path", {}).items():
        lines.append(f"  integer path on {runtime}: {verdict['path']} ({verdict['why']})")
        if amx and amx["usable"] and verdict["peak"] != "AMX-INT8":
            lines.append(f"    AMX is usable in this process but {runtime}'s integer products do not run at its rate")
        elif verdict["peak"] == "multiply-add pairs" and {"AVX-512 VNNI", "AVX-VNNI"} & set(prof.get("isa") or []):
            lines.append(f"    below what this CPU's VNNI gives: {runtime} does not use it, or the ceiling's "
                         f"timing was disturbed (run again)")
    return lines


def profile_table(report: dict) -> list[str]:
    prof = report.get("profile")
    if not prof:
        return []
    c = prof["ceilings"]
    when = ("timed in the model rounds of this batch size" if c.get("interleaved") else "same run")
    per_runtime = "; ".join(f"{rt} int8 {v.get('int8_gops', 0):.0f} GOP/s, fp32 {v.get('fp32_gops', 0):.0f} GOP/s"
                            for rt, v in c.get("runtimes", {}).items())
    lines = [(f"profile (ONNX Runtime CPU profiler, batch {prof['batch_size']}; GEMM ceilings at n={c['n']}: "
              f"{per_runtime}; {when}; {prof['cpu']}):")]
    lines += _amx_lines(prof)
    for name, p in prof["artifacts"].items():
        shares = []
        for runtime, rc in c.get("runtimes", {}).items():
            row = next((r for r in report.get("results", []) if r["mode"] == "model" and r["artifact"] == name
                        and r["backend"] == ROW_BACKENDS.get(runtime) and r["batch_size"] == prof["batch_size"]),
                       None)
            if row:
                shares.append((runtime, row.get("images_per_s"), rc))
        lines += profile_lines(name, p, prof["batch_size"], report.get("gflops_per_image"), shares)
    return lines
