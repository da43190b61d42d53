"""What the machine's matrix products can do: the GEMM ceilings `clipscan bench --profile` measures.

Each runtime the bench runs on the CPU (ONNX Runtime; OpenVINO when `--backends` has it) times one
large square integer product and one float product (1536^3, the same thread count as the artifacts):
ONNX Runtime's `MatMulInteger` (u8 x s8, the product its QDQ MatMuls fuse to), and for OpenVINO the
QDQ form of the artifacts (its CPU plugin turns Quantize/Dequantize around a MatMul into an int8 one).
With model mode, `ceiling_candidates` time them in the same interleaved rounds as the artifacts at the
profiled batch size, so a machine whose speed drifts (a shared VM: +-25% within minutes seen here)
moves the ceilings and the artifacts alike and each artifact's share of them stays meaningful.

`integer_path` reads which kernels ran from the int8/fp32 ratio of one runtime (see the
INT8_FP32_PEAK_RATIO comment in `clipscan.measure.thresholds`), and `amx_status` says whether this
process could run AMX tiles at all: together they answer whether AMX is used where the CPU has it.
"""
from __future__ import annotations

import tempfile
from pathlib import Path

import numpy as np

from clipscan.measure.thresholds import INT8_FP32_PEAK_RATIO, INT8_PATH_MATRIX_ABOVE, INT8_PATH_VNNI_ABOVE
from clipscan.runtime.backends.base import BackendOptions
from clipscan.runtime.backends.openvino_cpu import OpenVinoCpuBackend
from clipscan.runtime.backends.ort_cpu import OrtCpuBackend

# not a power of two: a 4 KiB row stride (n = 1024) makes rows collide in the cache sets, and the product
# can then run slower than the model it is meant to bound; a ceiling must not sit under that model
CEILING_N = 1536
CEILING_BACKEND = "gemm-ceiling"   # the Candidate backend name that marks a ceiling product in model rounds
CEILING_RUNTIMES = {"cpu": "onnxruntime", "openvino": "openvino"}   # bench backend -> runtime with a ceiling
# runtime -> (the backend class its artifacts run in, whether its int8 product is the QDQ form)
RUNTIME_BACKENDS = {"onnxruntime": (OrtCpuBackend, False), "openvino": (OpenVinoCpuBackend, True)}

# Linux x86-64: arch_prctl(ARCH_REQ_XCOMP_PERM, XFEATURE_XTILEDATA) is how a process asks the kernel for
# AMX tile state; ONNX Runtime's MLAS asks the same before it selects its AMX u8 x s8 kernel
_SYS_ARCH_PRCTL, _ARCH_REQ_XCOMP_PERM, _XFEATURE_XTILEDATA = 158, 0x1023, 18


def amx_status() -> dict:
    """Whether this process could run AMX-INT8 tiles: the CPU's flags, then the kernel's permission.
    {"usable": bool, "why": str}. Usable is what ONNX Runtime's MLAS needs to pick its AMX integer
    kernel (a build without that kernel still runs VNNI: `integer_path` tells)."""
    import ctypes
    import platform

    from clipscan.measure.machine import cpu_info

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


def integer_path(int8_gops: float, fp32_gops: float, machine: str | None = None) -> dict:
    """{"ratio", "peak", "path", "why"}: which integer kernels a runtime's int8 ceiling over its fp32 ceiling
    shows on an x86-64 CPU (`machine`: platform.machine(), default this one's). "peak" is the
    INT8_FP32_PEAK_RATIO class the ratio falls in; elsewhere than x86-64 it is None (the ratio is only reported)."""
    import platform

    ratio = int8_gops / fp32_gops if fp32_gops else 0.0
    machine = machine or platform.machine()
    if machine not in ("x86_64", "AMD64"):
        return {"ratio": ratio, "peak": None, "path": "not read",
                "why": f"int8 {ratio:.1f}x its fp32 rate; the per-cycle peaks compared are x86-64 facts, "
                       f"this is {machine}"}
    if ratio > INT8_PATH_MATRIX_ABOVE:
        peak, path = "AMX-INT8", "a matrix engine (AMX-class)"
    elif ratio > INT8_PATH_VNNI_ABOVE:
        peak, path = "VNNI", "VNNI-class dot-product kernels"
    else:
        peak, path = "multiply-add pairs", "vector kernels without int8 dot products (or slower)"
    peaks = ", ".join(f"{name} {r}x" for name, r in INT8_FP32_PEAK_RATIO.items())
    return {"ratio": ratio, "peak": peak, "path": path,
            "why": f"int8 {ratio:.1f}x its fp32 rate; per cycle the peaks are {peaks} the fp32 FMA rate"}


