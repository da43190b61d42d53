"""Heads that sit on the CLIP image embedding, and the clipscan heads file.

A heads file is a `torch.save`d dict of tensors and plain values (loadable with
`weights_only=True`):

    {"format": "clipscan.heads", "version": 1,
     "feature": "embedding",                  # the L2-normalised projected CLS
     "detector": {"weight": [1, D], "bias": [1], "labels": ["real", "generated"], "threshold": 0.5},
     "quality": {"layers": [{"weight": [H, D], "bias": [H]}, ..., {"weight": [1, H], "bias": [1]}],
                 "activation": "relu", "scale": {"kind": "mos", "min": 1.0, "max": 5.0},
                 "bounded": False}}

The detector gives a logit (sigmoid -> probability of "generated"); the quality
head is an MLP giving a score on its scale. A bounded quality head maps the MLP
output z to min + (max - min) * sigmoid(z), so the score cannot leave its scale.
"""
from __future__ import annotations

from pathlib import Path

from ._deps import require

torch = require("torch")
nn = torch.nn

HEADS_FORMAT = "clipscan.heads"
HEADS_VERSION = 1
ACTIVATIONS = {"relu": nn.ReLU, "gelu": nn.GELU, "tanh": nn.Tanh}


class DetectorHead(nn.Module):
    """Linear probe over the embedding: one logit per image."""

    def __init__(self, dim: int, labels=("real", "generated"), threshold: float = 0.5):
        super().__init__()
        self.linear = nn.Linear(dim, 1)
        self.labels = tuple(labels)
        self.threshold = float(threshold)

    def forward(self, emb):
        return self.linear(emb).squeeze(-1)


class QualityHead(nn.Module):
    """MLP over the embedding: one quality score per image."""

    def __init__(self, dims: list[int], activation: str = "relu", scale: dict | None = None, bounded: bool = False):
        super().__init__()
        if len(dims) < 2 or dims[-1] != 1:
            raise ValueError(f"quality head dims must run from the embedding size to 1, got {dims}")
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
            raise ValueError(f"a bounded quality head needs scale min < max, got {self.scale}")

    def forward(self, emb):
        z = self.mlp(emb).squeeze(-1)
        if self.bounded:
            lo, hi = float(self.scale["min"]), float(self.scale["max"])
            z = lo + (hi - lo) * torch.sigmoid(z)
        return z

    def linears(self) -> list:
        return [m for m in self.mlp if isinstance(m, nn.Linear)]


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


def load_heads(path: str | Path, embed_dim: int) -> tuple[DetectorHead | None, QualityHead | None]:
    """Read a clipscan heads file and check it fits an embedding of `embed_dim`."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"heads file {path} does not exist")
    data = torch.load(str(path), map_location="cpu", weights_only=True)
    if not isinstance(data, dict) or data.get("format") != HEADS_FORMAT:
        raise ValueError(f"{path} is not a clipscan heads file (expected a dict with format={HEADS_FORMAT!r}; "
                         f"found {type(data).__name__} with keys {sorted(data)[:8] if isinstance(data, dict) else '-'})")
    if data.get("version") != HEADS_VERSION:
        raise ValueError(f"{path} is heads file version {data.get('version')!r}; this clipscan reads {HEADS_VERSION}")
    detector = quality = None
    if "detector" in data:
        d = data["detector"]
        w, b = d["weight"], d["bias"]
        if tuple(w.shape) != (1, embed_dim) or tuple(b.shape) != (1,):
            raise ValueError(f"{path}: detector weight {tuple(w.shape)} / bias {tuple(b.shape)} do not fit "
                             f"an embedding of {embed_dim} (expected (1, {embed_dim}) and (1,))")
        detector = DetectorHead(embed_dim, d.get("labels", ("real", "generated")), d.get("threshold", 0.5))
        detector.linear.load_state_dict({"weight": w.float(), "bias": b.float()})
    if "quality" in data:
        q = data["quality"]
        layers = q["layers"]
        dims = [int(layers[0]["weight"].shape[1])] + [int(layer["weight"].shape[0]) for layer in layers]
        if dims[0] != embed_dim:
            raise ValueError(f"{path}: the quality head takes {dims[0]} features, the backbone gives {embed_dim}")
        quality = QualityHead(dims, q.get("activation", "relu"), q.get("scale"), bool(q.get("bounded", False)))
        for m, layer in zip(quality.linears(), layers):
            m.load_state_dict({"weight": layer["weight"].float(), "bias": layer["bias"].float()})
    if detector is None and quality is None:
        raise ValueError(f"{path} holds neither a 'detector' nor a 'quality' head")
    return detector, quality
