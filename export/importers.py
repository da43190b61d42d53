"""Heads in the formats that exist in this field, read into clipscan heads.

`--head FORMAT:PATH` (repeatable) picks an importer; a bare path is a clipscan heads
file. Each importer checks shapes against the backbone and says which feature its
head reads and which test-time preprocessing its authors used, because published
detectors differ in both (see the README's table).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from ._deps import require
from .heads import DetectorHead, load_heads

torch = require("torch")


@dataclass
class Imported:
    heads: list
    preprocess: dict = field(default_factory=dict)   # overrides of the backbone's preprocess cfg
    source: Path | None = None


def _state_dict(path: Path) -> dict:
    if not path.is_file():
        raise FileNotFoundError(f"head file {path} does not exist")
    data = torch.load(str(path), map_location="cpu", weights_only=True)  # released files were saved on CUDA
    if isinstance(data, dict) and isinstance(data.get("state_dict"), dict):
        data = data["state_dict"]
    if isinstance(data, dict) and isinstance(data.get("model"), dict):
        data = data["model"]
    if not isinstance(data, dict) or not all(hasattr(v, "shape") for v in data.values()):
        raise ValueError(f"{path} is not a state dict of tensors (found {type(data).__name__})")
    return data


def _single_linear(path: Path, in_features: int, what: str) -> tuple:
    """The one Linear(in_features, 1) in a state dict, whatever its key prefix ("fc.", "module.", ...)."""
    sd = _state_dict(path)
    weights = [k for k, v in sd.items() if k.endswith("weight") and tuple(v.shape) == (1, in_features)]
    if len(weights) != 1:
        shapes = {k: tuple(v.shape) for k, v in sd.items()}
        raise ValueError(f"{path}: expected one {what} Linear({in_features}, 1) weight of shape (1, {in_features}); "
                         f"found {shapes}. Check that the backbone (--arch) is the one this head was trained on")
    wkey = weights[0]
    bkey = wkey[: -len("weight")] + "bias"
    if bkey not in sd or tuple(sd[bkey].shape) != (1,):
        raise ValueError(f"{path}: {wkey} has no matching bias of shape (1,) under {bkey!r}")
    return sd[wkey].float(), sd[bkey].float()


def import_clipscan(path: Path, backbone) -> Imported:
    """clipscan's own heads file: heads on the embedding, trained with the backbone's preprocessing."""
    return Imported(load_heads(path, backbone.embed_dim),
                    preprocess={"resize_mode": backbone.preprocess.get("resize_mode", "shortest")}, source=path)


def import_univfd(path: Path, backbone) -> Imported:
    """UnivFD (Ojha et al. 2023): Linear(768, 1) on the projected CLS of CLIP ViT-L/14, not normalised.

    Test-time preprocessing: no resize, centre crop 224 (padding smaller images), CLIP mean/std.
    """
    w, b = _single_linear(path, backbone.embed_dim, "UnivFD fc")
    head = DetectorHead(backbone.embed_dim, ("real", "generated"), 0.5, feature="proj", name="univfd",
                        description=f"UnivFD linear probe: Linear({backbone.embed_dim}, 1) on the projected CLS token, "
                                    "not normalised")
    head.linear.load_state_dict({"weight": w, "bias": b})
    return Imported([head], preprocess={"resize_mode": "none"}, source=path)


def import_cozzolino(path: Path, backbone) -> Imported:
    """Cozzolino et al. 2024: Linear(width, 1) on the L2-normalised CLS before the projection.

    The output is a log-likelihood ratio: synthetic when > 0, i.e. sigmoid(LLR) >= 0.5.
    """
    width = backbone.width
    w, b = _single_linear(path, width, "Cozzolino et al. classifier")
    head = DetectorHead(width, ("real", "generated"), 0.5, feature="pre_proj_normalized", name="cozzolino",
                        logit_kind="llr",
                        description=f"Cozzolino et al. linear classifier: Linear({width}, 1) on the CLS token after "
                                    "ln_post, before the projection, L2-normalised")
    head.linear.load_state_dict({"weight": w, "bias": b})
    return Imported([head], preprocess={"resize_mode": "shortest"}, source=path)


IMPORTERS = {
    "clipscan": import_clipscan,
    "univfd": import_univfd,
    "cozzolino": import_cozzolino,
}


def parse_head_arg(text: str) -> tuple[str, Path]:
    """"FORMAT:PATH" -> (format, path); a bare path is a clipscan heads file."""
    fmt, sep, rest = str(text).partition(":")
    if sep and fmt in IMPORTERS:
        return fmt, Path(rest)
    if sep and fmt.isidentifier() and not Path(text).exists():
        raise ValueError(f"unknown head format {fmt!r}; known formats: {sorted(IMPORTERS)} (use FORMAT:PATH)")
    return "clipscan", Path(text)


def import_heads(items, backbone) -> Imported:
    """Read every head given as a path, "FORMAT:PATH" or an nn.Module; merge their preprocessing needs."""
    merged = Imported([])
    for item in items:
        if isinstance(item, torch.nn.Module):
            got = Imported([item])
        else:
            fmt, path = parse_head_arg(item)
            got = IMPORTERS[fmt](path, backbone)
        for key, value in got.preprocess.items():
            if key in merged.preprocess and merged.preprocess[key] != value:
                raise ValueError(
                    f"the heads need different preprocessing ({key}: {merged.preprocess[key]!r} vs {value!r}), so "
                    "they cannot share one backbone pass: export them as separate artifacts")
            merged.preprocess[key] = value
        merged.heads.extend(got.heads)
        merged.source = merged.source or got.source
    _distinct_output_names(merged.heads)
    return merged


def _distinct_output_names(heads) -> None:
    """Several heads of one task: the first keeps the plain names, the others get their name as prefix."""
    taken: set[str] = {"embedding"}
    for head in heads:
        names = list(head.output_names)
        if taken & set(names):
            names = [f"{head.name}_{n}" for n in names]
            if taken & set(names):
                raise ValueError(f"heads {head.name!r} and another write the same outputs {sorted(taken & set(names))}: "
                                 "give the heads distinct names")
            head.output_names = names
        taken |= set(names)
