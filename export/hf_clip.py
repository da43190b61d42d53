"""Hugging Face `transformers` CLIP image towers, read into the open_clip VisionTransformer export builds.

Needs only the export extra and `safetensors`, never `transformers`: the key layout is mapped here.
A checkpoint is a `save_pretrained` folder of a `CLIPModel`, `CLIPVisionModel` or
`CLIPVisionModelWithProjection` (config.json + model.safetensors or pytorch_model.bin, or their
sharded forms with an index), or a single weights file with `--arch`. The architecture comes from
the checkpoint's own config (`vision_config` inside a CLIPModel config), the preprocessing from its
preprocessor_config.json when there is one. Every tensor is mapped, or ignored on purpose (the text
tower of a CLIPModel, the `position_ids` buffer, a head stored in the same file that a `--head`
importer reads), or the import is refused naming it. Pickles load with `weights_only=True` only.
"""
from __future__ import annotations

import hashlib
import json
import logging
import re
from pathlib import Path

from clipscan.runtime.errors import InvalidArgumentError
from clipscan.runtime.manifest import OPENAI_CLIP_MEAN, OPENAI_CLIP_STD

from .backbone import BackboneInfo, build_visual, load_backbone, read_arch_config
from .deps import load_torch_file, require
from .hf_preprocess import HFCheckpointError, hf_preprocess
from .weights_formats import AUTO, HF, OPEN_CLIP, WEIGHTS_FORMAT_CHOICES

torch = require("torch")
log = logging.getLogger("clipscan.export")

WEIGHT_FILES = ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin",
                "pytorch_model.bin.index.json")
# transformers' CLIPVisionConfig defaults: save_pretrained writes only the values that differ from them
HF_VISION_DEFAULTS = {"hidden_size": 768, "intermediate_size": 3072, "projection_dim": 512, "num_hidden_layers": 12,
                      "num_attention_heads": 12, "num_channels": 3, "image_size": 224, "patch_size": 32,
                      "hidden_act": "quick_gelu", "layer_norm_eps": 1e-5}
ACTIVATIONS = {"quick_gelu": True, "gelu": False}            # hidden_act -> open_clip's quick_gelu flag
TOWER_MARK = "embeddings.patch_embedding.weight"   # finds the prefixes of a file's keys (see tower_prefix)
# C2P-CLIP stores its classifier beside the tower: `--head c2p-clip:FILE` reads these (after the outer prefix)
C2P_HEAD_KEYS = ("fc.weight", "fc.bias")
# heads stored beside a tower, read by a --head importer, not by the tower: C2P-CLIP's fc, Effort's head
SIDE_HEADS = {"fc": "c2p-clip", "head": "effort"}
# Effort stores each attention projection as a fixed main weight plus a trained SVD residual
SVD_MAIN, SVD_RESIDUAL = "weight_main", ("U_residual", "S_residual", "V_residual")
SVD_MAIN_FACTORS = ("U_r", "S_r", "V_r")
_LAYER = re.compile(r"encoder\.layers\.(\d+)\.(.+)")
_LAYER_MAP = {"layer_norm1.weight": "ln_1.weight", "layer_norm1.bias": "ln_1.bias",
              "layer_norm2.weight": "ln_2.weight", "layer_norm2.bias": "ln_2.bias",
              "self_attn.out_proj.weight": "attn.out_proj.weight", "self_attn.out_proj.bias": "attn.out_proj.bias",
              "mlp.fc1.weight": "mlp.c_fc.weight", "mlp.fc1.bias": "mlp.c_fc.bias",
              "mlp.fc2.weight": "mlp.c_proj.weight", "mlp.fc2.bias": "mlp.c_proj.bias"}
