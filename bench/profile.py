"""Where an artifact's time goes, and what the machine could do: `clipscan bench --profile`.

`op_profile` runs ONNX Runtime's own profiler on an artifact (CPU execution provider) and sums the
node events by kind: integer and float matrix products (QGemm/MatMulInteger/QLinearMatMul and
Gemm/MatMul/Conv, with the attention score and context products among them), LayerNorm, GELU,
Softmax, Quantize/Dequantize, layout ops (Transpose/Reshape/...), and the rest.

`gemm_ceilings` measures, in the same run, the rate ONNX Runtime's own integer (u8 x s8) and float
matrix products reach on a large square product (1536^3) with the same thread count: the ceiling an
artifact's achieved GOP/s (manifest FLOPs per image x images/s) is a share of. With model mode,
`ceiling_candidates` time those two products in the same interleaved rounds as the artifacts at the
profiled batch size, so a machine whose speed drifts (a shared VM: +-25% within minutes seen here)
moves the ceiling and the artifacts alike and the share stays meaningful.
"""
from __future__ import annotations

import json
import os
import tempfile
import time
from collections import defaultdict
from pathlib import Path

import numpy as np

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


def _square_product(kind: str, n: int):
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)
    if kind == "int8":
        b = numpy_helper.from_array(rng.integers(-127, 128, (n, n), dtype=np.int8), "b")
        node = helper.make_node("MatMulInteger", ["a", "b"], ["y"])
        a_type, y_type = TensorProto.UINT8, TensorProto.INT32
    else:
        b = numpy_helper.from_array(rng.standard_normal((n, n), dtype=np.float32), "b")
        node = helper.make_node("MatMul", ["a", "b"], ["y"])
        a_type = y_type = TensorProto.FLOAT
    graph = helper.make_graph([node], kind, [helper.make_tensor_value_info("a", a_type, [n, n])],
                              [helper.make_tensor_value_info("y", y_type, [n, n])], [b])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    a = (rng.integers(0, 256, (n, n), dtype=np.uint8) if kind == "int8"
         else rng.standard_normal((n, n), dtype=np.float32))
    return model.SerializeToString(), a


# not a power of two: at 1024 (a 4 KiB row stride) the fp32 product ran at 134-141 GOP/s on the 2-core
# AMD EPYC (Zen 4) against 189-212 at 256, 384, 512, 768 and 1536, below what the FP32 ViT-B/32 graph
# itself achieved (162): a ceiling must not sit under the model it bounds
CEILING_N = 1536
CEILING_BACKEND = "gemm-ceiling"   # the Candidate backend name that marks a ceiling product in model rounds

# Linux x86-64: arch_prctl(ARCH_REQ_XCOMP_PERM, XFEATURE_XTILEDATA) is how a process asks the kernel for
# AMX tile state; ONNX Runtime's MLAS asks the same before it selects its AMX u8 x s8 kernel
_SYS_ARCH_PRCTL, _ARCH_REQ_XCOMP_PERM, _XFEATURE_XTILEDATA = 158, 0x1023, 18


def amx_status() -> dict:
    """Whether this process could run AMX-INT8 tiles: the CPU's flags, then the kernel's permission.
    {"usable": bool, "why": str}. Usable is what ONNX Runtime's MLAS needs to pick its AMX integer
    kernel (a build without that kernel still runs VNNI: the ceiling against the CPU's peaks tells)."""
    import ctypes
    import platform

    from clipscan.runtime.machine import cpu_info

    if platform.system() != "Linux" or platform.machine() not in ("x86_64", "AMD64"):
        return {"usable": False, "why": f"not Linux x86-64 ({platform.system()} {platform.machine()})"}
    if "AMX-INT8" not in cpu_info()["isa"]:
        return {"usable": False, "why": "the CPU reports no AMX-INT8"}
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        rc = libc.syscall(_SYS_ARCH_PRCTL, _ARCH_REQ_XCOMP_PERM, _XFEATURE_XTILEDATA)
    except (OSError, AttributeError) as e:
        return {"usable": False, "why": f"could not ask the kernel for AMX tile state ({e})"}
    if rc != 0:
        return {"usable": False, "why": f"the CPU reports AMX-INT8 but the kernel refused tile state "
                                        f"(errno {ctypes.get_errno()}): integer products run on VNNI"}
    return {"usable": True, "why": "the CPU reports AMX-INT8 and the kernel grants tile state"}


def _product_runs(n: int, threads: int | None):
    """(kind, call) for the int8 and the fp32 n^3 product, each one ONNX Runtime CPU session."""
    import onnxruntime as ort

    for kind in ("int8", "fp32"):
        blob, a = _square_product(kind, n)
        so = ort.SessionOptions()
        if threads:
            so.intra_op_num_threads = threads
        sess = ort.InferenceSession(blob, so, providers=["CPUExecutionProvider"])
        yield kind, (lambda sess=sess, a=a: sess.run(None, {"a": a}))


