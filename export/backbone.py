"""Load an open_clip image tower from a local checkpoint file (never a download).

`arch` is an open_clip model name (e.g. "ViT-B-32", "ViT-L-14-quickgelu") or the
path of an open_clip model-config JSON ({"embed_dim", "vision_cfg", "text_cfg",
optional "quick_gelu" and "preprocess_cfg"}). Only the image tower is built; a
full CLIP checkpoint (its text tower is ignored) or an image-tower-only state
dict both load, with strict key checking on the image tower.
"""
from __future__ import annotations

import difflib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from clipscan.runtime.artifact import file_sha256
from clipscan.runtime.errors import CheckpointError, InputNotFoundError, InvalidArgumentError
from clipscan.runtime.manifest import OPENAI_CLIP_MEAN, OPENAI_CLIP_STD

from .deps import load_state_dict, require

torch = require("torch")
open_clip = require("open_clip")


@dataclass
class BackboneInfo:
    id: str
    config: dict
    activation: str                       # "quick_gelu" or "gelu"
    embed_dim: int
    image_size: tuple[int, int]
    preprocess: dict                      # open_clip preprocess cfg: mean, std, interpolation, resize_mode, fill_color
    weights_file: str = ""
    weights_sha256: str = ""
    weights_bytes: int = 0
    width: int = 0                        # the tower's token width (a ResNet's: what its attention pool reads)
    arch: str = ""                        # what was asked for: a model name or a config path
    weights_path: str = ""                # the local checkpoint (heads built from prompts read its text tower)
    extra: dict[str, Any] = field(default_factory=dict)


def read_arch_config(arch: str) -> tuple[str, dict]:
    """(id, open_clip model config) for a model name or a config JSON path."""
    p = Path(arch)
    if p.suffix == ".json":
        if not p.is_file():
            raise InputNotFoundError(f"architecture config {p} does not exist; pass an open_clip model name or "
                                     "the path of an existing model-config .json")
        try:
            cfg = json.loads(p.read_text())
        except ValueError as e:  # not JSON, or not text
            raise CheckpointError(f"{p} is not a JSON model config ({e}); pass an open_clip model-config "
                                  ".json") from None
        if "vision_cfg" not in cfg or "embed_dim" not in cfg:
            raise CheckpointError(f"{p} is not an open_clip model config: it needs 'embed_dim' and 'vision_cfg' "
                                  f"(found keys {sorted(cfg)})")
        return f"open_clip-config:{p.stem}", cfg
    cfg = open_clip.get_model_config(arch)
    if cfg is None:
        known = open_clip.list_models()
        close = difflib.get_close_matches(arch, known, n=5, cutoff=0.5)
        raise InvalidArgumentError(f"unknown open_clip architecture {arch!r}; close names: {close or known[:8]}. "
                                   "Pass a model name from open_clip.list_models() or the path of a model-config .json")
    return f"open_clip:{arch}", dict(cfg)


def _preprocess_cfg(cfg: dict, image_size) -> dict:
    pp = {"mean": list(OPENAI_CLIP_MEAN), "std": list(OPENAI_CLIP_STD), "interpolation": "bicubic",
          "resize_mode": "shortest", "fill_color": 0}
    pp.update({k: v for k, v in (cfg.get("preprocess_cfg") or {}).items() if v is not None})
    pp["size"] = list(image_size)
    return pp


def build_visual(cfg: dict, quick_gelu: bool):
    import dataclasses

    known = {f.name for f in dataclasses.fields(open_clip.model.CLIPVisionCfg)}
    unknown = sorted(set(cfg.get("vision_cfg") or {}) - known)
    if unknown:
        raise CheckpointError(f"the model config's vision_cfg has key(s) {unknown} that open_clip "
                              f"{open_clip.__version__} does not know; known keys: {sorted(known)}")
    vision_cfg = open_clip.model.CLIPVisionCfg(**cfg["vision_cfg"])
    return open_clip.model._build_vision_tower(cfg["embed_dim"], vision_cfg, quick_gelu=quick_gelu)


def _visual_state_dict(weights: Path) -> dict:
    state = load_state_dict(weights, "backbone checkpoint")
    visual = {k[len("visual."):]: v for k, v in state.items() if k.startswith("visual.")}
    if visual:
        return visual
    # a whole CLIP nested in a detector's state dict (DRCT: model.model.visual.*)
    nested = {k[: -len("visual.conv1.weight")] for k in state if k.endswith(".visual.conv1.weight")}
    if len(nested) == 1:
        prefix = nested.pop() + "visual."
        return {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)}
    if "conv1.weight" in state or "trunk.patch_embed.proj.weight" in state:
        return dict(state)  # already an image-tower-only state dict
    raise CheckpointError(f"{weights} has no image-tower weights (no 'visual.*' keys); first keys: {list(state)[:6]}")