_QKV = re.compile(r"self_attn\.([qkv])_proj\.(weight|bias)")
# relative to the tower prefix
_TOP_MAP = {"embeddings.class_embedding": "class_embedding", "embeddings.patch_embedding.weight": "conv1.weight",
            "embeddings.position_embedding.weight": "positional_embedding",
            "pre_layrnorm.weight": "ln_pre.weight", "pre_layrnorm.bias": "ln_pre.bias",
            "post_layernorm.weight": "ln_post.weight", "post_layernorm.bias": "ln_post.bias"}
_IGNORED = ("embeddings.position_ids",)           # an index buffer (0..N-1), not a weight


# -- files ------------------------------------------------------------------------------------------

def load_weights_file(path: Path) -> dict:
    """One weights file, through the one loader of checkpoints (deps.load_torch_file: safetensors directly,
    a pickle with torch.load(weights_only=True) only), then unwrapped the way training scripts wrap it."""
    data = load_torch_file(path, "weights file")
    for key in ("state_dict", "model"):   # training scripts wrap the state dict
        if isinstance(data, dict) and isinstance(data.get(key), dict):
            data = data[key]
    if not isinstance(data, dict) or not all(hasattr(v, "shape") for v in data.values()):
        raise HFCheckpointError(f"{path} is not a state dict of tensors (found {type(data).__name__})")
    return data


def _load_sharded(index: Path) -> dict:
    try:
        weight_map = json.loads(index.read_text())["weight_map"]
    except (ValueError, KeyError, TypeError) as e:
        raise HFCheckpointError(f"{index} is not a sharded-checkpoint index (a JSON object with 'weight_map'): "
                                f"{type(e).__name__}") from None
    state: dict = {}
    for name in sorted(set(weight_map.values())):
        shard = index.parent / name
        if Path(name).name != name or not shard.is_file():
            raise HFCheckpointError(f"{index} names shard {name!r}, which is not a file in {index.parent}")
        state.update(load_weights_file(shard))
    missing = [k for k in weight_map if k not in state]
    if missing:
        raise HFCheckpointError(f"{index} lists tensor {missing[0]!r} ({len(missing)} in all), which its shard "
                                f"{weight_map[missing[0]]} does not hold")
    return state


def _with_shards(path: Path) -> list[Path]:
    """[file] or, for a sharded checkpoint's index, [index, shard, ...]."""
    if not path.name.endswith(".index.json"):
        return [path]
    try:
        names = sorted(set(json.loads(path.read_text())["weight_map"].values()))
    except (ValueError, KeyError, TypeError, AttributeError) as e:
        raise HFCheckpointError(f"{path} is not a sharded-checkpoint index (a JSON object with 'weight_map'): "
                                f"{type(e).__name__}") from None
    return [path, *(path.parent / n for n in names)]


def weight_files(folder: Path) -> list[Path]:
    """The file(s) holding the weights of a save_pretrained folder (safetensors preferred)."""
    for name in WEIGHT_FILES:
        path = folder / name
        if path.is_file():
            return _with_shards(path)
    raise HFCheckpointError(f"{folder} holds none of {', '.join(WEIGHT_FILES)} (found "
                            f"{sorted(p.name for p in folder.iterdir())[:12]}); pass the folder save_pretrained wrote")


def _load_state(weights: Path) -> dict:
    if weights.is_dir():
        main = weight_files(weights)[0]
        return _load_sharded(main) if main.name.endswith(".index.json") else load_weights_file(main)
    if weights.name.endswith(".index.json"):
        return _load_sharded(weights)
    return load_weights_file(weights)


