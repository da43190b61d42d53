"""Test-time preprocessing of a Hugging Face CLIP checkpoint, read from its preprocessor_config.json.

The parameters of transformers' CLIPImageProcessor become clipscan's preprocess cfg; anything the
manifest cannot express exactly (a resize that does not land on the crop, a crop that is not the
tower's input size, another rescale factor) is refused rather than approximated.
"""
from __future__ import annotations

from clipscan.runtime.errors import CheckpointError
from clipscan.runtime.manifest import INTERPOLATIONS, OPENAI_CLIP_MEAN, OPENAI_CLIP_STD

PIL_RESAMPLE = {0: "nearest", 1: "lanczos", 2: "bilinear", 3: "bicubic", 4: "box", 5: "hamming"}


class HFCheckpointError(CheckpointError):
    """A Hugging Face CLIP checkpoint clipscan cannot read as given (files, config or tensors)."""


def _size_pair(value, what: str, source) -> tuple[int, int] | None:
    if isinstance(value, int):
        return value, value
    if isinstance(value, dict) and "height" in value and "width" in value:
        return int(value["height"]), int(value["width"])
    if isinstance(value, dict) and "shortest_edge" in value:
        return None
    raise HFCheckpointError(f"{source}: {what} {value!r} is not a size clipscan reads (an int, "
                            "{'shortest_edge': N} or {'height': H, 'width': W})")


def hf_preprocess(pp: dict, image_size: tuple[int, int], source) -> dict:
    """open_clip-style preprocess cfg (mean, std, interpolation, resize_mode) from a preprocessor_config."""
    out = {"mean": list(pp.get("image_mean", OPENAI_CLIP_MEAN)), "std": list(pp.get("image_std", OPENAI_CLIP_STD)),
           "fill_color": 0}
    if not pp.get("do_normalize", True):
        out["mean"], out["std"] = [0.0] * 3, [1.0] * 3
    if pp.get("do_rescale", True) is False or abs(float(pp.get("rescale_factor", 1 / 255)) - 1 / 255) > 1e-9:
        raise HFCheckpointError(f"{source}: pixels must be scaled by 1/255 (do_rescale true, rescale_factor "
                                f"1/255); found do_rescale {pp.get('do_rescale')}, "
                                f"rescale_factor {pp.get('rescale_factor')}")
    resample = pp.get("resample", 3)
    if resample not in PIL_RESAMPLE or PIL_RESAMPLE[resample] not in INTERPOLATIONS:
        raise HFCheckpointError(f"{source}: resample {resample!r} is not one of {sorted(PIL_RESAMPLE)} (PIL's codes)")
    out["interpolation"] = PIL_RESAMPLE[resample]
    crop = pp.get("crop_size", 224) if pp.get("do_center_crop", True) else None
    crop = _size_pair(crop, "crop_size", source) if crop is not None else None
    if crop is not None and tuple(crop) != tuple(image_size):
        raise HFCheckpointError(f"{source}: crop_size {crop} differs from the tower's image_size {image_size}")
    size = pp.get("size", {"shortest_edge": 224})
    if not pp.get("do_resize", True):
        out["resize_mode"] = "none"
    elif isinstance(size, dict) and "shortest_edge" in size:
        if crop is None or int(size["shortest_edge"]) != image_size[0]:
            raise HFCheckpointError(f"{source}: resize shortest_edge {size['shortest_edge']} then crop {crop}: "
                                    "clipscan "
                                    f"resizes the short side to the crop size {image_size[0]} and crops it")
        out["resize_mode"] = "shortest"
    else:
        pair = _size_pair(size, "size", source)
        if tuple(pair) != tuple(image_size):
            raise HFCheckpointError(f"{source}: resize to {pair} differs from the tower's image_size {image_size}")
        out["resize_mode"] = "squash"
    if out["resize_mode"] == "none" and crop is None:
        raise HFCheckpointError(f"{source}: neither resize nor centre crop: images of other sizes would not fit "
                                f"the tower's {image_size} input")
    return out
