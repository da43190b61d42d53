"""The torch-free preprocessing equals the reference transform (open_clip / torchvision) on the same image.

Images go through files in every format Pillow writes here, so decoding (EXIF, first
frame, CMYK, progressive JPEG, 16-bit) is part of what is compared.
"""
from __future__ import annotations

import numpy as np
import open_clip
import pytest
import torch
import torchvision.transforms as T
import torchvision.transforms.functional as TF
from PIL import Image, ImageOps

from clipscan.runtime.decode import load_image
from clipscan.runtime.manifest import InputSpec, PreprocessSpec
from clipscan.runtime.preprocess import Preprocessor, to_8bit, window_starts

from .conftest import photo_images

MEAN, STD = (0.48145466, 0.4578275, 0.40821073), (0.26862954, 0.26130258, 0.27577711)
STD_PIX = np.asarray(STD, np.float32).reshape(3, 1, 1) * 255


def base() -> Image.Image:
    return photo_images()[0][1]  # astronaut, 512x512 RGB


def _with_alpha(img):
    rgba = img.convert("RGBA")
    rgba.putalpha(Image.linear_gradient("L").resize(img.size))
    return rgba


def odd_images():
    """In-memory images of every odd size and mode."""
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
    yield "I16", Image.fromarray(np.asarray(wide.convert("L"), np.uint16) * 257)
    yield "F", Image.fromarray(np.asarray(wide.convert("L"), np.float32) / 255)


def odd_files(folder):
    """The same photo written as the files cameras, phones and uploads produce."""
    rgb = base().resize((640, 427))
    files = []

    def save(name, img, **kw):
        path = folder / name
        img.save(path, **kw)
        files.append(path)

    save("baseline.jpg", rgb, quality=90)
    save("progressive.jpg", rgb, quality=85, progressive=True, optimize=True)
    save("cmyk.jpg", rgb.convert("CMYK"), quality=90)
    save("gray.jpg", rgb.convert("L"))
    for orientation in range(2, 9):
        exif = Image.Exif()
        exif[0x0112] = orientation
        save(f"exif_{orientation}.jpg", rgb, exif=exif, quality=90)
    save("rgba.png", _with_alpha(rgb))
    save("palette_transparent.png", rgb.convert("P", palette=Image.Palette.ADAPTIVE, colors=32), transparency=0)
    save("gray16.png", Image.fromarray(np.asarray(rgb.convert("L"), np.uint16) * 257))
    frames = [rgb, rgb.rotate(90), rgb.transpose(Image.Transpose.FLIP_TOP_BOTTOM)]
    save("animated.gif", frames[0].convert("P"), save_all=True, append_images=[f.convert("P") for f in frames[1:]])
    save("animated.webp", frames[0], save_all=True, append_images=frames[1:], lossless=False)
    save("animated.png", frames[0], save_all=True, append_images=frames[1:])
    save("lossy.webp", rgb, quality=70)
    save("alpha.webp", _with_alpha(rgb), lossless=True)
    save("lzw.tif", rgb, compression="tiff_lzw")
    save("cmyk.tif", rgb.convert("CMYK"))
    save("gray16.tif", Image.fromarray(np.asarray(rgb.convert("L"), np.uint16) * 257))
    save("float.tif", Image.fromarray(np.asarray(rgb.convert("L"), np.float32) / 255))
    save("rgb.bmp", rgb)
    save("one_bit.bmp", rgb.convert("1"))
    save("tall_small.gif", rgb.resize((40, 300)).convert("P"))
    save("extreme.png", rgb.resize((3000, 9)))
    return files


def reference_decode(path) -> Image.Image:
    """How a careful training script opens a file: first frame (the one open() gives), EXIF applied, 8-bit policy."""
    with Image.open(path) as im:
        im = ImageOps.exif_transpose(im)
        im.load()
        return to_8bit(im)


def make(resize_mode: str, size=(224, 224), fill=0, bit_depth="rescale", convert_when="decode"):
    spec = PreprocessSpec(resize_mode=resize_mode, resize_size=size, crop_mode="none" if resize_mode == "squash" else "center",
                          crop_size=size, pad_fill=fill, bit_depth=bit_depth, convert_when=convert_when)
    ours = Preprocessor(spec, InputSpec("pixels", size, mean=MEAN, std=STD))
    ref = open_clip.image_transform(size if resize_mode != "shortest" or size[0] != size[1] else size[0],
                                    is_train=False, mean=MEAN, std=STD, resize_mode=resize_mode, fill_color=fill)
    return ours, ref


def assert_parity(got: np.ndarray, expected: np.ndarray, name: str) -> None:
    assert got.shape == expected.shape, name
    err = np.abs(got - expected) * STD_PIX  # error in 0..255 pixel units
    assert err.max() <= 1.0, (name, float(err.max()))
    assert np.array_equal(got, expected), (name, float(err.max()))  # in fact: bit-identical


