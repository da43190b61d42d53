"""Heads published on top of Hugging Face CLIP towers, read from the authors' own checkpoint layout.

The tower itself is loaded by export.hf_clip (the same file may be given to --weights); what is
here reads the head's tensors and says which feature it reads and which preprocessing its authors'
inference code applies.
"""
from __future__ import annotations

from pathlib import Path

from clipscan.runtime.manifest import OPENAI_CLIP_MEAN, OPENAI_CLIP_STD

from .heads import DetectorHead
from .hf_clip import C2P_HEAD_KEYS, HFCheckpointError, load_weights_file


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
