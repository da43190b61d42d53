"""The LAION improved aesthetic predictor, folded into one Linear on the embedding.

Its published inference (christophschuhmann/improved-aesthetic-predictor, simple_inference.py)
runs `nn.Sequential(Linear(D, 1024), Dropout, Linear(1024, 128), Dropout, Linear(128, 64), Dropout,
Linear(64, 16), Linear(16, 1))` (no activations) on the L2-normalised `encode_image` embedding of
OpenAI CLIP ViT-L/14, preprocessed by `clip.load`'s transform. A chain of Linears with nothing in
between is one affine map, so the head becomes a single Linear(D, 1), composed here in float64.
"""
from __future__ import annotations

import re
from pathlib import Path

from clipscan.runtime.errors import InvalidArgumentError
from clipscan.runtime.manifest import OPENAI_CLIP_MEAN, OPENAI_CLIP_STD

from .deps import require
from .heads import QualityHead

torch = require("torch")

AESTHETIC_SCALE = {"kind": "aesthetic", "min": 1.0, "max": 10.0}   # the predictor's own rating scale
_LAYER = re.compile(r"(?:.*\.)?layers\.(\d+)\.weight")


def laion_aesthetic_head(state: dict, path: Path, backbone) -> tuple[QualityHead, dict]:
    """(head, preprocessing) from the predictor's state dict (`layers.N.weight/bias`, Linear layers only)."""
    found = sorted(((int(m.group(1)), k) for k in state if (m := _LAYER.fullmatch(k)) and state[k].ndim == 2))
    if not found:
        raise InvalidArgumentError(f"{path}: expected the aesthetic predictor's MLP (layers.N.weight, "
                                   f"layers.N.bias); found {sorted(state)[:8]}")
    dims = [int(state[found[0][1]].shape[1])] + [int(state[k].shape[0]) for _, k in found]
    if dims[0] != backbone.embed_dim or dims[-1] != 1:
        raise InvalidArgumentError(f"{path}: the predictor's layers run {' -> '.join(map(str, dims))}; it must "
                                   f"start at the backbone's embedding size {backbone.embed_dim} and end at 1 "
                                   "(the published one is 768 -> 1024 -> 128 -> 64 -> 16 -> 1 on ViT-L/14)")
    weight = torch.eye(dims[0], dtype=torch.float64)
    bias = torch.zeros(dims[0], dtype=torch.float64)
    for (_, key), (a, b) in zip(found, zip(dims[:-1], dims[1:])):
        w = state[key].double()
        bkey = key[: -len("weight")] + "bias"
        if tuple(w.shape) != (b, a) or bkey not in state:
            raise InvalidArgumentError(f"{path}: {key} is {list(w.shape)} (expected [{b}, {a}], with {bkey}): the "
                                       "layers do not form one chain")
        weight, bias = w @ weight, w @ bias + state[bkey].double()
    head = QualityHead([dims[0], 1], scale=AESTHETIC_SCALE, name="laion_aesthetic",
                       description=f"LAION improved aesthetic predictor: MLP {' -> '.join(map(str, dims))} without "
                                   "activations (folded into one Linear) on the L2-normalised projected embedding; "
                                   "score on its own 1-10 scale")
    head.linears()[0].load_state_dict({"weight": weight.float(), "bias": bias.float()})
    preprocess = {"resize_mode": "shortest", "interpolation": "bicubic",
                  "mean": list(OPENAI_CLIP_MEAN), "std": list(OPENAI_CLIP_STD)}
    return head, preprocess