def rgb(img: Image.Image) -> Image.Image:
    return to_8bit(img).convert("RGB")


@pytest.mark.parametrize("resize_mode", ["shortest", "longest", "squash"])
def test_parity_on_odd_images(resize_mode):
    """Default policy: RGB at decode, as `Image.open(p).convert("RGB")` loaders feed open_clip's transform."""
    ours, ref = make(resize_mode)
    for name, img in odd_images():
        assert_parity(ours(img.copy()), ref(rgb(img.copy())).numpy(), name)


@pytest.mark.parametrize("resize_mode", ["shortest", "longest", "squash"])
def test_parity_with_conversion_after_crop(resize_mode):
    """convert.when = after_crop: open_clip's transform given the image in its decoded mode."""
    ours, ref = make(resize_mode, convert_when="after_crop")
    for name, img in odd_images():
        assert_parity(ours(img.copy()), ref(to_8bit(img.copy())).numpy(), name)


@pytest.mark.parametrize("resize_mode", ["shortest", "longest"])
def test_parity_on_odd_files(tmp_path, resize_mode):
    ours, ref = make(resize_mode)
    for path in odd_files(tmp_path):
        decoded = load_image(path)
        assert_parity(ours(decoded), ref(reference_decode(path).convert("RGB")).numpy(), path.name)


def test_centre_crop_only_recipe_matches_torchvision(tmp_path):
    """UnivFD's test transform: no resize, CenterCrop(224) (pads small images), CLIP mean/std."""
    spec = PreprocessSpec(resize_mode="none", crop_mode="center")
    ours = Preprocessor(spec, InputSpec("pixels", (224, 224), mean=MEAN, std=STD))
    ref = T.Compose([T.CenterCrop(224), T.ToTensor(), T.Normalize(MEAN, STD)])
    for name, img in odd_images():
        assert_parity(ours(img.copy()), ref(to_8bit(img.copy()).convert("RGB")).numpy(), name)
    for path in odd_files(tmp_path):
        assert_parity(ours(load_image(path)), ref(reference_decode(path).convert("RGB")).numpy(), path.name)


