"""The reference side of `clipscan verify` and the benchmark: the PyTorch model's input, built apart from
the runtime's preprocessing.

Decoding is shared on purpose (both sides must see the same decoded pixels, so the runtime's decoder
and its bit-depth policy are used); everything after it, resize, crop, sliding windows and
normalisation, is rebuilt by `ReferenceTransform` from the manifest's recipe with open_clip and
torchvision, not with the runtime's code, so a preprocessing bug in the runtime shows up as a pixel
error instead of being copied into the reference. `LAUNDERINGS` are the robustness variants (JPEG, blur,
downscale + JPEG) applied to a decoded image before both sides see it.

Needs `clipscan[export]` (torch, open_clip, torchvision).
"""
from __future__ import annotations

import io
import math
from contextlib import contextmanager
from typing import Callable

import numpy as np
from PIL import Image, ImageFilter

from clipscan.export.deps import require
from clipscan.runtime.decode import load_image
from clipscan.runtime.errors import ManifestError
from clipscan.runtime.preprocess import to_8bit

torch = require("torch", "clipscan verify")


# -- laundering ---------------------------------------------------------------------------------

def _jpeg(img: Image.Image, quality: int) -> Image.Image:
    buf = io.BytesIO()
    img.save(buf, "JPEG", quality=quality)
    return load_image(buf.getvalue())  # the runtime's decoder, as a scan would read the file


def _rgb8(img: Image.Image) -> Image.Image:
    img = to_8bit(img)
    return img if img.mode == "RGB" else img.convert("RGB")


