"""Heads in the formats that exist in this field, read into clipscan heads.

`--head [NAME=]FORMAT:PATH` (repeatable) picks an importer; a bare path is a clipscan heads
file. NAME names the head everywhere (its outputs, the manifest, verify's gates, metrics and plots);
heads need distinct names, so two heads of one format that are not named get `_2`, `_3`... suffixes. Each importer checks shapes against the backbone and says which feature its
head reads and which test-time preprocessing its authors used, because published
detectors differ in both (see the README's table).
"""
from __future__ import annotations

import logging
import re
from pathlib import Path

from clipscan.runtime.errors import CheckpointError, InputNotFoundError, InvalidArgumentError
from clipscan.runtime.manifest import NATIVE

from .choices import FILELESS_HEAD_FORMATS, HEAD_FORMATS
from .deps import load_torch_file, require
from .gaintseva import heads_probe, mask_probe
from .heads import AttributionHead, DetectorHead, PromptQualityHead, QualityHead, load_heads
from .imported import Imported
from .imported import text_encoder as _text_encoder
from .iqa_importers import import_clip_iqa, import_clip_iqa_plus, import_liqe, import_liqe_mix  # noqa: F401

torch = require("torch")
log = logging.getLogger("clipscan.export")


def _state_dict(path: Path) -> dict:
    if not path.is_file():
        raise InputNotFoundError(f"head file {path} does not exist; pass the path of the downloaded head file")
    data = load_torch_file(path, "head checkpoint")  # onto the CPU: released files were saved on CUDA
    if isinstance(data, dict) and isinstance(data.get("state_dict"), dict):
        data = data["state_dict"]
    if isinstance(data, dict) and isinstance(data.get("model"), dict):
        data = data["model"]
    if not isinstance(data, dict) or not all(hasattr(v, "shape") for v in data.values()):
        raise CheckpointError(f"{path} is not a state dict of tensors (found {type(data).__name__})")
    return data


def _single_linear(path: Path, in_features: int, what: str) -> tuple:
    """The one Linear(in_features, 1) in a state dict, whatever its key prefix ("fc.", "module.", ...)."""
    sd = _state_dict(path)
    weights = [k for k, v in sd.items() if k.endswith("weight") and tuple(v.shape) == (1, in_features)]
    if len(weights) != 1:
        shapes = {k: tuple(v.shape) for k, v in sd.items()}
        raise CheckpointError(f"{path}: expected one {what} Linear({in_features}, 1) weight of shape (1, "
                              f"{in_features}); found {shapes}. Check that the backbone (--arch) is the one this head "
                              "was trained on")
    wkey = weights[0]
    bkey = wkey[: -len("weight")] + "bias"
    if bkey not in sd or tuple(sd[bkey].shape) != (1,):
        raise CheckpointError(f"{path}: {wkey} has no matching bias of shape (1,) under {bkey!r}")
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


def import_gaintseva_mask(path: Path, backbone) -> Imported:
    """Gaintseva et al.: a linear probe after removing embedding components (folded; see export.gaintseva)."""
    return Imported([mask_probe(path, backbone)], source=path)


def import_gaintseva_heads(path: Path, backbone) -> Imported:
    """Gaintseva et al.: a linear probe over selected attention heads' direct contributions."""
    return Imported([heads_probe(path, backbone)], source=path)


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


def import_c2p_clip(path: Path, backbone) -> Imported:
    """C2P-CLIP (Tan et al. 2024): Linear(D, 1) on the L2-normalised projected embedding of a fine-tuned HF CLIP tower.

    One checkpoint holds the tower (model.vision_model.*, model.visual_projection.weight) and the
    classifier (model.fc.*): give the same file to --weights (with --arch: the tower's transformers
    config.json or an open_clip model name, e.g. ViT-L-14-quickgelu) and to --head c2p-clip:FILE.
    Test-time preprocessing: short side to 224 bilinear, centre crop 224, CLIP mean/std; sigmoid > 0.5
    is generated.
    """
    from .hf_heads import c2p_clip_head

    head, preprocess = c2p_clip_head(path, backbone)
    return Imported([head], preprocess=preprocess, source=path)