def ceiling_candidates(n: int = CEILING_N, threads: int | None = None) -> list:
    """The int8 and fp32 n^3 products as bench candidates, to be timed with the artifacts."""
    from .candidates import Candidate

    return [Candidate("onnxruntime", CEILING_BACKEND, f"{kind} GEMM {n}^3", kind, run=run)
            for kind, run in _product_runs(n, threads)]


def ceilings_from_rounds(measured: list[tuple], n: int = CEILING_N) -> dict:
    """{"n", "int8_gops", "fp32_gops", "interleaved_with"} from (candidate, measurement) pairs of the rounds."""
    out: dict = {"n": n, "interleaved": True}
    for cand, m in measured:
        out[f"{cand.precision}_gops"] = 2 * n ** 3 / m["median_s"] / 1e9
        out["interleaved_with"] = m["interleaved_with"] - 1   # the artifacts (and eager), not the other ceiling
    return out


def gemm_ceilings(n: int = CEILING_N, *, seconds: float = 1.0, threads: int | None = None) -> dict:
    """GOP/s (2 n^3 per product) of ONNX Runtime's u8 x s8 MatMulInteger and float32 MatMul at n x n x n,
    the median of calls timed for about `seconds` each after a warm-up."""
    out = {"n": n}
    for kind, run in _product_runs(n, threads):
        for _ in range(2):
            run()
        samples, end = [], time.perf_counter() + seconds
        while time.perf_counter() < end or len(samples) < 3:
            t0 = time.perf_counter()
            run()
            samples.append(time.perf_counter() - t0)
        out[f"{kind}_gops"] = 2 * n ** 3 / float(np.median(samples)) / 1e9
    return out


def profile_lines(name: str, prof: dict, batch: int, gflops_per_image: float | None, ips: float | None,
                  ceilings: dict | None) -> list[str]:
    """The profile of one artifact as table lines (ms per run and share, by kind)."""
    total = prof["node_ms"] or 1.0
    lines = [(f"  {name} (batch {batch}): {prof['node_ms']:.1f} ms of node time per run, "
             f"{prof['matrix_share']:.0%} in matrix products")]
    lines += [f"    {kind:<24} {ms:8.2f} ms  {ms / total:5.1%}" for kind, ms in prof["by_kind"].items()]
    if gflops_per_image and ips and ceilings:
        achieved = gflops_per_image * ips
        lines.append(f"    achieved {achieved:.0f} GOP/s = {achieved / ceilings['int8_gops']:.0%} of the int8 "
                     f"GEMM ceiling ({ceilings['int8_gops']:.0f}), {achieved / ceilings['fp32_gops']:.0%} of the "
                     f"fp32 one ({ceilings['fp32_gops']:.0f})")
    return lines


def profile_section(ctx) -> None:
    """The bench section: every artifact profiled at the largest batch size (random input of its own dtype),
    and the machine's GEMM ceilings measured in the same run."""
    from clipscan.runtime.machine import describe_cpu

    batch = max(ctx.cfg.batch_sizes)
    # measured with the model rows of this batch size when model mode ran; else here, on its own
    ceilings = ctx.report.get("gemm_ceilings") or gemm_ceilings()
    out = {"batch_size": batch, "cpu": describe_cpu(), "ceilings": ceilings, "amx": amx_status(), "artifacts": {}}
    rng = np.random.default_rng(0)
    for model, manifest in ctx.manifests.items():
        h, w = manifest.input.size
        if manifest.input.dtype == "uint8":
            x = rng.integers(0, 256, (batch, 3, h, w), dtype=np.uint8)
        else:
            x = rng.standard_normal((batch, 3, h, w), dtype=np.float32)
        out["artifacts"][Path(model).name] = op_profile(model, {manifest.input.name: x})
    ctx.report["profile"] = out


def profile_table(report: dict) -> list[str]:
    prof = report.get("profile")
    if not prof:
        return []
    c = prof["ceilings"]
    when = ("timed in the model rounds of this batch size" if c.get("interleaved") else "same run")
    lines = [(f"profile (ONNX Runtime CPU profiler, batch {prof['batch_size']}; GEMM ceilings at n={c['n']}: int8 "
             f"{c['int8_gops']:.0f} GOP/s, fp32 {c['fp32_gops']:.0f} GOP/s, {when}, {prof['cpu']}):")]
    if prof.get("amx"):
        lines.append(f"  AMX: {'usable' if prof['amx']['usable'] else 'not usable'}: {prof['amx']['why']}")
    for name, p in prof["artifacts"].items():
        row = next((r for r in report.get("results", []) if r["mode"] == "model" and r["artifact"] == name
                    and r["runtime"] != "pytorch" and r["batch_size"] == prof["batch_size"]), None)
        ips = row.get("images_per_s") if row else None
        lines += profile_lines(name, p, prof["batch_size"], report.get("gflops_per_image"), ips, c)
    return lines