def _downscale_jpeg(img: Image.Image) -> Image.Image:
    small = img.resize((max(1, img.width // 2), max(1, img.height // 2)), Image.Resampling.BICUBIC)
    return _jpeg(small, 85)


LAUNDERINGS: dict[str, tuple[str, Callable[[Image.Image], Image.Image]]] = {
    "jpeg75": ("JPEG quality 75", lambda im: _jpeg(_rgb8(im), 75)),
    "blur1": ("Gaussian blur, radius 1", lambda im: _rgb8(im).filter(ImageFilter.GaussianBlur(1))),
    "down0.5_jpeg85": ("downscale to 0.5 (bicubic), then JPEG quality 85", lambda im: _downscale_jpeg(_rgb8(im))),
}


@contextmanager
def _one_torch_thread():
    before = torch.get_num_threads()
    if before == 1:
        yield
        return
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


# -- the reference transform ----------------------------------------------------------------

def _floor_center_crop(img, size, fill: int):
    """albumentations' PadIfNeeded + CenterCrop with torchvision's functions: zero padding centred as
    torchvision pads, then the crop from (side - crop) // 2."""
    import torchvision.transforms.functional as TF

    crop_h, crop_w = size
    w, h = img.size
    pad = [max(crop_w - w, 0) // 2, max(crop_h - h, 0) // 2, (max(crop_w - w, 0) + 1) // 2,
           (max(crop_h - h, 0) + 1) // 2]
    if any(pad):
        img = TF.pad(img, pad, fill=fill)
        w, h = img.size
    return TF.crop(img, (h - crop_h) // 2, (w - crop_w) // 2, crop_h, crop_w)


class ReferenceTransform:
    """The manifest's recipe rebuilt with open_clip / torchvision (not the runtime's code).

    `__call__(img)` gives the reference model input (K, 3, H, W) float32 (normalised), and
    `pixel_error(runtime, reference)` the max difference in 0..255 pixel units. For a folded
    (uint8) input the raw 0..255 pixels are compared.
    """

    def __init__(self, manifest):
        import open_clip
        import torchvision.transforms as T

        self.spec = spec = manifest.preprocess
        self.input = inp = manifest.input
        if inp.folded:
            norm = manifest.backbone.get("normalization_folded") or {}
            if "mean" not in norm or "std" not in norm:
                raise ManifestError("the manifest's input is folded uint8 but backbone.normalization_folded "
                                    "gives no mean/std: cannot build the reference input; export the artifact again")
            self.mean, self.std = tuple(norm["mean"]), tuple(norm["std"])
        else:
            self.mean, self.std = tuple(inp.mean), tuple(inp.std)
        self._std = np.asarray(self.std, np.float32).reshape(1, 3, 1, 1)
        self.available = True
        self.note = ""
        h, w = spec.resize_size
        to_rgb = T.Lambda(lambda im: im if im.mode == "RGB" else im.convert("RGB"))
        self._resize = None
        if spec.resize_mode != "none" and spec.interpolation not in ("bicubic", "bilinear"):
            self.available = False
            self.note = (f"open_clip's transform has no {spec.interpolation!r} interpolation: the reference model "
                         "is fed the runtime's tensor and preprocessing parity is not checked")
            return
        if spec.crop_offsets != "round" and not (spec.resize_mode == "none" and spec.crop_mode == "center"):
            self.available = False
            self.note = (f"the reference transform has no {spec.crop_offsets!r} crop offsets after a resize: the "
                         "reference model is fed the runtime's tensor and preprocessing parity is not checked")
            return
        if spec.resize_mode == "none":
            steps = [T.CenterCrop(spec.crop_size)] if spec.crop_mode == "center" else []
            if steps and spec.crop_offsets == "floor":
                steps = [T.Lambda(lambda im: _floor_center_crop(im, spec.crop_size, spec.pad_fill))]
            self.describe = ("torchvision CenterCrop" + (" (offsets rounded down)" if spec.crop_offsets == "floor"
                                                         else "") if steps else "no resize, no crop")
            self._tf = T.Compose(steps + [to_rgb, T.ToTensor()])
        else:
            size = h if spec.resize_mode == "shortest" and h == w else (h, w)
            oc = open_clip.image_transform(size, is_train=False, mean=(0.0, 0.0, 0.0), std=(1.0, 1.0, 1.0),
                                           resize_mode=spec.resize_mode, interpolation=spec.interpolation,
                                           fill_color=spec.pad_fill)
            self.describe = f"open_clip.image_transform(resize_mode={spec.resize_mode!r}, interpolation={spec.interpolation!r})"
            if spec.crop_mode == "sliding":
                self._resize = oc.transforms[0]  # the resize step only; windows are cut below
                self._tf = None
            else:
                self._tf = oc
        if spec.crop_mode == "sliding":
            self.describe += f" + sliding {spec.crop_size} windows at stride {spec.stride} (torch)"
        self.describe += (", raw 0..255 pixels (folded input)" if inp.folded
                          else ", ToTensor + Normalize(manifest mean/std)")

    def _decoded(self, img: Image.Image) -> Image.Image:
        if self.spec.bit_depth == "rescale":
            img = to_8bit(img)
        if self.spec.convert_when == "decode" and img.mode != "RGB":
            img = img.convert("RGB")
        return img

    def _sliding(self, img: Image.Image):
        """Every crop-sized window (torch slicing of the ToTensor image), as the manifest's sliding recipe says."""
        import torchvision.transforms.functional as TF

        if self._resize is not None:
            img = self._resize(img)
        crop_h, crop_w = self.spec.crop_size
        w, h = img.size
        pad = [(crop_w - w) // 2 if w < crop_w else 0, (crop_h - h) // 2 if h < crop_h else 0,
               (crop_w - w + 1) // 2 if w < crop_w else 0, (crop_h - h + 1) // 2 if h < crop_h else 0]
        if any(pad):
            img = TF.pad(img, pad, fill=self.spec.pad_fill)
        x = TF.to_tensor(img if img.mode == "RGB" else img.convert("RGB"))
        s = self.spec
        ys = _window_offsets(x.shape[1], crop_h, s.stride, s.max_per_axis)
        xs = _window_offsets(x.shape[2], crop_w, s.stride, s.max_per_axis)
        return torch.stack([x[:, y:y + crop_h, left:left + crop_w] for y in ys for left in xs])

    def unit_pixels(self, img: Image.Image):
        """(K, 3, H, W) in [0, 1], as torchvision's ToTensor gives them."""
        img = self._decoded(img)
        if self.spec.crop_mode == "sliding":
            return self._sliding(img)
        return self._tf(img).unsqueeze(0)

    def __call__(self, img: Image.Image) -> tuple[np.ndarray, np.ndarray]:
        """(model input normalised float32, raw pixels in 0..255 float32)."""
        import torchvision.transforms.functional as TF

        with _one_torch_thread():  # per-image tensor ops: thread start-up costs more than it saves
            x01 = self.unit_pixels(img)
            normalised = TF.normalize(x01, self.mean, self.std)
            return normalised.numpy(), (x01 * 255.0).numpy()

    def pixel_error(self, runtime: np.ndarray, normalised: np.ndarray, raw: np.ndarray) -> float:
        if runtime.shape != normalised.shape:
            return math.inf
        if self.input.folded:
            return float(np.abs(runtime.astype(np.float32) - raw).max())
        return float((np.abs(runtime.astype(np.float32) - normalised) * self._std * 255.0).max())

    def from_runtime(self, runtime: np.ndarray) -> np.ndarray:
        """Reference input from the runtime's tensor (when no independent transform exists)."""
        if self.input.folded:
            mean = np.asarray(self.mean, np.float32).reshape(1, 3, 1, 1)
            return (runtime.astype(np.float32) / np.float32(255.0) - mean) / self._std
        return runtime.astype(np.float32)


def _window_offsets(length: int, crop: int, stride: int, max_n: int) -> list[int]:
    """The documented sliding rule, written here independently: windows every `stride` pixels plus one
    flush with the far edge; more than `max_n` become `max_n` evenly spaced ones (np.round, half to even)."""
    span = length - crop
    if span <= 0:
        return [0]
    offsets = sorted(set(range(0, span + 1, stride)) | {span})
    if len(offsets) <= max_n:
        return offsets
    if max_n == 1:
        return [int(np.round(span / 2))]
    return [int(v) for v in np.round(np.linspace(0, span, max_n))]