def import_effort(path: Path, backbone) -> Imported:
    """Effort (Yan et al. 2025): Linear(width, 2) on the pooled output of an SVD-fine-tuned HF CLIP tower.

    One checkpoint (DeepfakeBench's, "module." prefix allowed) holds the tower under backbone.* with
    each attention projection as weight_main plus an SVD residual (U_residual, S_residual, V_residual),
    merged into dense weights at import, and the classifier head.*: give the same file to --weights (with
    --arch: the tower's transformers config.json or an open_clip name such as ViT-L-14-quickgelu) and to
    --head effort:FILE. p_generated is the softmax's fake class. Preprocessing as the demo's: the image
    squashed to 224x224 (bilinear), CLIP mean/std.
    """
    from .hf_heads import effort_head

    head, preprocess = effort_head(path, backbone)
    return Imported([head], preprocess=preprocess, source=path)


def import_rine(path: Path, backbone) -> Imported:
    """RINE (Koutlis & Papadopoulos 2024): an MLP over the CLS token of every block's ln_2 output, in the same pass.

    The released ckpt/model_*_trainable.pth (or the same tensors as .safetensors) holds the trainable part
    only: alpha (1, blocks, P), proj1.* (per-block Linear+ReLU from the tower's width to P), proj2.* and
    head.* (down to Linear(P, 1)); the tower is OpenAI CLIP ViT-L/14 (--arch ViT-L-14-quickgelu, --weights
    its checkpoint), and alpha must weigh all of its blocks. Test-time preprocessing: no resize, centre
    crop 224 (padding smaller images), CLIP mean/std. Outputs: logit_generated and p_generated =
    sigmoid(logit).
    """
    from .rine import rine_head

    head, preprocess = rine_head(path, backbone)
    return Imported([head], preprocess=preprocess, source=path)


def import_drct(path: Path, backbone) -> Imported:
    """DRCT (Chen et al. 2024): Linear(D, E) then Linear(E, 2) on OpenAI CLIP's encode_image (projected CLS).

    One checkpoint (their train.py's state dict, .pth or .safetensors; a "state_dict" wrapper or "module."
    prefix allowed) holds the tower under model.model.visual.*, the unused text tower under model.model.*,
    model.fc.* [E, D] and fc.* [2, E]; any other tensor is refused by name. Give the same file to --weights
    (with --arch, e.g. ViT-L-14-quickgelu) and to --head drct:FILE. The two Linears fold into one exact
    Linear(D, 1). Test-time preprocessing: no resize, centre crop 224 with offsets rounded down
    (albumentations), zero padding of smaller images, ImageNet mean/std. Outputs: p_generated (the softmax's
    fake class) and logit_generated = l_fake - l_real.
    """
    from .drct import drct_head

    head, preprocess = drct_head(path, backbone)
    return Imported([head], preprocess=preprocess, source=path)


def import_laion_aesthetic(path: Path, backbone) -> Imported:
    """LAION improved aesthetic predictor: MLP 768-1024-128-64-16-1 on the L2-normalised embedding, a 1-10 score.

    The released .pth (or .safetensors) state dict of its nn.Sequential (layers.0/2/4/6/7, Linear layers
    with dropout between and no activation) becomes one exact Linear; the output is a quality score on
    the predictor's own 1-10 scale, not a probability. Preprocessing as clip.load's: short side to 224
    bicubic, centre crop, CLIP mean/std. Published for OpenAI CLIP ViT-L/14 (ViT-L-14-quickgelu).
    """
    from .aesthetic import laion_aesthetic_head
    from .hf_clip import load_weights_file

    if not path.is_file():
        raise InputNotFoundError(f"aesthetic predictor file {path} does not exist; pass the predictor's .pth or .safetensors file")
    head, preprocess = laion_aesthetic_head(load_weights_file(path), path, backbone)
    return Imported([head], preprocess=preprocess, source=path)


