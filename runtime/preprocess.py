"""Torch-free CLIP preprocessing: PIL for geometry, numpy for the tensor.

It reproduces open_clip's inference transform step by step, in the same order and
with the same integer arithmetic (torchvision's resize-size rounding, its centre
crop offsets and zero padding), so the tensor equals the reference on the same
decoded image. Geometry runs on the image in its decoded mode (as torchvision
does), RGB conversion comes after the crop.
"""
from __future__ import annotations

import numpy as np
from PIL import Image

from .manifest import InputSpec, PreprocessSpec

_RESAMPLE = {
    "nearest": Image.Resampling.NEAREST,
    "bilinear": Image.Resampling.BILINEAR,
    "bicubic": Image.Resampling.BICUBIC,
    "lanczos": Image.Resampling.LANCZOS,
    "box": Image.Resampling.BOX,
    "hamming": Image.Resampling.HAMMING,
}


def resized_size(width: int, height: int, spec: PreprocessSpec) -> tuple[int, int]:
    """Output (width, height) of the resize step, with the reference's rounding."""
    target_h, target_w = spec.resize_size
    mode = spec.resize_mode
    if mode == "none":
        return width, height
    if mode == "squash":
        return target_w, target_h
    if mode == "shortest" and target_h == target_w:
        # torchvision Resize(int): short side to size, long side truncated (int()).
        short, long = (width, height) if width <= height else (height, width)
        new_short, new_long = target_h, int(target_h * long / short)
        return (new_short, new_long) if width <= height else (new_long, new_short)
    # open_clip ResizeKeepRatio: one ratio for both sides, Python round().
    ratio_h, ratio_w = height / target_h, width / target_w
    longest = 1.0 if mode == "longest" else 0.0
    ratio = max(ratio_h, ratio_w) * longest + min(ratio_h, ratio_w) * (1.0 - longest)
    return round(width / ratio), round(height / ratio)


def crop_box(width: int, height: int, crop_h: int, crop_w: int) -> tuple[int, int, int, int]:
    """Box of torchvision's centre crop; negative offsets mean zero padding.

    Where the image is smaller than the crop it is padded by (crop - size) // 2 on
    the left/top first, exactly as torchvision's center_crop pads before cropping.
    """
    if crop_w > width:
        left = -((crop_w - width) // 2)
    else:
        left = int(round((width - crop_w) / 2.0))
    if crop_h > height:
        top = -((crop_h - height) // 2)
    else:
        top = int(round((height - crop_h) / 2.0))
    return left, top, left + crop_w, top + crop_h


def _pad_crop(img: Image.Image, box: tuple[int, int, int, int], fill: int) -> Image.Image:
    left, top, right, bottom = box
    if left >= 0 and top >= 0 and right <= img.width and bottom <= img.height:
        return img.crop(box)
    # PIL's crop fills outside pixels with 0 in the image's own mode (palette index 0
    # for "P"), which is what torchvision's pad(fill=0) does too.
    out = img.crop(box)
    if fill:
        canvas = Image.new(img.mode, out.size, _fill_value(img, fill))
        if img.mode == "P":
            canvas.putpalette(img.getpalette())
        canvas.paste(img, (-left, -top))
        out = canvas
    return out


def _fill_value(img: Image.Image, fill: int):
    bands = len(img.getbands())
    return fill if bands == 1 else tuple([fill] * bands)


class Preprocessor:
    """Turns decoded PIL images into model input arrays, as the manifest says."""

    def __init__(self, spec: PreprocessSpec, input_spec: InputSpec):
        self.spec = spec
        self.input = input_spec
        if spec.crop_mode == "center" and tuple(spec.crop_size) != tuple(input_spec.size):
            raise ValueError(f"crop size {spec.crop_size} differs from the model input size {input_spec.size}")
        self._resample = _RESAMPLE[spec.interpolation]
        if input_spec.folded:
            self._mean = self._std = None
        else:
            self._mean = np.asarray(input_spec.mean, dtype=np.float32).reshape(3, 1, 1)
            self._std = np.asarray(input_spec.std, dtype=np.float32).reshape(3, 1, 1)

    def geometry(self, img: Image.Image) -> Image.Image:
        """Resize and crop, in the decoded mode, then convert to RGB."""
        spec = self.spec
        new_w, new_h = resized_size(img.width, img.height, spec)
        if (new_w, new_h) != img.size:
            img = img.resize((new_w, new_h), self._resample)
        if spec.crop_mode == "center":
            crop_h, crop_w = spec.crop_size
            if img.size != (crop_w, crop_h):
                img = _pad_crop(img, crop_box(img.width, img.height, crop_h, crop_w), spec.pad_fill)
        if img.mode != "RGB":
            img = img.convert("RGB")
        if img.size != (self.input.size[1], self.input.size[0]):
            raise ValueError(f"preprocessing produced {img.width}x{img.height}, the model takes "
                             f"{self.input.size[1]}x{self.input.size[0]}: the manifest's resize/crop do not fit its input")
        return img

    def __call__(self, img: Image.Image) -> np.ndarray:
        """One CHW array in the model's input dtype."""
        rgb = np.asarray(self.geometry(img), dtype=np.uint8).transpose(2, 0, 1)
        if self.input.folded:  # the graph normalises: it takes 0..255 pixel values
            return np.ascontiguousarray(rgb, dtype=self.input.dtype)
        # ToTensor then Normalize, in float32 as torchvision computes them
        x = rgb.astype(np.float32) / np.float32(255.0)
        x = (x - self._mean) / self._std
        return np.ascontiguousarray(x, dtype=np.float32)