def _onnx_model(nodes, inputs, outputs, inits):
    from onnx import helper

    model = helper.make_model(helper.make_graph(nodes, "ceiling", inputs, outputs, inits),
                              opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    return model


def _square_product(kind: str, n: int, *, qdq: bool = False):
    """(onnx model, input) for the n^3 product: int8 as MatMulInteger (u8 x s8 -> int32), or with `qdq`
    in the QDQ form a runtime fuses into its own integer product, uint8 in and out (uint8 -> Dequantize ->
    MatMul with dequantized int8 weights -> Quantize -> uint8); fp32 as MatMul. The QDQ form keeps float
    tensors out of its input and output: a float input and output (9.4 MB each at n = 1536) would be
    converted on every run, and on a matrix engine (AMX) that copying costs more than the product itself,
    so the int8/fp32 ratio would understate the integer path (an AMX product would read as VNNI's)."""
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)
    value = helper.make_tensor_value_info
    if kind == "fp32":
        b = numpy_helper.from_array(rng.standard_normal((n, n), dtype=np.float32), "b")
        model = _onnx_model([helper.make_node("MatMul", ["a", "b"], ["y"])], [value("a", TensorProto.FLOAT, [n, n])],
                            [value("y", TensorProto.FLOAT, [n, n])], [b])
        return model, rng.standard_normal((n, n), dtype=np.float32)
    b = numpy_helper.from_array(rng.integers(-127, 128, (n, n), dtype=np.int8), "b")
    a = rng.integers(0, 256, (n, n), dtype=np.uint8)
    if not qdq:
        model = _onnx_model([helper.make_node("MatMulInteger", ["a", "b"], ["y"])],
                            [value("a", TensorProto.UINT8, [n, n])], [value("y", TensorProto.INT32, [n, n])], [b])
        return model, a
    consts = [numpy_helper.from_array(np.array(v, dtype), name) for name, v, dtype in
              (("sa", 0.02, np.float32), ("za", 128, np.uint8), ("sb", 0.01, np.float32), ("zb", 0, np.int8),
               ("sy", 1.0, np.float32), ("zy", 128, np.uint8))]
    nodes = [helper.make_node("DequantizeLinear", ["a", "sa", "za"], ["ad"]),
             helper.make_node("DequantizeLinear", ["b", "sb", "zb"], ["bd"]),
             helper.make_node("MatMul", ["ad", "bd"], ["y"]),
             helper.make_node("QuantizeLinear", ["y", "sy", "zy"], ["yq"])]
    model = _onnx_model(nodes, [value("a", TensorProto.UINT8, [n, n])], [value("yq", TensorProto.UINT8, [n, n])],
                        [b, *consts])
    return model, a


def _product_runs(n: int, threads: int | None, runtimes=("onnxruntime",)):
    """(runtime, kind, call) for the int8 and the fp32 n^3 product of each runtime, each loaded by the
    backend class that runs the artifacts on that runtime (the same session settings)."""
    import onnx

    for runtime in runtimes:
        backend_class, qdq = RUNTIME_BACKENDS[runtime]
        for kind in ("int8", "fp32"):
            model, a = _square_product(kind, n, qdq=qdq)
            with tempfile.TemporaryDirectory() as tmp:
                path = Path(tmp) / "ceiling.onnx"
                onnx.save(model, str(path))
                backend = backend_class(path, BackendOptions(threads=threads))
            yield runtime, kind, (lambda backend=backend, a=a: backend.run({"a": a}))


def ceiling_runtimes(backends) -> tuple[str, ...]:
    """The runtimes with a ceiling among the bench's backends (ONNX Runtime's always: it bounds the profile)."""
    return tuple(dict.fromkeys(["onnxruntime"] + [CEILING_RUNTIMES[b] for b in backends if b in CEILING_RUNTIMES]))


def _candidates(n: int, threads: int | None, runtimes) -> list:
    from .candidates import Candidate

    return [Candidate(runtime, CEILING_BACKEND, f"{kind} GEMM {n}^3 ({runtime})", kind, run=run)
            for runtime, kind, run in _product_runs(n, threads, runtimes)]


def ceiling_candidates(backends=("cpu",), n: int = CEILING_N, threads: int | None = None) -> list:
    """The int8 and fp32 n^3 products of each CPU runtime of `backends`, as bench candidates to be timed
    with the artifacts."""
    return _candidates(n, threads, ceiling_runtimes(backends))


def ceilings_from_rounds(measured: list[tuple], n: int = CEILING_N) -> dict:
    """{"n", "interleaved" (with artifacts), "interleaved_with", "int8_gops", "fp32_gops" (ONNX Runtime's),
    "runtimes": {runtime: {"int8_gops", "fp32_gops"}}} from the ceiling (candidate, measurement) pairs of
    the rounds."""
    out: dict = {"n": n, "runtimes": {}}
    for cand, m in measured:
        out["runtimes"].setdefault(cand.runtime, {})[f"{cand.precision}_gops"] = 2 * n ** 3 / m["median_s"] / 1e9
        # the artifacts (and eager) it was timed with, not the other ceilings
        out["interleaved_with"] = m["interleaved_with"] + 1 - len(measured)
    out["interleaved"] = out.get("interleaved_with", 0) > 0
    out.update(out["runtimes"].get("onnxruntime", {}))
    return out


def gemm_ceilings(n: int = CEILING_N, *, seconds: float = 1.0, threads: int | None = None,
                  runtimes=("onnxruntime",)) -> dict:
    """The ceilings when no model rounds ran (--profile without model mode): each runtime's int8 and
    float32 n x n x n product timed on their own in the bench's interleaved rounds (a settle before
    every turn, so the previous product's worker threads stop spinning), about `seconds` each."""
    from .config import BenchConfig
    from .interleave import time_interleaved

    cfg = BenchConfig(models=[], min_iters=3, min_seconds=seconds, max_seconds=4 * seconds,
                      block_seconds=seconds / 3)
    return ceilings_from_rounds(list(time_interleaved(_candidates(n, threads, runtimes), cfg, cfg.min_iters)), n)
