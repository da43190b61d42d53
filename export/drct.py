"""DRCT (Chen et al., ICML 2024, "DRCT: Diffusion Reconstruction Contrastive Training towards Universal
Detection of Diffusion Generated Images"): its CLIP detector, read from the authors' checkpoint as saved.

The authors' model (beibuwandeluori/DRCT, network/models.py) for `--model_name clip-ViT-L-14
--embedding_size 1024` is ContrastiveModels: `model` is CLIPModelV2 (`model.model` the whole OpenAI CLIP of
clip.load, `model.fc` = Linear(768, embedding_size)), then `fc` = Linear(embedding_size, 2):

    logits = fc(model.fc(model.model.encode_image(x)))      p(generated) = softmax(logits)[:, 1]

(their evaluation scores 1 - softmax[:, 0], label 0 real). train.py saves `model.state_dict()` (or
`model.module.state_dict()` under DataParallel) with torch.save, so one file holds the tower under
`model.model.visual.*`, the unused text tower under `model.model.*`, and the two Linears. The two Linears
have no activation between them, so p = sigmoid(v . (W1 x + b1) + c) with v = W2[1] - W2[0] and
c = b2[1] - b2[0]: one exact Linear(D, 1) on the projected CLS token, not normalised.

Test-time preprocessing (data/transform.py, create_val_transforms with is_crop, as their test scripts
run): cv2 decoding to RGB, albumentations PadIfNeeded(224, zeros, centred), CenterCrop(224) (offsets
rounded down), Normalize with the ImageNet mean/std (the function's defaults), no resize.
"""
from __future__ import annotations

from pathlib import Path

from clipscan.runtime.errors import CheckpointError, InputNotFoundError

from .deps import load_torch_file, require
from .heads import DetectorHead

torch = require("torch")

TOWER = "model.model.visual."
TEXT_TOWER = ("model.model.transformer.", "model.model.token_embedding.", "model.model.positional_embedding",
              "model.model.ln_final.", "model.model.text_projection", "model.model.logit_scale")
EMBEDDING = ("model.fc.weight", "model.fc.bias")
CLASSIFIER = ("fc.weight", "fc.bias")
IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


def _state(path: Path) -> dict:
    """The file's state dict: as train.py saves it, or wrapped ({"state_dict"|"model": ...}, "module.")."""
    data = load_torch_file(path, "DRCT checkpoint")
    for wrapper in ("state_dict", "model"):
        if isinstance(data, dict) and isinstance(data.get(wrapper), dict):
            data = data[wrapper]
    if not isinstance(data, dict) or not data or not all(hasattr(v, "shape") for v in data.values()):
        raise CheckpointError(f"{path} is not a state dict of tensors (found {type(data).__name__}); pass the "
                              ".pth DRCT's train.py saved")
    if all(k.startswith("module.") for k in data):
        data = {k[len("module."):]: v for k, v in data.items()}
    return data


def drct_head(path: Path, backbone) -> tuple[DetectorHead, dict]:
    """DRCT's embedding Linear and two-class classifier, folded into one Linear(D, 1), and its preprocessing.

    Every tensor of the file is mapped (the tower, read by --weights; the text tower, unused; the two
    Linears) or refused, naming the first that is not."""
    if not path.is_file():
        raise InputNotFoundError(f"DRCT checkpoint {path} does not exist; pass the downloaded .pth")
    state = _state(path)
    for key in state:
        if not (key.startswith(TOWER) or key.startswith(TEXT_TOWER) or key in EMBEDDING + CLASSIFIER):
            raise CheckpointError(f"{path}: tensor {key!r} is not part of DRCT's CLIP detector ({TOWER}*, the text "
                                  f"tower model.model.*, {', '.join(EMBEDDING + CLASSIFIER)}); DRCT's ConvNeXt and "
                                  "other backbones are not CLIP towers")
    missing = [k for k in EMBEDDING + CLASSIFIER if k not in state]
    if missing or not any(k.startswith(TOWER) for k in state):
        raise CheckpointError(f"{path}: a DRCT CLIP checkpoint holds {TOWER}*, {', '.join(EMBEDDING + CLASSIFIER)}; "
                              f"missing {missing or [TOWER + '*']}")
    dim = backbone.embed_dim
    w1, b1 = state["model.fc.weight"].double(), state["model.fc.bias"].double()
    w2, b2 = state["fc.weight"].double(), state["fc.bias"].double()
    if w1.ndim != 2 or w1.shape[1] != dim or tuple(b1.shape) != (w1.shape[0],):
        raise CheckpointError(f"{path}: DRCT's model.fc.weight is {list(w1.shape)} (bias {list(b1.shape)}); the "
                              f"tower's encode_image gives {dim} features, so it must be [embedding_size, {dim}]: "
                              "check --arch/--weights")
    if tuple(w2.shape) != (2, w1.shape[0]) or tuple(b2.shape) != (2,):
        raise CheckpointError(f"{path}: DRCT's fc.weight is {list(w2.shape)} (bias {list(b2.shape)}); expected "
                              f"[2, {w1.shape[0]}] and [2] (two classes: real, generated)")
    v = w2[1] - w2[0]
    head = DetectorHead(dim, ("real", "generated"), 0.5, feature="proj", name="drct",
                        description=f"DRCT: Linear({dim}, {w1.shape[0]}) then Linear({w1.shape[0]}, 2) on the "
                                    "projected CLS token (encode_image, not normalised), two-class softmax; folded "
                                    "into one Linear, p_generated = sigmoid(l_fake - l_real)")
    head.linear.load_state_dict({"weight": (v @ w1).reshape(1, dim).float(),
                                 "bias": (v @ b1 + b2[1] - b2[0]).reshape(1).float()})
    preprocess = {"resize_mode": "none", "crop_offsets": "floor", "mean": list(IMAGENET_MEAN),
                  "std": list(IMAGENET_STD)}
    return head, preprocess
