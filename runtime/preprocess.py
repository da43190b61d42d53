"""Torch-free CLIP preprocessing: PIL for geometry, numpy for the tensor.

It reproduces open_clip's inference transform step by step, in the same order and
with the same integer arithmetic (torchvision's resize-size rounding, its centre
crop offsets and zero padding), so the tensor equals the reference on the same
decoded image. Images of more than 8 bits per sample are first brought to 8 bits
as the manifest's bit-depth policy says; RGB conversion happens right after
decoding (what training loaders do) or after the crop (open_clip's transform fed
an image in its decoded mode), as the manifest says.
"""
from __future__ import annotations

import numpy as np
from PIL import Image

from .errors import ImageReadError, InvalidArgumentError, ManifestError
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


def crop_box(width: int, height: int, crop_h: int, crop_w: int, offsets: str = "round") -> tuple[int, int, int, int]:
    """Box of torchvision's centre crop; negative offsets mean zero padding.

    Where the image is smaller than the crop it is padded by (crop - size) // 2 on
    the left/top first, exactly as torchvision's center_crop pads before cropping
    (and albumentations' PadIfNeeded). A larger side is cropped from round((size -
    crop) / 2) (torchvision), or from (size - crop) // 2 with `offsets` "floor"
    (albumentations' CenterCrop).
    """
    def start(size: int, crop: int) -> int:
        return (size - crop) // 2 if offsets == "floor" else int(round((size - crop) / 2.0))

    left = -((crop_w - width) // 2) if crop_w > width else start(width, crop_w)
    top = -((crop_h - height) // 2) if crop_h > height else start(height, crop_h)
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


_HIGH_BIT_MODES = ("I;16", "I;16L", "I;16B", "I;16N", "I", "F")


def to_8bit(img: Image.Image) -> Image.Image:
    """Rescale a 16-bit, 32-bit integer or float image to 8-bit grey ("L").

    16-bit values map to round(v / 257). A 32-bit integer image is read as 16-bit
    when any value exceeds 255, else as 8-bit. Float images whose values lie in
    [0, 1] are scaled by 255, others are taken as 0..255; NaN becomes 0.
    """
    if img.mode not in _HIGH_BIT_MODES:
        return img
    arr = np.asarray(img)
    if img.mode == "F":
        arr = np.nan_to_num(arr.astype(np.float64), nan=0.0, posinf=255.0, neginf=0.0)
        if arr.size and arr.min() >= 0.0 and arr.max() <= 1.0:
            arr = arr * 255.0
        out = np.clip(np.round(arr), 0, 255)
    else:
        arr = arr.astype(np.int64)
        if img.mode == "I" and (arr.size == 0 or arr.max() <= 255):
            out = np.clip(arr, 0, 255)
        else:
            out = (np.clip(arr, 0, 65535) * 255 + 32767) // 65535
    return Image.fromarray(out.astype(np.uint8), "L")


def window_starts(length: int, crop: int, stride: int, max_n: int) -> list[int]:
    """Offsets of sliding windows along one axis (the image is padded to `crop` when shorter)."""
    if length <= crop:
        return [0]
    span = length - crop
    starts = list(range(0, span + 1, stride))
    if starts[-1] != span:
        starts.append(span)  # one window flush with the far edge
    if len(starts) > max_n:
        starts = [int(round(span / 2))] if max_n == 1 else [int(round(i * span / (max_n - 1))) for i in range(max_n)]
    return starts


def _fill_value(img: Image.Image, fill: int):
    bands = len(img.getbands())
    return fill if bands == 1 else tuple([fill] * bands)


# A centre crop of a resize larger than this many pixels resizes only the source region the crop keeps. Up
# to it the resize is the full one, pixel for pixel the reference transform's (a 4x3000 strip resizes to
# 224x168000, 38 M pixels, about 110 MB for a moment); a 1x20000-pixel strip, whose full resize would be
# 224x4480000 pixels (about 100 s and 4 GB), takes the cropped path. There PIL computes the kept region's
# filter positions from the box, so a tall strip's pixels can differ by several levels from a full resize:
# such images are far outside anything a detector was trained on, and the alternative is no answer at all.
_RESIZE_PIXELS_MAX = 1 << 26


def _resize_crop(img: Image.Image, new_w: int, new_h: int, crop_h: int, crop_w: int, resample, fill: int,
                 offsets: str = "round"):
    """resize to (new_w, new_h) then the centre crop, computing only the kept pixels: PIL's resize of a
    source box centres each output pixel's filter where the full resize does, reading source pixels outside
    the box for the filter's support as the full resize does."""
    left, top, right, bottom = crop_box(new_w, new_h, crop_h, crop_w, offsets)
    x0, y0, x1, y1 = max(left, 0), max(top, 0), min(right, new_w), min(bottom, new_h)
    sx, sy = img.width / new_w, img.height / new_h
    part = img.resize((x1 - x0, y1 - y0), resample, box=(x0 * sx, y0 * sy, x1 * sx, y1 * sy))
    if (x0, y0, x1, y1) == (left, top, right, bottom):
        return part
    return _pad_crop(part, (left - x0, top - y0, right - x0, bottom - y0), fill)


class Preprocessor:
    """Turns decoded PIL images into model input arrays, as the manifest says."""

    def __init__(self, spec: PreprocessSpec, input_spec: InputSpec):
        self.spec = spec
        self.input = input_spec
        if spec.crop_mode in ("center", "sliding") and tuple(spec.crop_size) != tuple(input_spec.size):
            raise ManifestError(f"the manifest's crop size {spec.crop_size} differs from its model input size "
                                f"{input_spec.size}: the artifact is inconsistent; export it again")
        self._resample = _RESAMPLE[spec.interpolation]
        if input_spec.folded:
            self._mean = self._std = None
        else:
            self._mean = np.asarray(input_spec.mean, dtype=np.float32).reshape(3, 1, 1)
            self._std = np.asarray(input_spec.std, dtype=np.float32).reshape(3, 1, 1)

    def geometry(self, img: Image.Image) -> Image.Image:
        """Bit depth, resize and crop (or pad, for sliding crops) in the decoded mode, then RGB."""
        spec = self.spec
        if self.input.own_size is not None:
            self.check_own_size(img.width, img.height)
        if spec.bit_depth == "rescale":
            img = to_8bit(img)
        if spec.convert_when == "decode" and img.mode != "RGB":
            img = img.convert("RGB")
        new_w, new_h = resized_size(img.width, img.height, spec)
        crop_h, crop_w = spec.crop_size
        if spec.crop_mode == "center" and new_w * new_h > _RESIZE_PIXELS_MAX:
            img = _resize_crop(img, new_w, new_h, crop_h, crop_w, self._resample, spec.pad_fill, spec.crop_offsets)
        elif new_w * new_h > _RESIZE_PIXELS_MAX:   # sliding or no crop: every resized pixel would be used
            raise ImageReadError("too_large", f"this {img.width}x{img.height} image resized as the model's recipe "
                                 f"says ({spec.resize_mode} to {list(spec.resize_size)}) would be {new_w}x{new_h} "
                                 f"pixels, over the {_RESIZE_PIXELS_MAX} clipscan resizes to")
        elif (new_w, new_h) != img.size:
            img = img.resize((new_w, new_h), self._resample)
        if spec.crop_mode == "center" and img.size != (crop_w, crop_h):
            img = _pad_crop(img, crop_box(img.width, img.height, crop_h, crop_w, spec.crop_offsets), spec.pad_fill)
        elif spec.crop_mode == "sliding" and (img.width < crop_w or img.height < crop_h):
            # pad only the short axes, centred as CenterCrop pads; windows are cut later
            left = -((crop_w - img.width) // 2) if img.width < crop_w else 0
            top = -((crop_h - img.height) // 2) if img.height < crop_h else 0
            img = _pad_crop(img, (left, top, left + max(crop_w, img.width), top + max(crop_h, img.height)), spec.pad_fill)
        if img.mode != "RGB":
            img = img.convert("RGB")
        if self.input.own_size is None and spec.crop_mode != "sliding" and img.size != (self.input.size[1],
                                                                                          self.input.size[0]):
            raise ManifestError(f"preprocessing produced {img.width}x{img.height}, the model takes "
                                f"{self.input.size[1]}x{self.input.size[0]}: the manifest's resize/crop do not fit its "
                                "input; export the artifact again")
        return img

    def check_own_size(self, width: int, height: int) -> None:
        """An image the graph takes at its own size (input.own_size) within the bounds the artifact records."""
        own = self.input.own_size
        if min(width, height) < own.min_side:
            raise ImageReadError("too_small", f"this {width}x{height} image has a side under {own.min_side} pixels, "
                                 "the smallest this model takes (it scores each image at its own size, without "
                                 "resizing: input.own_size.min_side)")
        if width * height > own.max_pixels:
            raise ImageReadError("too_large", f"this {width}x{height} image has {width * height} pixels, over the "
                                 f"{own.max_pixels} this model is fed whole (it scores each image at its own size: "
                                 f"input.own_size.max_pixels; re-export with a larger --max-input-pixels to score it)")

    def _tensor(self, rgb_hwc: np.ndarray) -> np.ndarray:
        """HWC uint8 -> CHW in the input dtype: ToTensor then Normalize, in float32 as torchvision does."""
        chw = rgb_hwc.transpose(2, 0, 1)
        if self.input.folded:  # the graph normalises: it takes 0..255 pixel values
            return np.ascontiguousarray(chw, dtype=self.input.dtype)
        x = chw.astype(np.float32) / np.float32(255.0)
        return (x - self._mean) / self._std

    def windows(self, width: int, height: int) -> list[tuple[int, int]]:
        """(left, top) of every crop of a geometry()-output image of this size."""
        if self.spec.crop_mode != "sliding":
            return [(0, 0)]
        crop_h, crop_w = self.spec.crop_size
        s = self.spec
        return [(x, y) for y in window_starts(height, crop_h, s.stride, s.max_per_axis)
                for x in window_starts(width, crop_w, s.stride, s.max_per_axis)]

    def batch(self, img: Image.Image) -> np.ndarray:
        """All crops of one image, (K, 3, H, W); K = 1 unless the recipe uses sliding crops."""
        x = self._tensor(np.asarray(self.geometry(img), dtype=np.uint8))
        if self.input.own_size is not None:
            return x[None]
        crop_h, crop_w = self.input.size
        crops = [x[:, top:top + crop_h, left:left + crop_w] for left, top in self.windows(x.shape[2], x.shape[1])]
        return np.ascontiguousarray(np.stack(crops))

    def __call__(self, img: Image.Image) -> np.ndarray:
        """One CHW array (single-crop recipes)."""
        if self.spec.crop_mode == "sliding":
            raise InvalidArgumentError("this recipe cuts several sliding crops per image: use Preprocessor.batch()")
        return self.batch(img)[0]