def reference_sliding(img: Image.Image, crop: int, stride: int, max_n: int) -> np.ndarray:
    """Sliding crops with torchvision ops: pad short axes like CenterCrop, ToTensor, Normalize, unfold."""
    img = rgb(img)
    w, h = img.size
    pad = [(crop - w) // 2 if w < crop else 0, (crop - h) // 2 if h < crop else 0,
           (crop - w + 1) // 2 if w < crop else 0, (crop - h + 1) // 2 if h < crop else 0]
    if any(pad):
        img = TF.pad(img, pad, fill=0)
    x = TF.normalize(TF.to_tensor(img.convert("RGB")), MEAN, STD)
    ys = window_starts(x.shape[1], crop, stride, max_n)
    xs = window_starts(x.shape[2], crop, stride, max_n)
    return torch.stack([x[:, y:y + crop, left:left + crop] for y in ys for left in xs]).numpy()


def test_sliding_crops_match_reference():
    """CLIP-AGIQA (Fu et al.) style: no resize, 224 windows at stride 64, small images padded."""
    spec = PreprocessSpec(resize_mode="none", crop_mode="sliding", stride=64, max_per_axis=8)
    ours = Preprocessor(spec, InputSpec("pixels", (224, 224), mean=MEAN, std=STD))
    for name, img in odd_images():
        got = ours.batch(img.copy())
        assert_parity(got, reference_sliding(img.copy(), 224, 64, 8), name)
    assert len(ours.batch(base())) == 36  # 512 px: offsets 0, 64, 128, 192, 256 and 288 on each axis
    with pytest.raises(ValueError, match="several sliding crops"):
        ours(base())


def test_window_positions():
    assert window_starts(512, 224, 64, 8) == [0, 64, 128, 192, 256, 288]
    assert window_starts(224, 224, 64, 8) == [0]
    assert window_starts(100, 224, 64, 8) == [0]
    assert window_starts(4000, 224, 64, 4) == [0, 1259, 2517, 3776]


def test_bit_depth_policy():
    i16 = Image.fromarray(np.array([[0, 257, 32896, 65535]], np.uint16))
    assert np.asarray(to_8bit(i16)).tolist() == [[0, 1, 128, 255]]
    f = Image.fromarray(np.array([[0.0, 0.5, 1.0, np.nan]], np.float32))
    assert np.asarray(to_8bit(f)).tolist() == [[0, 128, 255, 0]]
    i32 = Image.fromarray(np.array([[0, 100, 255]], np.int32))
    assert np.asarray(to_8bit(i32)).tolist() == [[0, 100, 255]]
    # "clip" hands the image to PIL unchanged: what open_clip does with the raw decoded image
    ours, ref = make("shortest", bit_depth="clip", convert_when="after_crop")
    img = dict(odd_images())["I16"]
    assert_parity(ours(img.copy()), ref(img.copy()).numpy(), "I16-clip")


def test_non_square_input_and_fill_colour():
    for mode, fill in (("longest", 128), ("shortest", 0)):
        ours, ref = make(mode, size=(160, 256), fill=fill)
        for name, img in odd_images():
            assert_parity(ours(img.copy()), ref(rgb(img.copy())).numpy(), f"{mode}-{name}")


def test_folded_input_gives_raw_pixels():
    spec = PreprocessSpec()
    pre = Preprocessor(spec, InputSpec("pixels", (224, 224), dtype="uint8", mean=None, std=None))
    x = pre(base())
    assert x.dtype == np.uint8 and x.shape == (3, 224, 224)
    normalised = Preprocessor(spec, InputSpec("pixels", (224, 224), mean=MEAN, std=STD))(base())
    back = (x.astype(np.float32) / 255 - np.asarray(MEAN, np.float32)[:, None, None]) / np.asarray(STD, np.float32)[:, None, None]
    np.testing.assert_allclose(back, normalised, atol=1e-6)


def test_exif_orientation_policy(tmp_path):
    img = base().resize((300, 200))
    exif = Image.Exif()
    exif[0x0112] = 6  # stored sideways: rotate 90 degrees clockwise to display
    path = tmp_path / "rotated.jpg"
    img.save(path, "JPEG", exif=exif, quality=95)
    shown = load_image(path)
    stored = load_image(path, exif_orientation="ignore")
    assert stored.size == (300, 200) and shown.size == (200, 300)
    assert np.array_equal(np.asarray(shown), np.asarray(stored.transpose(Image.Transpose.ROTATE_270)))


def test_animated_files_use_the_first_frame(tmp_path):
    first, second = base(), base().rotate(90)
    path = tmp_path / "anim.webp"
    first.save(path, save_all=True, append_images=[second], lossless=True)
    assert np.array_equal(np.asarray(load_image(path).convert("RGB")), np.asarray(first))


def test_transparency_policy_drops_alpha_like_pil():
    """Alpha is dropped (the RGB under it is kept), as open_clip's convert("RGB") does."""
    rgba = Image.new("RGBA", (4, 4), (10, 200, 30, 0))  # fully transparent, colour underneath
    pre = Preprocessor(PreprocessSpec(resize_mode="squash", resize_size=(4, 4), crop_mode="none", crop_size=(4, 4)),
                       InputSpec("pixels", (4, 4), dtype="uint8", mean=None, std=None))
    assert pre(rgba)[:, 0, 0].tolist() == [10, 200, 30]


def test_a_thin_strip_is_resized_only_where_the_crop_keeps_it(tmp_path, capsys, monkeypatch):
    """A 1x20000 PNG (a few KB) resized to a 224 short side would be 224x4480000 pixels (100 s, 4 GB); the centre
    crop's region alone is resized, in seconds, and a strip small enough to resize whole agrees with that."""
    import time

    import clipscan.runtime.preprocess as prep
    from clipscan.cli import main

    strip = tmp_path / "strip.png"
    Image.fromarray(np.random.default_rng(1).integers(0, 256, (20000, 1, 3), np.uint8)).save(strip)
    start = time.monotonic()
    assert main(["scan", "-q", str(strip)]) == 0
    assert time.monotonic() - start < 30
    assert '"error": null' in capsys.readouterr().out

    pre = Preprocessor(PreprocessSpec(), InputSpec("pixels", (224, 224)))
    img = Image.fromarray(np.random.default_rng(2).integers(0, 256, (2000, 20, 3), np.uint8))
    whole = np.asarray(pre.geometry(img), np.int16)              # 224x22400: resized whole
    monkeypatch.setattr(prep, "_RESIZE_PIXELS_MAX", 224 * 224)
    region = np.asarray(pre.geometry(img), np.int16)
    assert region.shape == whole.shape == (224, 224, 3)
    assert np.abs(region - whole).mean() < 2.0   # the same filter; PIL may order its two passes differently


def test_a_resize_too_large_to_crop_from_is_one_image_error():
    """Sliding crops use the whole resized image: a strip that would become billions of pixels is refused for
    itself (its row says too_large), not resized."""
    from clipscan.runtime.errors import ImageReadError

    spec = PreprocessSpec(resize_mode="shortest", resize_size=(224, 224), crop_mode="sliding", stride=64,
                          max_per_axis=4)
    pre = Preprocessor(spec, InputSpec("pixels", (224, 224)))
    with pytest.raises(ImageReadError, match=r"too_large: this 1x20000 image .* 224x4480000 pixels"):
        pre.batch(Image.new("RGB", (1, 20000)))
    assert pre.batch(Image.new("RGB", (300, 900))).shape[0] > 1   # a photo still gives its windows