def import_captions(path: Path, backbone) -> Imported:
    """Caption matching with generator attribution (Moskowitz et al. style).

    A JSON file: {"classes": [{"label": "real", "caption": "a real photograph"},
    {"label": "sdxl", "caption": "an image generated by SDXL"}, ...], optional
    "logit_scale" (default: the checkpoint's exp(logit_scale)) and "threshold"}. The
    first class is the real one. Captions are encoded with the checkpoint's own text
    tower at export time and become one constant matrix in the graph.
    """
    import json

    if not path.is_file():
        raise InputNotFoundError(f"captions file {path} does not exist; pass the path of an existing captions .json")
    try:
        spec = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, ValueError) as e:
        raise CheckpointError(f"{path} is not a captions JSON file ({type(e).__name__}: {e}); --head captions: "
                              "takes {\"classes\": [{\"label\", \"caption\"}, ...]}") from None
    classes = spec.get("classes") if isinstance(spec, dict) else None
    if not isinstance(classes, list) or len(classes) < 2 or not all("label" in c and "caption" in c for c in classes):
        raise CheckpointError(f"{path}: expected {{'classes': [{{'label', 'caption'}}, ...]}} with the real class "
                              "first and at least one generator")
    encoder = _text_encoder(backbone)
    text = encoder.encode([c["caption"] for c in classes])
    scale = float(spec.get("logit_scale", encoder.logit_scale))
    head = AttributionHead(text, [c["label"] for c in classes], scale, float(spec.get("threshold", 0.5)),
                           name="captions")
    return Imported([head], preprocess={"resize_mode": backbone.preprocess.get("resize_mode", "shortest")},
                    source=path)


AGIQA_QUALITY_WORDS = ("terrible", "bad", "poor", "average", "good", "perfect")


def import_agiqa_tang(path: Path, backbone) -> Imported:
    """CLIP-AGIQA (Tang et al. 2024): learned prompt context + quality words, MLP over [image, texts].

    The state dict holds the prompt learner's context (a key ending in "ctx", shape
    (n_ctx, text width)), optionally "quality_words", and an MLP Linear(D * (1 + K), H)
    -> ReLU -> Linear(H, 1) over concat(image embedding, text_1..text_K), all L2-normalised.
    The text features are computed here and folded into the first layer's bias, so the
    graph is image-only: W [img | t_1..t_K] + b = W_img img + (b + sum_k W_k t_k).
    """
    sd = _state_dict(path)
    ctx_keys = [k for k in sd if k.endswith("ctx") and sd[k].ndim == 2]
    if len(ctx_keys) != 1:
        raise CheckpointError(f"{path}: expected one learned prompt context (a 2-D tensor under a key ending in "
                              f"'ctx'), found {ctx_keys or list(sd)[:8]}")
    words = AGIQA_QUALITY_WORDS
    dim = backbone.embed_dim
    k = len(words)
    firsts = [key for key, v in sd.items() if key.endswith("weight") and v.ndim == 2 and v.shape[1] == dim * (1 + k)]
    if len(firsts) != 1:
        raise CheckpointError(f"{path}: expected one Linear({dim * (1 + k)}, H) over [image, {k} text features]; "
                              f"found shapes { {key: tuple(v.shape) for key, v in sd.items()} }")
    w1 = sd[firsts[0]].float()
    b1 = sd[firsts[0][:-len("weight")] + "bias"].float()
    hidden = w1.shape[0]
    seconds = [key for key, v in sd.items() if key.endswith("weight") and tuple(v.shape) == (1, hidden)]
    if len(seconds) != 1:
        raise CheckpointError(f"{path}: expected one Linear({hidden}, 1) after the first layer")
    w2, b2 = sd[seconds[0]].float(), sd[seconds[0][:-len("weight")] + "bias"].float()
    text = _text_encoder(backbone).encode_with_context(sd[ctx_keys[0]].float(), list(words))
    folded_bias = b1 + sum(w1[:, dim * (1 + i): dim * (2 + i)] @ text[i] for i in range(k))
    head = QualityHead([dim, hidden, 1], "relu", {"kind": "mos", "min": 0.0, "max": 5.0}, name="agiqa",
                       description=f"CLIP-AGIQA (Tang et al.): MLP over [embedding, {k} prompt features "
                                   f"({', '.join(words)})]; the text features are folded into the first bias")
    first, second = head.linears()
    first.load_state_dict({"weight": w1[:, :dim].clone(), "bias": folded_bias})
    second.load_state_dict({"weight": w2, "bias": b2})
    return Imported([head], preprocess={"resize_mode": "shortest"}, source=path)


IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


def import_agiqa_fu(path: Path, backbone) -> Imported:
    """CLIP-AGIQA (Fu et al.): deep visual prompts in the tower, "good/bad photo" prompts with learned context.

    The state dict holds the visual prompts (a 3-D tensor (layers, n, width) under a key
    ending in "prompt" or "prompts") and the text prompt learner's context (a key ending
    in "ctx"). quality = softmax(scale * emb @ [t_good, t_bad]^T)[good], in [0, 1]. Test
    time: no resize, 224 crops at stride 64, mean of the crop scores, ImageNet mean/std.
    """
    sd = _state_dict(path)
    prompts = [k for k, v in sd.items() if v.ndim == 3 and k.rstrip("s").endswith("prompt")]
    ctx = [k for k, v in sd.items() if k.endswith("ctx") and v.ndim == 2]
    if len(prompts) != 1 or len(ctx) != 1:
        raise CheckpointError(f"{path}: expected one deep visual prompt tensor (layers, n, width) under a key ending "
                              "in 'prompt(s)' and one learned text context under a key ending in 'ctx'; found "
                              f"{ {k: tuple(v.shape) for k, v in sd.items()} }")
    encoder = _text_encoder(backbone)
    text = encoder.encode_with_context(sd[ctx[0]].float(), ["good photo", "bad photo"])
    head = PromptQualityHead(text, encoder.logit_scale, name="agiqa",
                             description="CLIP-AGIQA (Fu et al.): softmax of learned-context 'good photo' vs "
                                         "'bad photo' similarity, deep visual prompts in the tower; score in [0, 1], "
                                         "averaged over sliding crops")
    return Imported([head], preprocess={"resize_mode": "none", "crop_mode": "sliding", "stride": 64,
                                        "mean": list(IMAGENET_MEAN), "std": list(IMAGENET_STD)},
                    source=path, visual_prompts=sd[prompts[0]].float())


def importer_name(fmt: str) -> str:
    """The importer function of a head format: import_<format, "-" as "_", "+" as "_plus">."""
    return "import_" + fmt.replace("-", "_").replace("+", "_plus")


# format -> its importer, for every format of choices.HEAD_FORMATS (a format without its function fails
# here, at import)
IMPORTERS = {name: globals()[importer_name(name)] for name in HEAD_FORMATS}


HEAD_NAME = re.compile(r"[A-Za-z][\w-]*")


def parse_named_head_arg(text: str) -> tuple[str | None, str, Path]:
    """"[NAME=]FORMAT:PATH" -> (name or None, format, path); a bare path is a clipscan heads file."""
    text = str(text)
    name, sep, rest = text.partition("=")
    if not sep or "/" in name or ":" in name or Path(text).exists():
        name = None                       # a plain [FORMAT:]PATH (a path may hold "=")
    elif HEAD_NAME.fullmatch(name):
        text = rest
    else:
        raise InvalidArgumentError(f"head name {name!r} is not a name: use letters, digits, _ and - (starting with a "
                                   "letter), as in --head fake_a=univfd:PATH")
    fmt, sep, rest = text.partition(":")
    if fmt in FILELESS_HEAD_FORMATS and not rest and not Path(text).exists():
        return name, fmt, None
    if sep and fmt in IMPORTERS:
        return name, fmt, Path(rest)
    if sep and re.fullmatch(r"[A-Za-z][\w-]*", fmt) and not Path(text).exists():
        raise InvalidArgumentError(f"unknown head format {fmt!r}; known formats: {sorted(IMPORTERS)} "
                                   "(use [NAME=]FORMAT:PATH)")
    return name, "clipscan", Path(text)


