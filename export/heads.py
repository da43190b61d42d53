"""Heads that sit on a CLIP image feature, and the clipscan heads file.

Every head says which feature it reads (FEATURES), which graph outputs it writes,
and how the manifest describes it. Two kinds exist:

- DetectorHead: Linear(D, 1) giving a logit (or a log-likelihood ratio, which is
  also a logit); probability = sigmoid(logit).
- QualityHead: an MLP giving a score on a scale (e.g. a MOS from 1 to 5); a
  bounded one maps its output z to min + (max - min) * sigmoid(z).

A clipscan heads file is a `torch.save`d dict of tensors and plain values
(loadable with `weights_only=True`):

    {"format": "clipscan.heads", "version": 1,
     "feature": "embedding",
     "detector": {"weight": [1, D], "bias": [1], "labels": ["real", "generated"], "threshold": 0.5},
     "quality": {"layers": [{"weight": [H, D], "bias": [H]}, ..., {"weight": [1, H], "bias": [1]}],
                 "activation": "relu", "scale": {"kind": "mos", "min": 1.0, "max": 5.0},
                 "bounded": False}}
"""
from __future__ import annotations

from pathlib import Path

from clipscan.runtime.errors import CheckpointError, InputNotFoundError, InvalidArgumentError
from clipscan.runtime.manifest import HeadSpec

from .deps import load_torch_file, require

torch = require("torch")
nn = torch.nn

HEADS_FORMAT = "clipscan.heads"
HEADS_VERSION = 1
ACTIVATIONS = {"relu": nn.ReLU, "gelu": nn.GELU, "tanh": nn.Tanh}

# The features a head can read, all from one backbone pass.
FEATURES = {
    "embedding": "projected CLS token (encode_image), L2-normalised",
    "proj": "projected CLS token (encode_image), not normalised",
    "pre_proj_normalized": "CLS token after ln_post, before the projection, L2-normalised",
    "attn_heads": "direct contributions of selected attention heads to the projected CLS token (export.head_tap)",
    "block_ln2_cls": "CLS token of every transformer block's ln_2 output (the MLP input), (blocks, width) per image",
}


def _check_feature(feature: str) -> str:
    if feature not in FEATURES:
        raise InvalidArgumentError(f"unknown feature {feature!r}; heads can read {sorted(FEATURES)}")
    return feature


class DetectorHead(nn.Module):
    """Linear probe: one logit per image; probability = sigmoid(logit)."""
    task = "detection"

    def __init__(self, dim: int, labels=("real", "generated"), threshold: float = 0.5, *,
                 feature: str = "embedding", name: str = "detector", logit_kind: str = "logit",
                 outputs: tuple[str, str] = ("p_generated", "logit_generated"), description: str = ""):
        super().__init__()
        self.linear = nn.Linear(dim, 1)
        self.labels = tuple(labels)
        self.threshold = float(threshold)
        self.feature = _check_feature(feature)
        self.name = name
        self.logit_kind = logit_kind          # "logit" or "llr" (a log-likelihood ratio)
        self.output_names = list(outputs)     # probability, logit
        self.description = description
        self.details: dict | None = None      # recorded in the manifest (HeadSpec.details)

    def forward(self, feat):
        logit = self.linear(feat).squeeze(-1)
        return torch.sigmoid(logit), logit

    def spec(self) -> HeadSpec:
        what = "log-likelihood ratio" if self.logit_kind == "llr" else "logit"
        text = self.description or f"Linear({self.linear.in_features}, 1) on the {FEATURES[self.feature]}"
        return HeadSpec(name=self.name, task="detection",
                        outputs={"probability": self.output_names[0], "logit": self.output_names[1]},
                        labels=self.labels, threshold=self.threshold, details=self.details,
                        description=f"{text}; output: {what} ({self.labels[1]} when > 0), probability = sigmoid")


