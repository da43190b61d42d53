"""Importers of the IQA-PyTorch quality scorers (export.iqa holds their prompts and heads)."""
from __future__ import annotations

from pathlib import Path

from clipscan.runtime.errors import InputNotFoundError, InvalidArgumentError

from .deps import load_torch_file
from .imported import Imported, text_encoder


def _iqa_encoder(backbone, weights=None):
    """The text tower of the backbone's checkpoint (or of `weights`), for the IQA-PyTorch scorers."""
    from .text import load_text_encoder

    if weights is None:
        return text_encoder(backbone)
    return load_text_encoder(backbone.arch, weights, quick_gelu=backbone.activation == "quick_gelu")


def import_clip_iqa(path: Path | None, backbone) -> Imported:
    """CLIP-IQA as IQA-PyTorch (pyiqa `clipiqa`) defines it: prompt pairs over the checkpoint's own CLIP, no file.

    `--head clip-iqa`. The prompts "Good image"/"bad image", "Sharp image"/"blurry image", "sharp
    edges"/"blurry edges", "High resolution image"/"low resolution image", "Noise-free image"/"noisy
    image" are encoded with the checkpoint's text tower; reads the projected embedding: quality =
    mean over the pairs of softmax(logit_scale x cosine(embedding, prompts))[good], in [0, 1]. As
    pyiqa's CLIP with pos_embedding=False, the tower adds no positional embedding (a ViT's, or the
    attention pool's of pyiqa's default RN50: --arch RN50-quickgelu). Preprocessing: short side to
    the input size bicubic, centre crop, CLIP mean/std (pyiqa runs the image at its own size).
    """
    from .iqa import IQA_PREPROCESS, NO_POSITIONAL_EMBEDDING, clipiqa_head

    if path is not None:
        raise InvalidArgumentError(f"--head clip-iqa reads no file (its prompts are fixed), but {path} was given: "
                                   "write --head clip-iqa")
    return Imported([clipiqa_head(_iqa_encoder(backbone))], preprocess=dict(IQA_PREPROCESS),
                    tower_change=NO_POSITIONAL_EMBEDDING)


def import_clip_iqa_plus(path: Path, backbone) -> Imported:
    """CLIP-IQA+ as IQA-PyTorch (pyiqa `clipiqa+`, `clipiqa+_rn50_512`, `clipiqa+_vitL14_512`) defines it.

    The file is pyiqa's: the bare context tensor [2, 16, text width] (CLIP-IQA+_learned_prompts, used
    on RN50 without positional embedding) or {"params": {"prompt_learner.ctx", ".token_prefix",
    ".token_suffix"}} (the _512 files, RN50 or ViT-L/14, used with it). "X x 16 Good photo.." and
    "... Bad photo.." are encoded with the learned context around the class words, as pyiqa's
    PromptLearner does; quality = softmax(logit_scale x cosine(projected embedding, prompts))[good],
    in [0, 1]. Preprocessing as clip-iqa's, at the tower's size for the bare context; a _512 file runs a
    512x384 input (wide x high: KonIQ-10k's frame, which pyiqa trains and validates them on) with the tower's
    positional embedding resized bicubically to that input's token count, as pyiqa does; with --resize-mode
    native, each image at its own size, the embedding resized in the graph to its token count.
    """
    from .iqa import (CLIPIQA_PLUS_512_INPUT, IQA_PREPROCESS, NO_POSITIONAL_EMBEDDING, RESAMPLED_POSITIONAL_EMBEDDING,
                      clipiqa_plus_head)

    if not path.is_file():
        raise InputNotFoundError(f"CLIP-IQA+ prompt file {path} does not exist; pass pyiqa's learned-prompt .pth")
    head, pos = clipiqa_plus_head(_iqa_encoder(backbone), load_torch_file(path, "CLIP-IQA+ prompt file"), path)
    if not pos:
        return Imported([head], preprocess=dict(IQA_PREPROCESS), source=path, tower_change=NO_POSITIONAL_EMBEDDING)
    return Imported([head], preprocess={**IQA_PREPROCESS, "size": list(CLIPIQA_PLUS_512_INPUT)}, source=path,
                    tower_change=RESAMPLED_POSITIONAL_EMBEDDING)


def _liqe(path: Path, backbone, mix: bool) -> Imported:
    from .iqa import IQA_PREPROCESS, VIEW_CROPS, liqe_head
    from .view_crops import LIQE_CROPS

    if not path.is_file():
        raise InputNotFoundError(f"LIQE checkpoint {path} does not exist; pass pyiqa's liqe_*.pt (also as --weights)")
    encoder = _iqa_encoder(backbone, path)   # first: a file that is not plain tensors is refused as such
    if Path(backbone.weights_path).resolve() != path.resolve():
        raise InvalidArgumentError(f"{path} is LIQE's whole fine-tuned CLIP, but --weights is {backbone.weights_path}: "
                                   f"give the same file to both (--weights {path} --arch ViT-B-32-quickgelu)")
    crops = LIQE_CROPS
    if tuple(backbone.image_size) != (crops.tile, crops.tile):
        raise InvalidArgumentError(f"LIQE scores {crops.tile}x{crops.tile} crops, but this tower takes "
                                   f"{list(backbone.image_size)}: export it on pyiqa's ViT-B/32 (--arch "
                                   "ViT-B-32-quickgelu)")
    # the runtime hands the graph the whole crops input: short side covering it, centre crop, crops cut in the graph
    pre = {**IQA_PREPROCESS, "size": list(crops.input_size), "graph_crops": crops.manifest()}
    return Imported([liqe_head(encoder, mix, crops)], preprocess=pre, source=path, tower_change=VIEW_CROPS)


def import_liqe(path: Path, backbone) -> Imported:
    """LIQE (Zhang et al. 2023) as IQA-PyTorch (pyiqa `liqe`) defines it: a fine-tuned CLIP ViT-B/32 and 5 prompts.

    pyiqa's liqe_koniq.pt ({"params": {"clip_model.*"}}, the whole CLIP in OpenAI's layout) is both
    the tower and the text side: give it to --weights (--arch ViT-B-32-quickgelu) and to --head
    liqe:FILE. The prompts "a photo with {bad, poor, fair, good, perfect} quality" are encoded with
    its text tower; quality = sum of level (1-5) x softmax(logit_scale x cosine(projected embedding,
    prompts)), named liqe on a 1-5 MOS scale. The input is 1024x768 (wide x high; the image
    scaled bicubic to cover it, centre crop); the graph cuts pyiqa's 15 evenly spaced 224 crops at
    stride 32 from it and averages their logits, as pyiqa does on an image of that size. Other heads
    cannot share its pass (export them as separate artifacts).
    """
    return _liqe(path, backbone, mix=False)


def import_liqe_mix(path: Path, backbone) -> Imported:
    """LIQE trained on the mix of datasets (pyiqa `liqe_mix`): 495 quality x scene x distortion prompts.

    As liqe, with liqe_mix.pt and the prompts "a photo of a {scene} with {distortion} artifacts,
    which is of {quality} quality" (9 scenes, 11 distortions, 5 levels); the probability of a
    level is the sum over its 99 prompts.
    """
    return _liqe(path, backbone, mix=True)