def parse_head_arg(text: str) -> tuple[str, Path]:
    """"[NAME=]FORMAT:PATH" -> (format, path)."""
    _, fmt, path = parse_named_head_arg(text)
    return fmt, path


def import_heads(items, backbone, resize_mode: str | None = None) -> Imported:
    """Read every head given as a path, "FORMAT:PATH" or an nn.Module; merge their preprocessing needs."""
    merged = Imported([])
    changes: list = []    # (item, its tower change): every head of one pass must agree
    for item in items:
        if isinstance(item, torch.nn.Module):
            got = Imported([item])
        else:
            name, fmt, path = parse_named_head_arg(item)
            got = IMPORTERS[fmt](path, backbone)
            if path is not None:
                merged.files.append((Path(path), got.heads))
            if name is not None:
                if len(got.heads) != 1:
                    raise InvalidArgumentError(f"--head {item}: a NAME= names one head, but {path} holds "
                                               f"{len(got.heads)} ({', '.join(h.name for h in got.heads)}); name them "
                                               "inside the heads file")
                got.heads[0].name = name
        for key, value in got.preprocess.items():
            if key == "resize_mode" and resize_mode is not None:
                if value != resize_mode and resize_mode != NATIVE:   # native: export.native_size decides
                    log.warning("head(s) %s were used by their authors with resize mode %r; --resize-mode %r runs "
                                "them on %r (verify measures the artifact against PyTorch with the same choice)",
                                [h.name for h in got.heads], value, resize_mode, resize_mode)
                continue
            if key in merged.preprocess and merged.preprocess[key] != value:
                raise InvalidArgumentError(
                    f"the heads need different preprocessing ({key}: {merged.preprocess[key]!r} vs {value!r}), so "
                    "they cannot share one backbone pass: export them as separate artifacts"
                    + (", or choose one recipe for all with --resize-mode" if key == "resize_mode" else ""))
            merged.preprocess[key] = value
        merged.heads.extend(got.heads)
        merged.source = merged.source or got.source
        if got.visual_prompts is not None:
            if merged.visual_prompts is not None:
                raise InvalidArgumentError("two heads bring their own deep visual prompts: export them as separate "
                                           "artifacts")
            if len(items) > 1:
                raise InvalidArgumentError("a head with deep visual prompts changes the backbone pass, so no other "
                                           "head can share it: export it as its own artifact")
            merged.visual_prompts = got.visual_prompts
        changes.append((item, got.tower_change))
    if len({change for _, change in changes}) > 1:
        odd = next(item for item, change in changes if change is not None)
        from .iqa import TOWER_CHANGES

        raise InvalidArgumentError(f"--head {odd} {TOWER_CHANGES[dict(changes)[odd]]}, and other heads need "
                                   "another pass, so they cannot share one backbone pass: export them as separate "
                                   "artifacts")
    merged.tower_change = changes[0][1] if changes else None
    if resize_mode is not None:
        merged.preprocess["resize_mode"] = resize_mode
    _distinct_names(merged.heads)
    _distinct_output_names(merged.heads)
    return merged


def _distinct_names(heads) -> None:
    """Head names are unique: a repeated one (two heads of one format, not named) gets _2, _3..."""
    seen: dict[str, int] = {}
    for head in heads:
        base = head.name
        if base in seen:
            n = seen[base] + 1
            while f"{base}_{n}" in seen:
                n += 1
            seen[base] = n
            head.name = f"{base}_{n}"
        seen.setdefault(head.name, 1)


def _distinct_output_names(heads) -> None:
    """Several heads of one task: the first keeps the plain names, the others get their name as prefix."""
    taken: set[str] = {"embedding"}
    for head in heads:
        names = list(head.output_names)
        if taken & set(names):
            names = [f"{head.name}_{n}" for n in names]
            if taken & set(names):
                raise InvalidArgumentError(f"heads {head.name!r} and another write the same outputs "
                                           f"{sorted(taken & set(names))}: give the heads distinct names")
            head.output_names = names
        taken |= set(names)
