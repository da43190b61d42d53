"""Every pass/fail bar clipscan applies, as data, in one place.

Export's own checks, `clipscan verify`'s gates, `clipscan calibrate`'s INT8 bar and search, the
draft-decoding check and the benchmark's fidelity columns all read their numbers from here.
The fidelity protocol fixes the per-precision bars (BARS); where clipscan chose a number itself,
the comment says so. The defaults of the report page, the Triton repository and the remote
client are not bars: they are in clipscan.runtime.defaults.
"""
from __future__ import annotations

from dataclasses import dataclass

from clipscan.runtime.errors import InvalidArgumentError


@dataclass(frozen=True)
class Bars:
    """The fidelity protocol's bars for one precision (artifact against its PyTorch FP32 original)."""
    cosine_mean: float             # per-image embedding cosine, mean
    cosine_worst: float | None     # and worst; None: not gated (FP32 gates the mean only)
    agreement: float               # fraction of images with the same decision at the deployed threshold
    srcc: float                    # Spearman rank correlation of each quality head's scores
    batch_abs: float               # batch 1 vs batch N, max abs difference over every output
    batch_note: str = ""


BARS = {
    "fp32": Bars(0.99999, None, 1.0, 0.99999, 1e-4),
    "fp16": Bars(0.9995, 0.999, 0.999, 0.9999, 2e-3, "batch bar chosen by clipscan (the protocol fixes FP32's only)"),
    "int8": Bars(0.99, 0.98, 0.99, 0.995, 2e-3, "batch bar chosen by clipscan (the protocol fixes FP32's only)"),
}

# -- clipscan verify -------------------------------------------------------------------------------
PIXEL_MAX_ERROR = 1.0          # preprocessing parity, in 0..255 pixel units
MIN_SRCC_IMAGES = 10           # below this SRCC says little: the max abs difference is reported instead
DEFAULT_MARGIN = 0.5           # logit units around the threshold's logit: no flip beyond it
ROBUST_SLACK = 0.005           # laundered copies may agree 0.5 percentage points less than clean ones
ROBUST_CONFIDENCE_Z = 1.96     # ... judged by the 95% upper confidence bound of their agreement (clipscan's)
THRESHOLD_TOLERANCE = 1e-6     # manifest threshold vs the reference's
# validation images a fidelity report with laundered copies should have: below 36, a single laundered copy whose
# decision flips (even 0.006 logit from the threshold, which the margin gate allows) fails robust_agreement
# (= fidelity_gates.images_to_tolerate(1, 1 - ROBUST_SLACK); 111 images tolerate two flips)
VAL_MIN_IMAGES = 36
VAL_TWO_FLIPS_IMAGES = 111

# -- clipscan export: checks of the written file before it is kept ----------------------------------
EXPORT_FP32_MIN_COSINE = 0.99999         # ONNX Runtime vs PyTorch, every image (= BARS["fp32"].cosine_mean)
EXPORT_FP16_MIN_COSINE_MEAN = 0.9995     # = BARS["fp16"].cosine_mean
EXPORT_FP16_MIN_COSINE_WORST = 0.999     # = BARS["fp16"].cosine_worst

# -- clipscan calibrate: the INT8 bar against the FP32 graph (stricter than BARS["int8"]; clipscan's) --
INT8_STRICT = {"cosine_mean": 0.995, "cosine_worst": 0.99, "agreement": 0.995, "srcc": 0.995}

# -- draft JPEG decoding against exact decoding (runtime against runtime; clipscan's) ---------------
DRAFT_MIN_AGREEMENT = 0.995
DRAFT_MIN_COSINE_MEAN = 0.999
DRAFT_MIN_IMAGES = 200         # fewer images cannot show 0.5% disagreement


def bars_for(precision: str) -> Bars:
    if precision not in BARS:
        raise InvalidArgumentError(f"no fidelity bars for precision {precision!r}; known: {sorted(BARS)}")
    return BARS[precision]


def meets(metrics: dict, bars: dict) -> bool:
    """Every bar in `bars` ({metric: minimum}) met by `metrics`; a metric that is absent does not count."""
    return all(metrics.get(k, 1.0) >= v for k, v in bars.items())


# -- clipscan calibrate --search: a round must cut the remaining shortfall (the failing gates' distance to
# their bars, in units of each bar's allowed error) by this fraction to go on; else the search stops and
# keeps its best round (clipscan's)
SEARCH_MIN_GAIN = 0.05

# -- clipscan bench --profile: which integer GEMM path a runtime's measured rates show ----------------
# Per cycle, one x86-64 core's peak int8 operations over its peak fp32 FMA FLOPs (ISA facts, the same on
# Intel and AMD, 256- or 512-bit): 2 without VNNI (u8 x s8 multiply-add pairs, vpmaddubsw + vpmaddwd),
# 4 with AVX-512/AVX VNNI (vpdpbusd: four products per 32-bit lane where an FMA does one), 32 with AMX-INT8
# (1,024 products per cycle against 2 x 16 FMA lanes). A runtime's int8 ceiling over its fp32 ceiling,
# timed in the same rounds, is clock- and core-count-free; these cut-offs sort it (clipscan's):
INT8_FP32_PEAK_RATIO = {"multiply-add pairs": 2, "VNNI": 4, "AMX-INT8": 32}
INT8_PATH_VNNI_ABOVE = 2.8    # int8/fp32 above this: dot-product (VNNI) kernels
INT8_PATH_MATRIX_ABOVE = 5.5  # above this: more than any vector path gives, a matrix engine (AMX) ran
