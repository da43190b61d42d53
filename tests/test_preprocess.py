"""The torch-free preprocessing equals open_clip's inference transform on the same PIL image."""
from __future__ import annotations

import numpy as np
import open_clip
import pytest
from PIL import Image

from clipscan.runtime.manifest import InputSpec, PreprocessSpec
from clipscan.runtime.preprocess import Preprocessor

from .conftest import photo_images

MEAN, STD = (0.48145466, 0.4578275, 0.40821073), (0.26862954, 0.26130258, 0.27577711)


def base() -> Image.Image:
    return photo_images()[0][1]  # astronaut, 512x512 RGB


def odd_images():
    rgb = base()
    wide = rgb.resize((900, 120))
    yield "rgb", rgb
    yield "smaller_than_crop", rgb.resize((50, 37))
    yield "tiny_1x1", rgb.resize((1, 1))
    yield "extreme_wide", rgb.resize((2000, 31))
    yield "extreme_tall", rgb.resize((17, 1500))
    yield "odd_sizes", rgb.resize((225, 333))
    yield "gray_L", wide.convert("L")
    yield "rgba", _with_alpha(wide)
    yield "palette_P", wide.convert("P", palette=Image.Palette.ADAPTIVE, colors=64)
    yield "small_palette_P", rgb.resize((60, 90)).convert("P", palette=Image.Palette.ADAPTIVE, colors=16)
    yield "LA", _with_alpha(wide).convert("LA")
    yield "CMYK", wide.convert("CMYK")
    yield "1bit", wide.convert("1")
    yield "I16", Image.fromarray((np.asarray(wide.convert("L"), np.uint16) * 257)).convert("I;16")


def _with_alpha(img):
    rgba = img.convert("RGBA")
    alpha = Image.linear_gradient("L").resize(img.size)
    rgba.putalpha(alpha)
    return rgba


def make(resize_mode: str, size=(224, 224), fill=0):
    spec = PreprocessSpec(resize_mode=resize_mode, resize_size=size, crop_mode="none" if resize_mode == "squash" else "center",
                          crop_size=size, pad_fill=fill)
    ours = Preprocessor(spec, InputSpec("pixels", size, mean=MEAN, std=STD))
    ref = open_clip.image_transform(size if resize_mode != "shortest" or size[0] != size[1] else size[0],
                                    is_train=False, mean=MEAN, std=STD, resize_mode=resize_mode, fill_color=fill)
    return ours, ref


@pytest.mark.parametrize("resize_mode", ["shortest", "longest", "squash"])
def test_parity_with_open_clip_on_odd_images(resize_mode):
    ours, ref = make(resize_mode)
    std = np.asarray(STD, np.float32).reshape(3, 1, 1)
    for name, img in odd_images():
        try:
            expected = ref(img.copy()).numpy()
        except Exception as e:  # a mode torchvision cannot handle is not a parity question
            pytest.fail(f"reference transform failed on {name}: {e}")
        got = ours(img.copy())
        assert got.shape == expected.shape == (3, 224, 224), name
        # error in pixel units (0..255) after undoing the normalisation
        err = np.abs(got - expected) * std * 255
        assert err.max() <= 1.0, (name, float(err.max()))
        assert np.array_equal(got, expected), (name, float(err.max()))


def test_non_square_input_and_fill_colour():
    ours, ref = make("longest", size=(160, 256), fill=128)
    for name, img in odd_images():
        np.testing.assert_array_equal(ours(img.copy()), ref(img.copy()).numpy(), err_msg=name)
    ours, ref = make("shortest", size=(160, 256))
    for name, img in odd_images():
        np.testing.assert_array_equal(ours(img.copy()), ref(img.copy()).numpy(), err_msg=name)


def test_folded_input_gives_raw_pixels():
    spec = PreprocessSpec()
    pre = Preprocessor(spec, InputSpec("pixels", (224, 224), dtype="uint8", mean=None, std=None))
    x = pre(base())
    assert x.dtype == np.uint8 and x.shape == (3, 224, 224)
    normalised = Preprocessor(spec, InputSpec("pixels", (224, 224), mean=MEAN, std=STD))(base())
    back = (x.astype(np.float32) / 255 - np.asarray(MEAN, np.float32)[:, None, None]) / np.asarray(STD, np.float32)[:, None, None]
    np.testing.assert_allclose(back, normalised, atol=1e-6)


def test_exif_orientation_is_applied(tmp_path):
    from clipscan.runtime.decode import load_image

    img = base().resize((300, 200))
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 CW to display
    path = tmp_path / "rotated.jpg"
    img.save(path, "JPEG", exif=exif, quality=95)
    shown = load_image(path)
    stored = load_image(path, exif_orientation="ignore")
    assert stored.size == (300, 200) and shown.size == (200, 300)
