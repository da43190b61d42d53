"""Which artifacts clipscan's TensorRT backends take: INT8 only when calibrated for TensorRT, and none that takes
each image at its own size (`refuse_own_size`).

`clipscan calibrate` writes INT8 for one target, recorded in the manifest (calibration.target).
The cpu target is asymmetric QDQ (non-zero zero points) and, by default, fuses attention into
ONNX's Attention node: TensorRT refuses both ("Non-zero zero point is not supported"). So a
TensorRT backend refuses such an artifact up front, with the command that makes the right one,
instead of failing deep in its parser (or, under `auto`, quietly falling back to the CPU).
"""
from __future__ import annotations

from ..errors import BackendError

TENSORRT_TARGET = "tensorrt"


def calibration_target(manifest) -> str | None:
    calibration = getattr(manifest, "calibration", None) or {}
    return calibration.get("target") if isinstance(calibration, dict) else None


def refuse_cpu_target_int8(manifest, backend: str) -> None:
    """Raise for an INT8 artifact that was not calibrated for TensorRT; FP32/FP16 artifacts pass."""
    if getattr(manifest, "precision", None) != "int8":
        return
    target = calibration_target(manifest)
    if target == TENSORRT_TARGET:
        return
    recorded = f"was calibrated for target {target!r}" if target else "does not record its calibration target"
    raise BackendError(f"backend {backend!r} runs TensorRT, and this INT8 artifact {recorded} (asymmetric QDQ "
                       "and fused attention, which TensorRT refuses); make a TensorRT one from the FP32 artifact: "
                       "clipscan calibrate FP32_MODEL --images DIR -o OUTPUT --target tensorrt, or scan this one "
                       "with --backend cpu")


def refuse_own_size(manifest, backend: str) -> None:
    """Raise for an artifact that takes each image at its own size (input.own_size): clipscan's TensorRT
    backends build one optimisation profile over the batch axis at the manifest's fixed height and width.
    Running it would need a profile whose height and width range over [min_side, max side] (min/opt/max
    shapes per axis; an engine optimised for one `opt` size, and buffers sized for the largest image),
    which they do not build."""
    own = getattr(getattr(manifest, "input", None), "own_size", None)
    if own is None:
        return
    raise BackendError(f"backend {backend!r} builds a TensorRT engine for one fixed height and width, and this "
                       f"artifact takes each image at its own size ({own.describe()}), which needs an optimisation "
                       "profile over height and width that clipscan's TensorRT backends do not build; scan it with "
                       "--backend cuda or cpu (or re-export it with a fixed --resize-mode)")