def _tower_shape(state: dict) -> dict | None:
    """width, patch size, image size, layers and embed dim that a ViT image tower's state dict implies."""
    try:
        width, _, patch, _ = state["conv1.weight"].shape
        tokens = state["positional_embedding"].shape[0]
        embed_dim = state["proj"].shape[1] if "proj" in state else None
    except (KeyError, ValueError, AttributeError):
        return None
    grid = round((tokens - 1) ** 0.5)
    layers = len({k.split(".")[2] for k in state if k.startswith("transformer.resblocks.")})
    return {"width": int(width), "patch_size": int(patch), "image_size": int(grid * patch), "layers": layers,
            "embed_dim": None if embed_dim is None else int(embed_dim)}


def fitting_architectures(state: dict, limit: int = 8) -> list[str]:
    """open_clip model names whose image tower has the shapes of `state`."""
    shape = _tower_shape(state)
    if shape is None:
        return []
    out = []
    for name in open_clip.list_models():
        cfg = open_clip.get_model_config(name) or {}
        v = cfg.get("vision_cfg") or {}
        size = v.get("image_size", 224)
        size = size[0] if isinstance(size, (list, tuple)) else size
        if (v.get("width"), v.get("patch_size"), size, v.get("layers")) == (
                shape["width"], shape["patch_size"], shape["image_size"], shape["layers"]) and (
                shape["embed_dim"] is None or cfg.get("embed_dim") == shape["embed_dim"]):
            out.append(name)
    return out[:limit]


def _check_shapes(visual, state: dict, weights: Path, bid: str) -> None:
    """A tensor of another shape than the architecture's: name the first one and the architectures that fit."""
    own = visual.state_dict()
    for key, tensor in own.items():
        if key in state and tuple(state[key].shape) != tuple(tensor.shape):
            fits = fitting_architectures(state)
            shape = _tower_shape(state)
            hint = (f"architectures whose shapes fit these weights: {', '.join(fits)}" if fits else
                    f"no open_clip model name fits; write a model-config JSON with vision_cfg {shape}" if shape
                    else "check --arch")
            raise CheckpointError(f"{weights} does not match architecture {bid}: tensor {key!r} is "
                                  f"{list(state[key].shape)} in the weights but {list(tensor.shape)} in {bid}; {hint}")


def _token_width(cfg: dict) -> int:
    """The width of the tokens the tower pools: a ViT's width; a ModifiedResNet's last stage, 32 x its width."""
    from .tower_kind import MODIFIED_RESNET, config_tower_kind

    width = int(cfg["vision_cfg"].get("width", 768))
    return width * 32 if config_tower_kind(cfg) == MODIFIED_RESNET else width


def load_backbone(arch: str, weights: str | Path, *, quick_gelu: bool | None = None):
    """Build the image tower of `arch` and load `weights` into it. Returns (module, BackboneInfo)."""
    bid, cfg = read_arch_config(arch)
    use_quick = bool(cfg.get("quick_gelu", False)) if quick_gelu is None else bool(quick_gelu)
    visual = build_visual(cfg, use_quick)
    weights = Path(weights)
    if not weights.is_file():
        raise InputNotFoundError(f"backbone weights {weights} do not exist (clipscan never downloads weights: "
                                 "pass a local open_clip/OpenAI CLIP checkpoint file)")
    state = _visual_state_dict(weights)
    _check_shapes(visual, state, weights, bid)
    result = visual.load_state_dict(state, strict=False)
    if result.missing_keys or result.unexpected_keys:
        raise CheckpointError(f"{weights} does not match architecture {bid}: missing {result.missing_keys[:6]}, "
                              f"unexpected {result.unexpected_keys[:6]}. Check --arch (and its width/layers/patch "
                              "size)")
    visual.eval()
    image_size = visual.image_size if isinstance(visual.image_size, tuple) else (visual.image_size,) * 2
    info = BackboneInfo(
        id=bid, config=cfg, activation="quick_gelu" if use_quick else "gelu",
        embed_dim=int(cfg["embed_dim"]), image_size=tuple(int(s) for s in image_size),
        preprocess=_preprocess_cfg(cfg, image_size),
        weights_file=weights.name, weights_sha256=file_sha256(weights), weights_bytes=weights.stat().st_size,
        width=_token_width(cfg), arch=str(arch), weights_path=str(weights),
    )
    return visual, info
