"""RINE (Koutlis & Papadopoulos, ECCV 2024, "Leveraging Representations from Intermediate Encoder-blocks
for Synthetic Image Detection"): a detector on the class token of every transformer block's ln_2 output.

The authors' model (mever-team/rine, src/models.py) hooks each `ln_2` of OpenAI CLIP's image tower,
stacks the class tokens of those outputs (B, blocks, width), and runs:

    g = proj1(g)                                   Dropout, then nproj x [Linear, ReLU, Dropout]
    z = sum over blocks of softmax(alpha, dim=1) * g    alpha: (1, blocks, proj_dim), one weight per channel
    z = proj2(z)                                   Dropout, then nproj x [Linear, ReLU, Dropout]
    logit = head(z)                                Linear, ReLU, Dropout, Linear, ReLU, Dropout, Linear(., 1)

p(generated) = sigmoid(logit). Their released file (ckpt/model_*_trainable.pth) is a `torch.save`d dict
of the trainable tensors only: "alpha", "proj1.<i>.weight/bias", "proj2.<i>.weight/bias",
"head.<i>.weight/bias" (i the Sequential index: 1, 4, 7, ... for proj1/proj2, 0, 3, 6 for head). Dropout is
off at test time, so the graph holds the Linear/ReLU chains and softmax(alpha) as a constant. Test-time
preprocessing (src/utils.py, transforms_test_1): no resize, CenterCrop(224) (zero padding of smaller
images), ToTensor, CLIP mean/std.
"""
from __future__ import annotations

import re
from pathlib import Path

from clipscan.runtime.errors import CheckpointError, InputNotFoundError
from clipscan.runtime.manifest import OPENAI_CLIP_MEAN, OPENAI_CLIP_STD, HeadSpec

from .deps import load_torch_file, require
from .graph import LN2_FEATURE

torch = require("torch")
nn = torch.nn

KEY = re.compile(r"(proj1|proj2|head)\.(\d+)\.(weight|bias)")


class RineHead(nn.Module):
    """proj1 per block, the blocks' softmax(alpha)-weighted sum, proj2, head: one logit per image."""
    task = "detection"

    def __init__(self, proj1: list, alpha, proj2: list, head: list, *, name: str = "rine",
                 labels=("real", "generated"), threshold: float = 0.5):
        super().__init__()
        self.proj1, self.proj2, self.head = (self._chain(layers, relu_last)
                                             for layers, relu_last in ((proj1, True), (proj2, True), (head, False)))
        with torch.no_grad():
            weights = torch.softmax(torch.as_tensor(alpha, dtype=torch.float64), dim=1)
        self.register_buffer("block_weights", weights.float())          # (1, blocks, proj_dim)
        self.blocks = int(weights.shape[1])
        self.feature = LN2_FEATURE
        self.name = name
        self.labels = tuple(labels)
        self.threshold = float(threshold)
        self.output_names = ["p_generated", "logit_generated"]
        self.details = {"blocks": self.blocks, "proj_dim": int(weights.shape[2]), "nproj": len(proj1)}

    @staticmethod
    def _chain(layers: list, relu_last: bool):
        modules = []
        for i, (w, b) in enumerate(layers):
            linear = nn.Linear(w.shape[1], w.shape[0])
            linear.load_state_dict({"weight": w.float(), "bias": b.float()})
            modules.append(linear)
            if relu_last or i < len(layers) - 1:
                modules.append(nn.ReLU())
        return nn.Sequential(*modules)

    def forward(self, ln2_cls):
        g = self.proj1(ln2_cls.float())                  # (B, blocks, proj_dim); float32 also in an FP16 tower
        z = self.proj2((self.block_weights * g).sum(dim=1))
        logit = self.head(z).squeeze(-1)
        return torch.sigmoid(logit), logit

    def spec(self) -> HeadSpec:
        d = self.details
        return HeadSpec(name=self.name, task="detection",
                        outputs={"probability": self.output_names[0], "logit": self.output_names[1]},
                        labels=self.labels, threshold=self.threshold, details=dict(d),
                        description=f"RINE: the CLS token of all {d['blocks']} blocks' ln_2 outputs, each through "
                                    f"proj1 ({d['nproj']} x Linear+ReLU to {d['proj_dim']}), summed with "
                                    "softmax(alpha) weights, proj2, MLP head; output: logit (generated when > 0), "
                                    "probability = sigmoid")