class QualityHead(nn.Module):
    """MLP: one quality score per image."""
    task = "quality"

    def __init__(self, dims: list[int], activation: str = "relu", scale: dict | None = None, bounded: bool = False,
                 *, feature: str = "embedding", name: str = "quality", output: str = "quality",
                 description: str = ""):
        super().__init__()
        if len(dims) < 2 or dims[-1] != 1:
            raise CheckpointError(f"quality head dims must run from the feature size to 1, got {dims}")
        layers: list[nn.Module] = []
        for i, (a, b) in enumerate(zip(dims[:-1], dims[1:])):
            layers.append(nn.Linear(a, b))
            if i < len(dims) - 2:
                layers.append(ACTIVATIONS[activation]())
        self.mlp = nn.Sequential(*layers)
        self.activation = activation
        self.scale = dict(scale or {"kind": "mos", "min": 1.0, "max": 5.0})
        self.bounded = bool(bounded)
        if self.bounded and not float(self.scale["min"]) < float(self.scale["max"]):
            raise CheckpointError(f"a bounded quality head needs scale min < max, got {self.scale}")
        self.feature = _check_feature(feature)
        self.name = name
        self.output_names = [output]
        self.description = description

    def forward(self, feat):
        z = self.mlp(feat).squeeze(-1)
        if self.bounded:
            lo, hi = float(self.scale["min"]), float(self.scale["max"])
            z = lo + (hi - lo) * torch.sigmoid(z)
        return (z,)

    def linears(self) -> list:
        return [m for m in self.mlp if isinstance(m, nn.Linear)]

    def spec(self) -> HeadSpec:
        text = self.description or f"MLP ({self.activation}) on the {FEATURES[self.feature]}"
        if self.bounded:
            text += "; output squashed into the scale by a sigmoid"
        return HeadSpec(name=self.name, task="quality", outputs={"score": self.output_names[0]},
                        scale=dict(self.scale), description=text)


class AttributionHead(nn.Module):
    """Caption matching: cosine with K constant text embeddings (real first, then one per generator).

    logits = scale * emb @ T^T; class_probs = softmax(logits); p_generated = 1 - p(real),
    computed as sigmoid(logsumexp(generator logits) - real logit) so it is also a logit's sigmoid.
    """
    task = "attribution"

    def __init__(self, text_features, labels, logit_scale: float, threshold: float = 0.5, *,
                 name: str = "attribution", description: str = ""):
        super().__init__()
        text_features = torch.as_tensor(text_features, dtype=torch.float32)
        if text_features.ndim != 2 or len(labels) != text_features.shape[0] or len(labels) < 2:
            raise CheckpointError(f"need one text embedding per label (real first): {text_features.shape} vs "
                                  f"{list(labels)}")
        self.register_buffer("text", torch.nn.functional.normalize(text_features, dim=-1) * float(logit_scale))
        self.labels = tuple(labels)
        self.threshold = float(threshold)
        self.logit_scale = float(logit_scale)
        self.feature = "embedding"
        self.name = name
        self.output_names = ["p_generated", "logit_generated", "class_probs"]
        self.description = description

    def forward(self, emb):
        logits = emb @ self.text.T
        generated = torch.logsumexp(logits[:, 1:], dim=-1) - logits[:, 0]
        return torch.sigmoid(generated), generated, torch.softmax(logits, dim=-1)

    def spec(self) -> HeadSpec:
        text = self.description or (f"caption matching: softmax over {len(self.labels)} text embeddings "
                                    f"x {self.logit_scale:.2f}; p_generated = 1 - p({self.labels[0]})")
        return HeadSpec(name=self.name, task="attribution",
                        outputs={"probability": self.output_names[0], "logit": self.output_names[1],
                                 "class_probs": self.output_names[2]},
                        labels=self.labels, threshold=self.threshold, description=text)


class PromptQualityHead(nn.Module):
    """Quality as the softmax weight of a "good" prompt against a "bad" one (CLIP-IQA style): in [0, 1]."""
    task = "quality"

    def __init__(self, text_features, logit_scale: float, *, name: str = "quality", output: str = "quality",
                 description: str = ""):
        super().__init__()
        text_features = torch.as_tensor(text_features, dtype=torch.float32)
        if tuple(text_features.shape[:1]) != (2,):
            raise CheckpointError(f"need two text embeddings (good, bad), got shape {tuple(text_features.shape)}")
        self.register_buffer("text", torch.nn.functional.normalize(text_features, dim=-1) * float(logit_scale))
        self.logit_scale = float(logit_scale)
        self.scale = {"kind": "probability", "min": 0.0, "max": 1.0}
        self.feature = "embedding"
        self.name = name
        self.output_names = [output]
        self.description = description

    def forward(self, emb):
        return (torch.softmax(emb @ self.text.T, dim=-1)[:, 0],)

    def spec(self) -> HeadSpec:
        text = self.description or f"softmax of 'good' vs 'bad' prompt similarity x {self.logit_scale:.2f}"
        return HeadSpec(name=self.name, task="quality", outputs={"score": self.output_names[0]},
                        scale=dict(self.scale), description=text)


