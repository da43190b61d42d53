"""Heads published on top of Hugging Face CLIP towers, read from the authors' own checkpoint layout.

The tower itself is loaded by export.hf_clip (the same file may be given to --weights); what is
here reads the head's tensors and says which feature it reads and which preprocessing its authors'
inference code applies.
"""
from __future__ import annotations

from pathlib import Path

from clipscan.runtime.manifest import OPENAI_CLIP_MEAN, OPENAI_CLIP_STD

from .heads import DetectorHead
from .hf_clip import C2P_HEAD_KEYS, load_weights_file
from .hf_preprocess import HFCheckpointError


def c2p_clip_head(path: Path, backbone) -> tuple[DetectorHead, dict]:
    """C2P-CLIP's `model.fc` (Linear(D, 1) on the L2-normalised projected embedding) and its preprocessing.

    The authors' inference (C2P-CLIP-DeepfakeDetection, inference.py and data.py): RGB image,
    torchvision Resize(224) (bilinear, short side), CenterCrop(224), CLIP mean/std; the transformers
    vision tower's pooled output through visual_projection, L2-normalised, then fc; sigmoid > 0.5
    means generated (label 1 is fake).
    """
    if not path.is_file():
        raise HFCheckpointError(f"C2P-CLIP checkpoint {path} does not exist")
    state = load_weights_file(path)
    dim = backbone.embed_dim
    wkey, bkey = C2P_HEAD_KEYS
    weights = [k for k, v in state.items() if k.endswith(wkey) and k[: -len(wkey)] in ("", "model.", "module.model.")]
    if len(weights) != 1:
        raise HFCheckpointError(f"{path}: expected C2P-CLIP's classifier under model.{wkey} (shape [1, {dim}]); "
                                f"found {weights or sorted(state)[:8]}")
    prefix = weights[0][: -len(wkey)]
    w, b = state[weights[0]], state.get(prefix + bkey)
    if tuple(w.shape) != (1, dim) or b is None or tuple(b.shape) != (1,):
        raise HFCheckpointError(f"{path}: C2P-CLIP's {prefix}{wkey} is {list(w.shape)} and {prefix}{bkey} "
                                f"{None if b is None else list(b.shape)}; the backbone's projected embedding has "
                                f"{dim} dimensions, so they must be [1, {dim}] and [1]: check --weights/--arch")
    head = DetectorHead(dim, ("real", "generated"), 0.5, feature="embedding", name="c2p_clip",
                        description=f"C2P-CLIP: Linear({dim}, 1) on the L2-normalised projected embedding of the "
                                    "fine-tuned Hugging Face CLIP tower")
    head.linear.load_state_dict({"weight": w.float(), "bias": b.float()})
    preprocess = {"resize_mode": "shortest", "interpolation": "bilinear",
                  "mean": list(OPENAI_CLIP_MEAN), "std": list(OPENAI_CLIP_STD)}
    return head, preprocess


def effort_head(path: Path, backbone) -> tuple[DetectorHead, dict]:
    """Effort's `head` (Linear(width, 2) on the tower's pooled output, two-class softmax) and its preprocessing.

    The authors' detector (Effort-AIGI-Detection, effort_detector.py): `backbone(image)['pooler_output']`
    of a CLIP vision transformer without projection, `head`, softmax, p(fake) = prob[:, 1]; the demo
    resizes the RGB image to 224x224 (aspect not kept) and normalises with CLIP mean/std.
    softmax([l0, l1])[1] = sigmoid(l1 - l0), so the head is one Linear(width, 1) with weight w1 - w0.
    """
    if not path.is_file():
        raise HFCheckpointError(f"Effort checkpoint {path} does not exist")
    state = load_weights_file(path)   # first: a file that is not plain tensors is refused as such
    if backbone.extra.get("hf", {}).get("projection", True):
        raise HFCheckpointError(f"{path}: Effort's head reads the pooled output of a tower without projection, and "
                                "this backbone has one: give --weights the Effort checkpoint itself")
    width = backbone.width
    weights = [k for k, v in state.items() if k.split(".")[-2:] == ["head", "weight"]]
    if len(weights) != 1 or tuple(state[weights[0]].shape) != (2, width):
        found = {k: list(state[k].shape) for k in weights} or sorted(state)[:8]
        raise HFCheckpointError(f"{path}: expected Effort's classifier head.weight of shape [2, {width}] (with "
                                f"head.bias [2]); found {found}")
    w, b = state[weights[0]].double(), state.get(weights[0][: -len("weight")] + "bias")
    if b is None or tuple(b.shape) != (2,):
        raise HFCheckpointError(f"{path}: {weights[0]} has no bias of shape [2] beside it")
    b = b.double()
    head = DetectorHead(width, ("real", "generated"), 0.5, feature="proj", name="effort",
                        description=f"Effort: Linear({width}, 2) on the pooled output of the SVD-fine-tuned HF CLIP "
                                    "tower (no projection, not normalised); two-class softmax, folded into "
                                    "p_generated = sigmoid(l_fake - l_real)")
    head.linear.load_state_dict({"weight": (w[1] - w[0]).reshape(1, width).float(),
                                 "bias": (b[1] - b[0]).reshape(1).float()})
    preprocess = {"resize_mode": "squash", "interpolation": "bilinear",
                  "mean": list(OPENAI_CLIP_MEAN), "std": list(OPENAI_CLIP_STD)}
    return head, preprocess
