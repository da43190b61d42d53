"""The model input's size: how the preprocessing fits it (`fits`), and `input.own_size`, an artifact whose
graph takes each image at its own height and width.

Written by `clipscan export --resize-mode native` (export.native_size: CLIP-IQA, CLIP-IQA+ and LIQE as
IQA-PyTorch runs them; the `_512` CLIP-IQA+ files with the tower's positional embedding resampled in
the graph to each image's token count). The preprocessing is then "no resize,
no crop, normalise" (resize "none", crop "none"); the manifest's `input.size` is only the size export
traced and checked the graph at. An image with a side under `min_side` (the tower's smallest input:
one patch, or what a ResNet stem needs to keep one cell) or more than `max_pixels` pixels gets a
per-item error (runtime.preprocess); images of one size share a batch, others run apart (Scanner).
"""
from __future__ import annotations

from dataclasses import dataclass

from .errors import ManifestError
from .graph_crops import parse_graph_crops
from .manifest_checks import MANIFEST_LIMITS, bounded, limit, need

NATIVE = "native"   # the --resize-mode value that writes an own-size artifact
NATIVE_HELP = ("no resize and no crop: the graph takes each image at its own size (dynamic height and width, "
               "bounded by input.own_size), as IQA-PyTorch runs clip-iqa, clip-iqa+ (the _512 files with the "
               "positional embedding resampled to each image's tokens) and liqe (its crops picked from each image's "
               "own size)")
# input.own_size.max_pixels written by export unless --max-input-pixels says otherwise: 2048 x 2048
OWN_SIZE_MAX_PIXELS = 1 << 22


@dataclass(frozen=True)
class OwnSize:
    """The bounds of an image the graph takes at its own size."""
    min_side: int      # the tower's smallest input side
    max_pixels: int    # height x width of the largest image the graph is fed

    def to_dict(self) -> dict:
        return {"min_side": self.min_side, "max_pixels": self.max_pixels}

    @classmethod
    def from_dict(cls, d) -> "OwnSize":
        w = "input.own_size"
        min_side = bounded(need(d, "min_side", w, int), f"{w}.min_side", "image_side")
        max_pixels = bounded(need(d, "max_pixels", w, int), f"{w}.max_pixels", "pixels_per_image", min_side * min_side)
        return cls(min_side, max_pixels)

    def describe(self) -> str:
        return f"sides >= {self.min_side}, at most {self.max_pixels} pixels"


def own_size_recipe(input_spec, pre) -> None:
    """An own-size input is fed the decoded image itself: no resize, no crop (crops the graph picks from each
    image's own size, graph_crops with a count, are the graph's business)."""
    if pre.resize_mode != "none" or pre.crop_mode != "none":
        raise ManifestError(f"manifest field 'input.own_size' says the graph takes each image at its own size, "
                            f"but the preprocessing resizes ({pre.resize_mode!r}) or crops ({pre.crop_mode!r}); an "
                            "own-size input needs resize 'none' and crop 'none': re-export with --resize-mode native")
    if pre.graph_crops is not None:
        parse_graph_crops(pre.graph_crops, input_spec.size, input_spec.own_size)


def fits(input_spec, pre) -> None:
    """The crop is the model input, and what one image becomes stays within the pixels_per_image limit."""
    if input_spec.own_size is not None:
        return own_size_recipe(input_spec, pre)
    if pre.crop_mode == "none" and (pre.resize_mode != "squash" or pre.resize_size != input_spec.size):
        raise ManifestError(f"manifest field 'preprocess.crop.mode' is 'none' with resize {pre.resize_mode!r} to "
                            f"{list(pre.resize_size)}; without a crop only a 'squash' resize to 'input.size' "
                            f"{list(input_spec.size)} gives every image the size the model takes")
    if pre.crop_mode != "none" and pre.crop_size != input_spec.size:
        raise ManifestError(f"manifest field 'preprocess.crop.size' is {list(pre.crop_size)} but 'input.size' is "
                            f"{list(input_spec.size)}; the crop is what the model takes, so they must be equal")
    if pre.graph_crops is not None:   # checked against the input it is cut from
        parse_graph_crops(pre.graph_crops, input_spec.size)
    windows = pre.max_per_axis ** 2 if pre.crop_mode == "sliding" else 1
    pixels = input_spec.size[0] * input_spec.size[1] * windows
    if pixels > limit("pixels_per_image"):
        raise ManifestError(f"manifest fields 'input.size' {list(input_spec.size)} x {windows} crop(s) per image make "
                            f"{pixels} model pixels per image, over clipscan's limit of {limit('pixels_per_image')} "
                            f"({MANIFEST_LIMITS['pixels_per_image'].applies_to}); re-export the model within it")