class CustomHead(nn.Module):
    """Any torch module trained in-house, on one of the FEATURES.

    task "detection": the module gives one logit per image; "quality": one score.
    """

    def __init__(self, module: nn.Module, task: str, *, feature: str = "embedding", name: str | None = None,
                 labels=("real", "generated"), threshold: float = 0.5, scale: dict | None = None,
                 outputs: list[str] | None = None, description: str = ""):
        super().__init__()
        if task not in ("detection", "quality"):
            raise InvalidArgumentError(f"task must be 'detection' or 'quality', got {task!r}")
        self.module = module.eval()
        self.task = task
        self.feature = _check_feature(feature)
        self.name = name or task
        self.labels = tuple(labels)
        self.threshold = float(threshold)
        self.scale = dict(scale or {"kind": "score", "min": 0.0, "max": 1.0})
        default = ["p_generated", "logit_generated"] if task == "detection" else ["quality"]
        self.output_names = list(outputs or default)
        self.description = description or f"in-house {type(module).__name__} on the {FEATURES[self.feature]}"

    def forward(self, feat):
        y = self.module(feat).reshape(feat.shape[0])
        return (torch.sigmoid(y), y) if self.task == "detection" else (y,)

    def spec(self) -> HeadSpec:
        if self.task == "detection":
            return HeadSpec(name=self.name, task="detection",
                            outputs={"probability": self.output_names[0], "logit": self.output_names[1]},
                            labels=self.labels, threshold=self.threshold, description=self.description)
        return HeadSpec(name=self.name, task="quality", outputs={"score": self.output_names[0]},
                        scale=self.scale, description=self.description)


def save_heads(path: str | Path, detector: DetectorHead | None, quality: QualityHead | None) -> None:
    data: dict = {"format": HEADS_FORMAT, "version": HEADS_VERSION, "feature": "embedding"}
    if detector is not None:
        data["detector"] = {"weight": detector.linear.weight.detach().cpu().clone(),
                            "bias": detector.linear.bias.detach().cpu().clone(),
                            "labels": list(detector.labels), "threshold": detector.threshold}
    if quality is not None:
        data["quality"] = {"layers": [{"weight": m.weight.detach().cpu().clone(), "bias": m.bias.detach().cpu().clone()}
                                      for m in quality.linears()],
                           "activation": quality.activation, "scale": dict(quality.scale),
                           "bounded": quality.bounded}
    torch.save(data, str(path))


def load_heads(path: str | Path, embed_dim: int) -> list:
    """Read a clipscan heads file and check it fits an embedding of `embed_dim`; returns its heads."""
    path = Path(path)
    if not path.is_file():
        raise InputNotFoundError(f"heads file {path} does not exist; pass the path of an existing clipscan heads file")
    data = load_torch_file(path, "clipscan heads file")
    if not isinstance(data, dict) or data.get("format") != HEADS_FORMAT:
        raise CheckpointError(f"{path} is not a clipscan heads file (expected a dict with format={HEADS_FORMAT!r}; "
                              f"found {type(data).__name__} with keys "
                              f"{sorted(data)[:8] if isinstance(data, dict) else '-'}). For a published format, name "
                              "it: --head univfd:FILE, --head cozzolino:FILE, ...")
    if data.get("version") != HEADS_VERSION:
        raise CheckpointError(f"{path} is heads file version {data.get('version')!r}; this clipscan reads "
                              f"{HEADS_VERSION}")
    heads: list = []
    if "detector" in data:
        d = data["detector"]
        w, b = d["weight"], d["bias"]
        if tuple(w.shape) != (1, embed_dim) or tuple(b.shape) != (1,):
            raise CheckpointError(f"{path}: detector weight {tuple(w.shape)} / bias {tuple(b.shape)} do not fit "
                                  f"an embedding of {embed_dim} (expected (1, {embed_dim}) and (1,))")
        detector = DetectorHead(embed_dim, d.get("labels", ("real", "generated")), d.get("threshold", 0.5))
        detector.linear.load_state_dict({"weight": w.float(), "bias": b.float()})
        heads.append(detector)
    if "quality" in data:
        q = data["quality"]
        layers = q["layers"]
        dims = [int(layers[0]["weight"].shape[1])] + [int(layer["weight"].shape[0]) for layer in layers]
        if dims[0] != embed_dim:
            raise CheckpointError(f"{path}: the quality head takes {dims[0]} features, the backbone gives {embed_dim}")
        quality = QualityHead(dims, q.get("activation", "relu"), q.get("scale"), bool(q.get("bounded", False)))
        for m, layer in zip(quality.linears(), layers):
            m.load_state_dict({"weight": layer["weight"].float(), "bias": layer["bias"].float()})
        heads.append(quality)
    if not heads:
        raise CheckpointError(f"{path} holds neither a 'detector' nor a 'quality' head; write the heads file "
                              "with at least one of them")
    return heads
