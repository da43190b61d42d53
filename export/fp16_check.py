"""The checks of an FP16 export against the PyTorch FP32 model.

`check_fp16` is the export-time fidelity gate (embedding cosine against the PyTorch FP32
model, bars in clipscan.measure.thresholds, no NaN/inf), computed twice:

- by ONNX Runtime CPU on the written file. Its CPU provider has few float16 kernels: it
  wraps the ops it lacks in Casts to float32, folds the float16 weights back to float32
  once, and drops the Cast pairs between neighbouring float32 ops, so on x86 few or none of
  this graph's arithmetic ops run in float16 (`ort_cpu_precision` lists the ones that do,
  e.g. Reshape, Transpose, Split, Squeeze). This run therefore checks the rounding of the
  weights and of the tensors that pass through those ops, not float16 arithmetic; nor can it
  see a float16 overflow (a LayerNorm output of 4e5 stays float32 on its way to MatMul);
- by the PyTorch tower itself run in float16 on the CPU (`emulate_half`): every op's output
  is a float16 tensor (PyTorch's CPU matmuls accumulate in float32, as most GPU float16 GEMM
  kernels do; one that accumulates in float16 would be worse), LayerNorm
  and the tail in float32 as in the graph. This is the stricter estimate, and the one that
  catches overflow.

Neither runs a GPU's float16 kernels (CUDA, TensorRT): this check does not stand for them.
"""
from __future__ import annotations

import copy
import logging
import tempfile
from collections import Counter
from pathlib import Path

import numpy as np

from clipscan.measure.thresholds import EXPORT_FP16_MIN_COSINE_MEAN as FP16_MIN_COSINE_MEAN
from clipscan.measure.thresholds import EXPORT_FP16_MIN_COSINE_WORST as FP16_MIN_COSINE_WORST
from clipscan.runtime.fidelity_metrics import cosine_rows

from .deps import require
from .errors import ExportCheckError
from .fp16 import FP16_MAX, SHAPE_OPS
from .graph import INPUT_NAME, OUT_EMBEDDING, OWN_SIZE_RESAMPLED, embedding_for_tokens

log = logging.getLogger("clipscan.export")
onnx = require("onnx")
torch = require("torch")
TensorProto = onnx.TensorProto
FLOAT, FLOAT16 = TensorProto.FLOAT, TensorProto.FLOAT16


# -- what ONNX Runtime's CPU provider really runs in float16 -------------------------------------

def ort_cpu_precision(path: str | Path) -> dict:
    """Which ops of the optimised graph run in float16 on ONNX Runtime's CPU provider.

    ONNX Runtime inserts Casts to float32 around ops that have no float16 CPU kernel
    (named InsertedPrecisionFreeCast_*); the graph it finally runs is saved through
    `SessionOptions.optimized_model_filepath` and read back here. Types are propagated
    from the inputs and initializers: an op runs in float16 when a float input is float16.
    """
    import onnxruntime as ort

    with tempfile.TemporaryDirectory(prefix="clipscan-ort-") as tmp:
        so = ort.SessionOptions()
        so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        so.log_severity_level = 3
        so.optimized_model_filepath = str(Path(tmp) / "optimized.onnx")
        ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])
        opt = onnx.load(so.optimized_model_filepath)
    g = opt.graph
    dtype = {v.name: v.type.tensor_type.elem_type for v in g.input}
    dtype.update({t.name: t.data_type for t in g.initializer})
    fp16_ops, fp32_ops = Counter(), Counter()
    inserted = Counter()
    for node in g.node:
        floats = [dtype[n] for n in node.input if dtype.get(n) in (FLOAT, FLOAT16)]
        if node.op_type == "Cast":
            to = next(a.i for a in node.attribute if a.name == "to")
            out_type = to
            if node.name.startswith("InsertedPrecisionFreeCast"):
                inserted["to_fp32" if to == FLOAT else "to_fp16"] += 1
        elif node.op_type in SHAPE_OPS:
            out_type = TensorProto.INT64
        else:
            out_type = FLOAT16 if FLOAT16 in floats else (FLOAT if floats else None)
            if out_type is not None:
                key = node.op_type if node.domain in ("", "ai.onnx") else f"{node.domain}.{node.op_type}"
                (fp16_ops if out_type == FLOAT16 else fp32_ops)[key] += 1
        for name in node.output:
            if name and out_type is not None:
                dtype[name] = out_type
    initializers = {t.name for t in g.initializer}
    rounded = sum(1 for n in g.node if n.op_type == "Cast" and n.input[0] not in initializers
                  and next(a.i for a in n.attribute if a.name == "to") == FLOAT16)
    return {"fp16_ops": dict(sorted(fp16_ops.items())), "fp32_ops": dict(sorted(fp32_ops.items())),
            "inserted_casts": dict(inserted), "activation_casts_to_fp16": rounded,
            "optimization_level": "ORT_ENABLE_ALL", "onnxruntime": ort.__version__}


