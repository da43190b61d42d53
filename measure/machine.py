"""What machine a number was measured on: the CPU, its vector and matrix ISA, the core count.

Speed ratios differ between CPU kinds (ONNX Runtime's MLAS and oneDNN pick AVX-512, VNNI or
AMX kernels by what the CPU reports), so every speed figure clipscan prints names the CPU
and the features that decide which kernels ran. Linux's /proc/cpuinfo is read; elsewhere
only the platform's processor string is known.
"""
from __future__ import annotations

import os
import platform

# cpuinfo flag -> the name people use for it, in the order printed. These are the features that
# decide which float and integer GEMM kernels ONNX Runtime, oneDNN and MKL choose on x86-64.
ISA_FEATURES = (
    ("avx2", "AVX2"),
    ("avx512f", "AVX-512"),
    ("avx512_vnni", "AVX-512 VNNI"),
    ("avx_vnni", "AVX-VNNI"),
    ("avx512_bf16", "AVX-512 BF16"),
    ("avx512_fp16", "AVX-512 FP16"),
    ("amx_int8", "AMX-INT8"),
    ("amx_bf16", "AMX-BF16"),
    ("asimddp", "NEON dot product"),
    ("i8mm", "Arm I8MM"),
    ("sve", "SVE"),
)


def _cpuinfo() -> dict[str, str]:
    """The first processor's fields of /proc/cpuinfo ({} where there is none)."""
    fields: dict[str, str] = {}
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as fh:
            for line in fh:
                if not line.strip():
                    if fields:
                        break
                    continue
                key, _, value = line.partition(":")
                fields.setdefault(key.strip(), value.strip())
    except OSError:
        pass
    return fields


def cpu_info() -> dict:
    """{model, vendor, family, model_number, isa: [...], cores} for the CPU this process runs on."""
    info = _cpuinfo()
    flags = set((info.get("flags") or info.get("Features") or "").split())
    try:
        cores = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        cores = os.cpu_count()
    return {
        "model": info.get("model name") or platform.processor() or platform.machine() or "unknown CPU",
        "vendor": info.get("vendor_id") or info.get("CPU implementer") or "",
        "family": info.get("cpu family") or "",
        "model_number": info.get("model") or "",
        "isa": [name for flag, name in ISA_FEATURES if flag in flags],
        "cores": cores,
        "machine": platform.machine(),
    }


def describe_cpu(info: dict | None = None) -> str:
    """One line for a report: 'Intel(R) Xeon(R) Processor (GenuineIntel family 6 model 143; AVX2, AVX-512,
    AVX-512 VNNI, ..., AMX-INT8; 2 cores)'."""
    info = info or cpu_info()
    ident = " ".join(p for p in (info.get("vendor"),
                                 f"family {info['family']}" if info.get("family") else "",
                                 f"model {info['model_number']}" if info.get("model_number") else "") if p)
    isa = ", ".join(info.get("isa") or []) or "no AVX2/AVX-512/AMX reported"
    parts = [p for p in (ident, isa, f"{info.get('cores')} cores") if p]
    return f"{info.get('model')} ({'; '.join(parts)})"


# version key -> (module that must be importable for it to count, distribution names to read)
_TOOLS = {
    "numpy": ("numpy", ("numpy",)),
    "pillow": ("PIL", ("pillow", "Pillow")),
    "onnxruntime": ("onnxruntime", ("onnxruntime", "onnxruntime-gpu")),
    "onnx": ("onnx", ("onnx",)),
    "onnxscript": ("onnxscript", ("onnxscript",)),
    "torch": ("torch", ("torch",)),
    "torchvision": ("torchvision", ("torchvision",)),
    "open_clip": ("open_clip", ("open_clip_torch",)),
    "matplotlib": ("matplotlib", ("matplotlib",)),
    "tensorrt": ("tensorrt", ("tensorrt", "tensorrt-cu12", "tensorrt-cu13")),
}
RUNTIME_TOOLS = ("numpy", "pillow", "onnxruntime")
EXPORT_TOOLS = RUNTIME_TOOLS + ("torch", "torchvision", "open_clip", "onnx", "onnxscript")


def tool_versions(names=EXPORT_TOOLS, *, loaded_only: bool = False) -> dict:
    """{"clipscan", "python", name: version} for each tool in `names` that is installed.

    Versions come from the installed distributions' metadata, so nothing is imported; with
    `loaded_only`, a tool counts only if this process has already imported it (what a
    measurement really used).
    """
    import sys
    from importlib import metadata

    from clipscan.version import __version__

    out = {"clipscan": __version__, "python": platform.python_version()}
    for name in names:
        module, dists = _TOOLS[name]
        if loaded_only and module not in sys.modules:
            continue
        for dist in dists:
            try:
                out[name] = metadata.version(dist)
                break
            except metadata.PackageNotFoundError:
                continue
    return out