def _fingerprint(files: list[Path]) -> tuple[str, int]:
    """sha256 over the files' bytes in order (one file: its own sha256), and their total size."""
    digest, size = hashlib.sha256(), 0
    for path in files:
        with open(path, "rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                digest.update(block)
        size += path.stat().st_size
    return digest.hexdigest(), size


def _keys_of(path: Path) -> list[str]:
    """Tensor names of one file, without reading the tensors where the format allows it."""
    if path.suffix == ".safetensors":
        from safetensors import safe_open

        with safe_open(str(path), framework="pt") as f:
            return list(f.keys())
    try:
        return list(torch.load(str(path), map_location="cpu", weights_only=True, mmap=True))
    except Exception:
        return list(load_weights_file(path))


def detect_format(weights: Path) -> str:
    """'hf' for a folder or a file with a transformers CLIP image tower, 'open_clip' otherwise."""
    if weights.is_dir() or weights.name.endswith(".index.json"):
        return HF
    if not weights.is_file():
        return OPEN_CLIP   # the open_clip loader says the file does not exist
    try:
        keys = _keys_of(weights)
    except Exception:
        return OPEN_CLIP   # the open_clip loader names what is wrong with the file
    # open_clip names its patch embedding conv1: a tensor named embeddings.patch_embedding is a transformers tower
    return HF if any(k.endswith(TOWER_MARK) for k in keys) else OPEN_CLIP


# -- architecture -----------------------------------------------------------------

def _hf_vision_config(cfg: dict, source) -> dict | None:
    """The vision part of a transformers CLIP config (CLIPConfig or CLIPVisionConfig), defaults filled in."""
    if cfg.get("model_type") == "clip" or "vision_config" in cfg:
        vision = dict(cfg.get("vision_config") or {})
        vision.setdefault("projection_dim", cfg.get("projection_dim", HF_VISION_DEFAULTS["projection_dim"]))
    elif cfg.get("model_type") == "clip_vision_model" or "hidden_size" in cfg:
        vision = dict(cfg)
    else:
        return None
    return {**HF_VISION_DEFAULTS, **{k: v for k, v in vision.items() if v is not None}}


def open_clip_config(vision: dict, embed_dim: int, source) -> tuple[dict, bool]:
    """(open_clip model config, quick_gelu) equal to a transformers vision config."""
    act = vision["hidden_act"]
    if act not in ACTIVATIONS:
        raise HFCheckpointError(f"{source}: hidden_act {act!r} is not one clipscan maps; it maps "
                                f"{sorted(ACTIVATIONS)} (OpenAI weights use quick_gelu, LAION's gelu)")
    if abs(float(vision["layer_norm_eps"]) - 1e-5) > 1e-12:
        raise HFCheckpointError(f"{source}: layer_norm_eps {vision['layer_norm_eps']} differs from the 1e-5 of "
                                "open_clip's LayerNorm, which the exported tower uses")
    width, heads = int(vision["hidden_size"]), int(vision["num_attention_heads"])
    inter = int(vision["intermediate_size"])
    if width % heads:
        raise HFCheckpointError(f"{source}: hidden_size {width} is not a multiple of num_attention_heads {heads}")
    ratio = inter / width
    if int(width * ratio) != inter:   # open_clip sizes the MLP as int(width * mlp_ratio)
        ratio = (inter + 0.5) / width
    size = vision["image_size"]
    vision_cfg = {"image_size": size, "layers": int(vision["num_hidden_layers"]), "width": width,
                  "head_width": width // heads, "patch_size": int(vision["patch_size"]), "mlp_ratio": ratio}
    return {"embed_dim": int(embed_dim), "vision_cfg": vision_cfg, "quick_gelu": ACTIVATIONS[act]}, ACTIVATIONS[act]


# -- tensors ----------------------------------------------------------------------------------------

def tower_prefix(state: dict, source) -> tuple[str, str]:
    """(tower prefix, outer prefix) of a checkpoint's keys.

    The tower prefix is what stands before "embeddings.": "vision_model." as transformers 4 saves every
    CLIP class, "" for a CLIPVisionModel saved by transformers 5, "model.vision_model." for C2P-CLIP.
    The outer prefix (the tower prefix less "vision_model.") holds visual_projection, the text tower
    and any head stored beside the tower.
    """
    marks = [k[: -len(TOWER_MARK)] for k in state if k.endswith(TOWER_MARK)]
    if len(marks) != 1:
        raise HFCheckpointError(f"{source}: expected one Hugging Face CLIP image tower (a tensor named "
                                f"[prefix]vision_model.{TOWER_MARK}), found {len(marks)}; "
                                f"first keys: {list(state)[:6]}")
    tower = marks[0]
    return tower, tower[: -len("vision_model.")] if tower.endswith("vision_model.") else tower


def _is_text(rel: str) -> bool:
    return rel.startswith("text_model.") or rel in ("text_projection.weight", "logit_scale")


def merge_svd(state: dict) -> dict:
    """Dense `weight`s from Effort's SVD form: weight_main + U_residual @ diag(S_residual) @ V_residual.

    Composed in float64 and rounded once. U_r/S_r/V_r are the factors weight_main was built from
    (it holds their product), so they are dropped; a layer without residual keeps weight_main.
    """
    mains = [k[: -len(SVD_MAIN)] for k in state if k.endswith("." + SVD_MAIN)]
    if not mains:
        return state
    parts = (SVD_MAIN, *SVD_RESIDUAL, *SVD_MAIN_FACTORS)
    out = {k: v for k, v in state.items() if not any(k.startswith(m) and k[len(m):] in parts for m in mains)}
    for m in mains:
        main = state[m + SVD_MAIN]
        u, s, v = (state.get(m + name) for name in SVD_RESIDUAL)
        weight = main.double()
        if u is not None and s is not None and v is not None:
            weight = weight + u.double() @ torch.diag(s.double()) @ v.double()
        out[m + "weight"] = weight.to(main.dtype)
    return out


def _side_head(key: str, tower: str) -> str | None:
    """The --head format that reads a tensor stored beside the tower, if it is one."""
    parts = key.split(".")
    if not key.startswith(tower) and len(parts) >= 2 and parts[-1] in ("weight", "bias"):
        return SIDE_HEADS.get(parts[-2])
    return None


def map_state(state: dict, prefixes: tuple[str, str], layers: int, source) -> tuple[dict, list[str]]:
    """open_clip VisionTransformer state dict from a transformers one; (mapped, keys ignored on purpose)."""
    tower, outer = prefixes
    out: dict = {}
    qkv: dict = {}
    ignored: list[str] = []
    for key, tensor in state.items():
        rel = key[len(tower):] if key.startswith(tower) else None
        orel = key[len(outer):] if key.startswith(outer) else None
        if rel in _TOP_MAP:
            out[_TOP_MAP[rel]] = tensor
        elif rel is not None and (m := _LAYER.fullmatch(rel)) and int(m.group(1)) < layers and (
                m.group(2) in _LAYER_MAP or _QKV.fullmatch(m.group(2))):
            n, part = int(m.group(1)), m.group(2)
            if part in _LAYER_MAP:
                out[f"transformer.resblocks.{n}.{_LAYER_MAP[part]}"] = tensor
            else:
                q = _QKV.fullmatch(part)
                qkv[(n, q.group(2), q.group(1))] = tensor
        elif orel == "visual_projection.weight":
            out["proj"] = tensor.t().contiguous()
        elif rel in _IGNORED or (orel is not None and _is_text(orel)) or _side_head(key, tower):
            ignored.append(key)
        else:
            raise HFCheckpointError(f"{source}: tensor {key!r} is not one clipscan maps into a {layers}-layer "
                                    "CLIP image tower; check that this is a transformers CLIP checkpoint and that "
                                    "its config matches the weights")
    for n in range(layers):
        for kind in ("weight", "bias"):
            parts = [qkv.get((n, kind, p)) for p in "qkv"]
            if any(p is None for p in parts):
                gone = "qkv"[[p is None for p in parts].index(True)]
                raise HFCheckpointError(f"{source}: tensor {tower}encoder.layers.{n}.self_attn.{gone}_proj.{kind} "
                                        "is missing")
            out[f"transformer.resblocks.{n}.attn.in_proj_{kind}"] = torch.cat(parts, 0)
    return out, ignored


def _hf_name(open_clip_key: str, prefixes: tuple[str, str]) -> str:
    """The transformers tensor an open_clip key comes from (for messages about a missing one)."""
    tower, outer = prefixes
    back = {v: k for k, v in _TOP_MAP.items()}
    if open_clip_key in back:
        return tower + back[open_clip_key]
    if open_clip_key == "proj":
        return outer + "visual_projection.weight"
    m = re.fullmatch(r"transformer\.resblocks\.(\d+)\.(.+)", open_clip_key)
    if m:
        part = {v: k for k, v in _LAYER_MAP.items()}.get(m.group(2), m.group(2))
        return f"{tower}encoder.layers.{m.group(1)}.{part}"
    return open_clip_key


# -- the loader -------------------------------------------------------------------------------------

def _architecture(weights: Path, arch: str | None, quick_gelu, embed_dim: int) -> tuple[str, dict, bool, dict | None]:
    """(id, open_clip config, quick_gelu, vision config read from a transformers config or None)."""
    cfg_path = (weights / "config.json" if weights.is_dir() else
                Path(arch) if arch and arch.endswith(".json") else None)
    if weights.is_dir() and not cfg_path.is_file():
        raise HFCheckpointError(f"{weights} has no config.json: pass the folder save_pretrained wrote")
    if weights.is_dir() and arch:
        raise HFCheckpointError(f"--arch {arch} was given, but {weights} is a Hugging Face folder whose config.json "
                                "gives the architecture: leave --arch out")
    if cfg_path is not None:
        if not cfg_path.is_file():
            raise HFCheckpointError(f"architecture config {cfg_path} does not exist")
        vision = _hf_vision_config(json.loads(cfg_path.read_text()), cfg_path)
        if vision is not None:
            cfg, use_quick = open_clip_config(vision, embed_dim, cfg_path)
            if quick_gelu is not None and bool(quick_gelu) != use_quick:
                raise HFCheckpointError(f"--{'quick-gelu' if quick_gelu else 'gelu'} contradicts {cfg_path}, whose "
                                        f"hidden_act is {vision['hidden_act']!r}: leave the flag out")
            return f"hf:{weights.name if weights.is_dir() else cfg_path.stem}", cfg, use_quick, vision
    if not arch:
        raise HFCheckpointError(f"{weights} is a single weights file: pass --arch (its transformers config.json, "
                                "an open_clip model name or model-config .json)")
    bid, cfg = read_arch_config(arch)
    use_quick = bool(cfg.get("quick_gelu", False)) if quick_gelu is None else bool(quick_gelu)
    return bid, {**cfg, "embed_dim": int(embed_dim)}, use_quick, None


def load_hf_backbone(weights: str | Path, arch: str | None = None, *, quick_gelu: bool | None = None):
    """Build the open_clip image tower a transformers CLIP checkpoint describes and load it (module, info)."""
    weights = Path(weights)
    if not weights.exists():
        raise HFCheckpointError(f"backbone weights {weights} do not exist (clipscan never downloads weights)")
    files = weight_files(weights) if weights.is_dir() else _with_shards(weights)
    state = merge_svd(_load_state(weights))
    prefixes = tower_prefix(state, weights)
    proj = state.get(prefixes[1] + "visual_projection.weight")
    width = int(state[prefixes[0] + TOWER_MARK].shape[0])
    embed_dim = int(proj.shape[0]) if proj is not None else width
    bid, cfg, use_quick, vision = _architecture(weights, arch, quick_gelu, embed_dim)
    layers = int(cfg["vision_cfg"]["layers"])
    mapped, ignored = map_state(state, prefixes, layers, weights)
    visual = build_visual(cfg, use_quick)
    if proj is None:   # CLIPVisionModel: no projection, the embedding is the pooled output itself
        mapped["proj"] = torch.eye(width, dtype=mapped["conv1.weight"].dtype)
    own = visual.state_dict()
    for key, tensor in own.items():
        if key not in mapped:
            raise HFCheckpointError(f"{weights}: tensor {_hf_name(key, prefixes)!r} is missing "
                                    f"(the {bid} tower needs it)")
        if tuple(mapped[key].shape) != tuple(tensor.shape):
            raise HFCheckpointError(f"{weights}: tensor {_hf_name(key, prefixes)!r} is {list(mapped[key].shape)} "
                                    f"(as {key}), the {bid} tower needs {list(tensor.shape)}: the config does not "
                                    "match the weights")
    visual.load_state_dict({k: v.float() for k, v in mapped.items()}, strict=True)
    visual.eval()
    if ignored:
        text = sum(1 for k in ignored if _is_text(k[len(prefixes[1]):]))
        heads = {k: _side_head(k, prefixes[0]) for k in ignored if _side_head(k, prefixes[0])}
        log.info("%s: %d text-tower tensors not used (image-only graph)%s", weights.name, text,
                 "".join(f"; {k} is read by --head {fmt}:FILE" for k, fmt in heads.items()))
    image_size = visual.image_size if isinstance(visual.image_size, tuple) else (visual.image_size,) * 2
    image_size = tuple(int(s) for s in image_size)
    # next to the weights (a folder, or a file in one), else next to an --arch config.json
    homes = [weights] if weights.is_dir() else [weights.parent] + ([Path(arch).parent] if arch and
                                                                    arch.endswith(".json") else [])
    pp_file = next((h / "preprocessor_config.json" for h in homes if (h / "preprocessor_config.json").is_file()),
                   homes[0] / "preprocessor_config.json")
    if pp_file.is_file():
        preprocess = hf_preprocess(json.loads(pp_file.read_text()), image_size, pp_file)
    else:
        preprocess = {"mean": list(OPENAI_CLIP_MEAN), "std": list(OPENAI_CLIP_STD), "interpolation": "bicubic",
                      "resize_mode": "shortest", "fill_color": 0,
                      **{k: v for k, v in (cfg.get("preprocess_cfg") or {}).items() if v is not None}}
    preprocess["size"] = list(image_size)
    sha, size = _fingerprint(files)
    extra = {"weights_format": HF, "hf": {"prefix": prefixes[0], "projection": proj is not None,
                                          "files": [p.name for p in files],
                                          "preprocessor_config": pp_file.name if pp_file.is_file() else None}}
    info = BackboneInfo(id=bid, config=cfg, activation="quick_gelu" if use_quick else "gelu", embed_dim=embed_dim,
                        image_size=image_size, preprocess=preprocess,
                        weights_file=weights.name if len(files) == 1 and not weights.is_dir() else
                        f"{weights.name}/{files[0].name}", weights_sha256=sha, weights_bytes=size,
                        width=width, arch=str(arch or weights), weights_path=str(weights), extra=extra)
    return visual, info


def load_tower(arch: str | None, weights: str | Path, *, quick_gelu: bool | None = None,
               weights_format: str = AUTO):
    """The image tower of `weights` in any format of export.weights_formats: (module, BackboneInfo)."""
    if weights_format not in WEIGHTS_FORMAT_CHOICES:
        raise InvalidArgumentError(f"weights format {weights_format!r} is not one of {list(WEIGHTS_FORMAT_CHOICES)}")
    fmt = detect_format(Path(weights)) if weights_format == AUTO else weights_format
    if fmt == HF:
        return load_hf_backbone(weights, arch, quick_gelu=quick_gelu)
    if not arch:
        raise InvalidArgumentError(f"{weights} is read as an open_clip checkpoint, which needs --arch (an open_clip "
                                   "model name or model-config .json); for a Hugging Face CLIP folder or file "
                                   "pass --weights-format hf")
    return load_backbone(arch, weights, quick_gelu=quick_gelu)