def _linears(found: dict, part: str, path: Path, first: int, step: int) -> list:
    """The Linear layers of one of RINE's Sequentials, checked to sit where the authors' code puts them."""
    indices = sorted(found.get(part, {}))
    want = [first + step * i for i in range(len(indices))]
    if not indices or indices != want:
        raise CheckpointError(f"{path}: RINE's {part} Linear layers sit at Sequential indices {want or [first]}..., "
                              f"found {indices}; is this a RINE checkpoint (mever-team/rine ckpt/*.pth)?")
    out = []
    for i in indices:
        pair = found[part][i]
        if set(pair) != {"weight", "bias"}:
            raise CheckpointError(f"{path}: {part}.{i} needs a weight and a bias, found {sorted(pair)}")
        out.append((pair["weight"], pair["bias"]))
    return out


def _check_chain(path: Path, layers: list, part: str, dim_in: int) -> int:
    for i, (w, b) in enumerate(layers):
        if w.ndim != 2 or w.shape[1] != dim_in or tuple(b.shape) != (w.shape[0],):
            raise CheckpointError(f"{path}: RINE's {part} layer {i} is weight {list(w.shape)}, bias {list(b.shape)}; "
                                  f"it takes {dim_in} features here (check --arch: proj1 reads the tower's width)")
        dim_in = int(w.shape[0])
    return dim_in


def rine_head(path: Path, backbone) -> tuple[RineHead, dict]:
    """The RINE checkpoint as a head on the ln_2 tap, and the authors' test-time preprocessing."""
    if not path.is_file():
        raise InputNotFoundError(f"RINE checkpoint {path} does not exist; pass the downloaded "
                                 "ckpt/model_*_trainable.pth (or a .safetensors of the same tensors)")
    state = load_torch_file(path, "RINE checkpoint")
    if isinstance(state, dict) and isinstance(state.get("state_dict"), dict):
        state = state["state_dict"]
    if not isinstance(state, dict) or not all(hasattr(v, "shape") for v in state.values()):
        raise CheckpointError(f"{path} is not a state dict of tensors (found {type(state).__name__})")
    found: dict = {}
    alpha = None
    for key, value in state.items():
        bare = key.removeprefix("module.")
        m = KEY.fullmatch(bare)
        if bare == "alpha":
            alpha = value
        elif m:
            found.setdefault(m.group(1), {}).setdefault(int(m.group(2)), {})[m.group(3)] = value
        else:
            raise CheckpointError(f"{path}: tensor {key!r} is not part of RINE's trainable model (alpha, proj1.*, "
                                  "proj2.*, head.*); the CLIP tower goes to --weights")
    if alpha is None:
        raise CheckpointError(f"{path}: RINE's block weights 'alpha' (1, blocks, proj_dim) are missing")
    proj1, proj2, head = (_linears(found, "proj1", path, 1, 3), _linears(found, "proj2", path, 1, 3),
                          _linears(found, "head", path, 0, 3))
    width = backbone.width
    dim = _check_chain(path, proj1, "proj1", width)
    if alpha.ndim != 3 or alpha.shape[0] != 1 or alpha.shape[2] != dim:
        raise CheckpointError(f"{path}: RINE's alpha is {list(alpha.shape)}; proj1 gives {dim} features, so it "
                              f"must be [1, blocks, {dim}]")
    layers = int((backbone.config.get("vision_cfg") or {}).get("layers", alpha.shape[1]))
    if alpha.shape[1] != layers:
        raise CheckpointError(f"{path}: RINE's alpha weighs {alpha.shape[1]} blocks; this tower has {layers}: "
                              "check --arch and --weights (ViT-L/14 has 24)")
    if _check_chain(path, proj2, "proj2", dim) != dim:
        raise CheckpointError(f"{path}: RINE's proj2 must end with {dim} features")
    if _check_chain(path, head, "head", dim) != 1:
        raise CheckpointError(f"{path}: RINE's head must end with Linear(., 1)")
    rine = RineHead(proj1, alpha, proj2, head)
    preprocess = {"resize_mode": "none", "mean": list(OPENAI_CLIP_MEAN), "std": list(OPENAI_CLIP_STD)}
    return rine, preprocess