# -- the PyTorch model run in float16 -------------------------------------------------------------

class _Fp32LayerNorm(torch.nn.Module):
    """A LayerNorm computed in float32 whose output has the given dtype (as in the FP16 graph)."""

    def __init__(self, ln, out_dtype):
        super().__init__()
        self.ln = ln
        self.out_dtype = out_dtype

    def forward(self, x):
        y = torch.nn.functional.layer_norm(x.float(), self.ln.normalized_shape, self.ln.weight, self.ln.bias,
                                           self.ln.eps)
        return y.to(self.out_dtype)


class _Fp32TailAttentionPool(torch.nn.Module):
    """open_clip's AttentionPool2d as the FP16 graph of a ModifiedResNet runs it: tokens, their mean (computed in
    float32, as the graph's ReduceMean), positional embedding and the query/key/value projections in float16;
    from the Softmax on (the graph's float32 tail) the attention, the weighted values and c_proj in float32."""

    def __init__(self, pool, own_size=False):
        super().__init__()
        # False: the tower's fixed grid; else export.graph's OWN_SIZE_BARE (no positional embedding) or
        # OWN_SIZE_RESAMPLED (the embedding resampled to the token count, in float32 as the graph's Resize)
        self.own_size = own_size
        self.embedding = pool.positional_embedding.detach().float().clone()
        self.num_heads = pool.num_heads
        self.c_proj = copy.deepcopy(pool.c_proj).float()
        self.pool = pool.half()

    def forward(self, x):
        p, heads = self.pool, self.num_heads
        tokens = x.flatten(2).permute(2, 0, 1)                                     # (HW, N, C)
        tokens = torch.cat([tokens.float().mean(dim=0, keepdim=True).to(x.dtype), tokens], dim=0)
        if not self.own_size:
            tokens = tokens + p.positional_embedding[:, None, :].to(x.dtype)
        elif self.own_size == OWN_SIZE_RESAMPLED:
            tokens = tokens + embedding_for_tokens(self.embedding, tokens.shape[0]).to(x.dtype)[:, None, :]
        length, n, width = tokens.shape
        split = lambda t: t.reshape(length, n * heads, width // heads).transpose(0, 1)  # noqa: E731
        q, k, v = (split(proj(tokens)) for proj in (p.q_proj, p.k_proj, p.v_proj))
        scores = (q * (width // heads) ** -0.5) @ k.transpose(1, 2)
        attended = torch.softmax(scores.float(), dim=-1) @ v.float()               # (N*heads, HW+1, C/heads)
        out = self.c_proj(attended.transpose(0, 1).reshape(length, n, width))
        return out[0]


def emulate_half(graph, *, like_artifact: bool = True):
    """A copy of a ScanGraph that runs its image tower in float16 with PyTorch's CPU kernels.

    `like_artifact`: the FP16 graph's float32 islands stay float32 here too. For a ViT, its
    LayerNorms are computed in float32 and the tail from ln_post on (projection, normalisation,
    heads) stays float32; Softmax runs in PyTorch's float16 kernel, so attention is stricter than
    in the graph. For a ModifiedResNet (BatchNorms in float16 here, folded into the convolutions
    in the graph), the attention pool runs as `_Fp32TailAttentionPool`: float32 from its Softmax
    on, as the graph. Without `like_artifact`, `.half()` of everything, heads included (the
    strictest estimate).
    Takes the same input as `graph` (float32 normalised pixels, or uint8); returns float32.
    """
    from .graph import OWN_SIZE_ATTR
    from .tower_kind import MODIFIED_RESNET, tower_kind

    g = copy.deepcopy(graph).eval()
    visual = g.tower.visual
    if not like_artifact:
        g.half()
    elif tower_kind(visual) == MODIFIED_RESNET:
        own_size = getattr(visual, OWN_SIZE_ATTR, False)
        pool = _Fp32TailAttentionPool(visual.attnpool, own_size)
        if own_size:    # the tower's own forward, its pool (above) taking any grid
            setattr(visual, OWN_SIZE_ATTR, False)
        visual.half()
        visual.attnpool = pool.eval()
    else:
        norms = [(parent, child_name, child) for parent in visual.modules()
                 for child_name, child in parent.named_children() if isinstance(child, torch.nn.LayerNorm)]
        exact = {id(child): copy.deepcopy(child).float() for _, _, child in norms}
        proj = None if visual.proj is None else visual.proj.detach().float().clone()
        visual.half()
        for parent, child_name, child in norms:   # float32 weights, not float16-rounded ones
            out = torch.float32 if child is visual.ln_post else torch.float16
            setattr(parent, child_name, _Fp32LayerNorm(exact[id(child)], out))
        if proj is not None:
            visual.proj.data = proj
    visual.conv1.register_forward_pre_hook(lambda m, args: (args[0].to(m.weight.dtype),))

    class Half(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.graph = g

        def forward(self, pixels):
            return tuple(o.float() for o in self.graph(pixels))

    return Half().eval()


# -- the fidelity gate ----------------------------------------------------------------------------

def gate_pixels(image_size, seed: int = 0, n_random: int = 16, n_smooth: int = 8) -> list:
    """uint8 batches for the gate: 1 and 3 random images (as the FP32 check), then one batch of
    random-pixel images and smooth ones (bilinear upsampled 7x7 noise over a gradient, which drive
    the tower differently from white noise), interleaved so that any prefix has both kinds."""
    gen = torch.Generator().manual_seed(seed)
    h, w = image_size
    batches = [torch.randint(0, 256, (b, 3, h, w), generator=gen, dtype=torch.uint8) for b in (1, 3)]
    noise = torch.randint(0, 256, (n_random, 3, h, w), generator=gen, dtype=torch.uint8)
    coarse = torch.rand(n_smooth, 3, 7, 7, generator=gen)
    smooth = torch.nn.functional.interpolate(coarse, size=(h, w), mode="bilinear", align_corners=False)
    ramp = torch.linspace(0, 1, w).view(1, 1, 1, w)
    smooth = ((0.7 * smooth + 0.3 * ramp).clamp(0, 1) * 255).round().to(torch.uint8)
    both = torch.cat([noise, smooth])
    spacing = n_random / max(n_smooth, 1)
    order = sorted(range(len(both)), key=lambda i: i if i < n_random else (i - n_random) * spacing + 0.5)
    batches.append(both[order])
    return batches


def own_size_gate_pixels(own_size, image_size, seed: int = 0) -> list:
    """For an artifact taking each image at its own size (input.own_size): 4 images (random and smooth) at the
    smallest side, and 4 at a size no multiple of it and of other aspect than the traced one (the sizes of the
    FP32 export check), besides gate_pixels at the traced size."""
    from .native_size import check_sizes

    return [gate_pixels(size, seed + 1 + i, n_random=2, n_smooth=2)[-1]
            for i, size in enumerate(check_sizes(own_size, image_size))]


def fidelity(ref: dict, got: dict) -> dict:
    """Embedding cosine and per-output max |diff| of `got` against `ref` (dicts name -> array)."""
    cos = cosine_rows(ref[OUT_EMBEDDING], got[OUT_EMBEDDING])
    return {"images": len(cos), "embedding_cosine_mean": float(cos.mean()), "embedding_cosine_min": float(cos.min()),
            "max_abs_diff": {n: float(np.abs(ref[n].astype(np.float64) - got[n]).max()) for n in ref},
            "non_finite_outputs": int(sum((~np.isfinite(got[n])).sum() for n in got))}


def gate_failures(stats: dict) -> list[str]:
    out = []
    mean, worst = stats["embedding_cosine_mean"], stats["embedding_cosine_min"]
    if not mean >= FP16_MIN_COSINE_MEAN:
        out.append(f"embedding cosine mean {mean:.6f} < {FP16_MIN_COSINE_MEAN}")
    if not worst >= FP16_MIN_COSINE_WORST:
        out.append(f"worst {worst:.6f} < {FP16_MIN_COSINE_WORST}")
    if stats.get("non_finite_outputs"):
        out.append(f"{stats['non_finite_outputs']} output values are NaN or inf: a float16 tensor overflowed "
                   f"(|x| > {FP16_MAX:.0f})")
    return out


def check_fp16(path: Path, graph, reference, image_size, mean, std, seed: int = 0, *,
               half_images: int | None = 8, own_size=None) -> dict:
    """The FP16 gate at export, against the PyTorch FP32 model on the same pixels (`gate_pixels`; with
    `own_size`, input.own_size of a graph taking each image at its own size, also `own_size_gate_pixels`):

    - the written file in ONNX Runtime CPU, on all 28 images (36 with `own_size`);
    - the PyTorch tower run in float16 (`emulate_half`) on the first `half_images` of them
      (None: all; 0: skip). PyTorch's float16 matmul on a CPU is much slower than its float32
      one, hence the subset.

    Raises ExportCheckError when either misses a gate; returns the measurements.
    """
    import onnxruntime as ort

    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    names = [o.name for o in session.get_outputs()]
    half = emulate_half(graph) if half_images != 0 else None
    mean_t = torch.tensor(mean).view(1, 3, 1, 1)
    std_t = torch.tensor(std).view(1, 3, 1, 1)
    refs, orts, halves = [], [], []
    done_half = 0
    batches = gate_pixels(image_size, seed)
    if own_size is not None:
        batches += own_size_gate_pixels(own_size, image_size, seed)
    for index, pixels in enumerate(batches):
        normalised = (pixels.float() / 255 - mean_t) / std_t
        feed = pixels if graph.takes_uint8 else normalised
        with torch.no_grad():
            ref = dict(zip(names, (t.numpy() for t in reference(normalised))))
            take = len(pixels) if half_images is None else min(len(pixels), half_images - done_half)
            if own_size is not None and tuple(pixels.shape[-2:]) != tuple(image_size) and half_images:
                take = min(len(pixels), 2)   # float16 PyTorch at each other size too (2 images each)
            if half is not None and take > 0:
                halves.append((index, take, dict(zip(names, (t.numpy() for t in half(feed[:take]))))))
                done_half += take
        got = dict(zip(names, session.run(names, {INPUT_NAME: feed.numpy()})))
        for name in names:
            if ref[name].shape != got[name].shape:
                raise ExportCheckError(f"output {name}: ONNX shape {got[name].shape} != PyTorch {ref[name].shape} "
                                       f"at batch {len(pixels)}")
        refs.append(ref)
        orts.append(got)
    cat = lambda rows: {n: np.concatenate([r[n] for r in rows]) for n in names}  # noqa: E731
    ort_stats = fidelity(cat(refs), cat(orts))
    checks = {"precision": "fp16", "images": ort_stats["images"], "batches": [len(r[OUT_EMBEDDING]) for r in refs],
              **({"sizes": [list(p.shape[-2:]) for p in batches]} if own_size is not None else {}),
              "onnxruntime_cpu": ort_stats,
              # the keys the FP32 check has
              "embedding_cosine_min": ort_stats["embedding_cosine_min"], "max_abs_diff": ort_stats["max_abs_diff"]}
    try:
        checks["onnxruntime_cpu_kernels"] = ort_cpu_precision(path)
    except Exception as e:  # informative only: the gate above does not depend on it
        log.warning("could not read back ONNX Runtime's optimised graph: %s", e)
    problems = []
    if gate_failures(ort_stats):
        problems.append("ONNX Runtime CPU: " + ", ".join(gate_failures(ort_stats)))
    if half is not None:
        ref_sub = cat([{n: refs[i][n][:take] for n in names} for i, take, _ in halves])
        half_stats = fidelity(ref_sub, cat([h for _, _, h in halves]))
        checks["torch_half_cpu"] = half_stats
        if gate_failures(half_stats):
            problems.append("PyTorch float16 (CPU kernels): " + ", ".join(gate_failures(half_stats)))
    if problems:
        raise ExportCheckError(
            "the FP16 graph does not reproduce the FP32 model closely enough: " + "; ".join(problems) +
            f" (gates: embedding cosine mean >= {FP16_MIN_COSINE_MEAN}, worst >= {FP16_MIN_COSINE_WORST}, "
            "against the PyTorch FP32 model on the same pixels). Export this model as FP32 "
            "(precision='fp32' / --precision fp32).")
    return checks
