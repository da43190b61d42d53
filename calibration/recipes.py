"""What `clipscan calibrate` can be asked for: targets, calibration methods and named recipes, each with a
one-line description.

No onnx, numpy or torch here: the command line builds its choices and help texts from these names,
and the docs their tables, without loading the quantizer (calibration.int8, which uses them).
"""
from __future__ import annotations

from dataclasses import dataclass, field

# --target -> the QDQ layout written for it
TARGETS = {
    "cpu": "uint8 activations, int8 per-channel weights (ONNX Runtime's CPU kernels fuse the QDQ pairs)",
    "tensorrt": "symmetric int8 activations and weights with dedicated Q/DQ pairs (TensorRT's explicit "
                "quantization)",
}

# --method -> how activation ranges are calibrated
METHODS = {
    "minmax": "the observed minimum and maximum",
    "percentile": "a percentile of the absolute values (--percentile)",
    "entropy": "the range that minimises the KL divergence of the quantized histogram",
    "dynamic": "no calibration: weights only, activations quantized at run time",
}


@dataclass
class Recipe:
    method: str = "minmax"
    ops: str = "all"                 # "all" or "matmul"
    keep_tail_float: bool = False    # projection, normalisation and heads after the last LayerNorm in float
    smooth_alpha: float | None = None
    percentile: float = 99.999
    exclude: list = field(default_factory=list)
    name: str = ""
    # attention as one opset-23 node (attention_fusion): None = wherever it can run (fusion_applies), True =
    # asked for (an error where it cannot run), False = never
    fuse_attention: bool | None = None

    def label(self) -> str:
        if self.name:
            return self.name + {True: "+fused-attention", False: "+explicit-attention"}.get(self.fuse_attention, "")
        parts = [self.method, self.ops]
        if self.smooth_alpha is not None:
            parts.append(f"smooth{self.smooth_alpha:g}")
        if self.keep_tail_float:
            parts.append("tailfp32")
        if self.exclude:
            parts.append(f"excl{len(self.exclude)}")
        if self.fuse_attention is not None:
            parts.append("fused-attention" if self.fuse_attention else "explicit-attention")
        return "+".join(parts)


# --recipe -> (what it does, the Recipe); RECIPES and RECIPE_HELP are its two views
_NAMED = {
    "smooth": ("SmoothQuant rescaling of LayerNorm->MatMul pairs, percentile calibration, MatMul/Gemm/Conv only, "
               "projection and heads in float",
               Recipe("percentile", "matmul", keep_tail_float=True, smooth_alpha=0.5, name="smooth")),
    "stock": ("min-max calibration, every op", Recipe("minmax", "all", name="stock")),
    "percentile": ("percentile calibration, every op", Recipe("percentile", "all", name="percentile")),
    "matmul": ("min-max calibration, MatMul/Gemm/Conv only", Recipe("minmax", "matmul", name="matmul")),
    "dynamic": ("weights only (dynamic quantization), MatMul/Gemm/Conv", Recipe("dynamic", "matmul", name="dynamic")),
}
RECIPES: dict[str, Recipe] = {name: recipe for name, (_, recipe) in _NAMED.items()}
RECIPE_HELP: dict[str, str] = {name: text for name, (text, _) in _NAMED.items()}
DEFAULT_RECIPE, DEFAULT_TARGET = "smooth", "cpu"
