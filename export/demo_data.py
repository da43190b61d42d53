"""Images the demo model is fitted on, all made offline and deterministically.

- "real": colour photos that scikit-image ships (plus two grey ones), as random
  crops, rescales, flips and JPEG round trips.
- "generated": procedural renders standing in for generator output: fractal noise,
  smooth gradients with blobs, flat-shaded shapes, and nearest-neighbour upsampled
  noise (the checkerboard trace of transposed convolutions).
- quality ladder: photos under blur, JPEG or noise at five levels; MOS = 5 - level.

Photos are split by source: TRAIN_PHOTOS fit the heads, SAMPLE_PHOTOS are held out
for the README's sample folder.
"""
from __future__ import annotations

import io

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

TRAIN_PHOTOS = ("astronaut", "coffee", "rocket", "hubble_deep_field", "immunohistochemistry", "retina", "camera", "coins")
SAMPLE_PHOTOS = ("chelsea", "motorcycle_left")


def photo(name: str) -> Image.Image:
    import skimage.data

    if name == "motorcycle_left":
        arr = skimage.data.stereo_motorcycle()[0]
    else:
        arr = getattr(skimage.data, name)()
    img = Image.fromarray(np.asarray(arr))
    return img.convert("RGB")


def jpeg(img: Image.Image, quality: int) -> Image.Image:
    buf = io.BytesIO()
    img.save(buf, "JPEG", quality=int(quality))
    buf.seek(0)
    return Image.open(buf).convert("RGB")


def augment(img: Image.Image, rng: np.random.Generator) -> Image.Image:
    w, h = img.size
    s = rng.uniform(0.35, 1.0)
    cw, ch = max(32, int(w * s)), max(32, int(h * s * rng.uniform(0.75, 1.33)))
    cw, ch = min(cw, w), min(ch, h)
    x0, y0 = int(rng.integers(0, w - cw + 1)), int(rng.integers(0, h - ch + 1))
    out = img.crop((x0, y0, x0 + cw, y0 + ch))
    target = int(rng.integers(160, 520))
    ratio = target / max(out.size)
    out = out.resize((max(16, round(out.width * ratio)), max(16, round(out.height * ratio))), Image.Resampling.BICUBIC)
    if rng.random() < 0.5:
        out = out.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
    if rng.random() < 0.6:
        out = jpeg(out, int(rng.integers(70, 96)))
    return out


def _fractal(rng, size) -> np.ndarray:
    h, w = size
    acc = np.zeros((h, w, 3), np.float64)
    for octave in range(1, 7):
        n = 2 ** octave
        small = rng.random((n, n, 3))
        up = np.asarray(Image.fromarray((small * 255).astype(np.uint8)).resize((w, h), Image.Resampling.BICUBIC), np.float64)
        acc += up / (1.6 ** octave)
    acc = (acc - acc.min()) / (np.ptp(acc) + 1e-9)
    palette = rng.random((2, 3))
    return (255 * (palette[0] * acc + palette[1] * (1 - acc))).clip(0, 255)


def _gradient_blobs(rng, size) -> np.ndarray:
    h, w = size
    yy, xx = np.mgrid[0:h, 0:w] / max(h, w)
    c0, c1 = rng.random(3) * 255, rng.random(3) * 255
    t = (xx * rng.uniform(-1, 1) + yy * rng.uniform(-1, 1))
    t = (t - t.min()) / (np.ptp(t) + 1e-9)
    img = c0 * t[..., None] + c1 * (1 - t[..., None])
    for _ in range(int(rng.integers(2, 6))):
        cx, cy, r = rng.random(), rng.random(), rng.uniform(0.05, 0.3)
        blob = np.exp(-((xx - cx) ** 2 + (yy - cy) ** 2) / (2 * r * r))
        img += blob[..., None] * (rng.random(3) * 255 - img) * rng.uniform(0.4, 0.9)
    return img.clip(0, 255)


def _shapes(rng, size) -> np.ndarray:
    h, w = size
    img = Image.new("RGB", (w, h), tuple(int(v) for v in rng.integers(0, 256, 3)))
    draw = ImageDraw.Draw(img)
    for _ in range(int(rng.integers(4, 14))):
        pts = [(float(rng.uniform(0, w)), float(rng.uniform(0, h))) for _ in range(int(rng.integers(3, 7)))]
        color = tuple(int(v) for v in rng.integers(0, 256, 3))
        if rng.random() < 0.5:
            draw.polygon(pts, fill=color)
        else:
            x0, y0 = pts[0]
            r = float(rng.uniform(8, max(h, w) / 3))
            draw.ellipse((x0 - r, y0 - r, x0 + r, y0 + r), fill=color)
    img = img.filter(ImageFilter.GaussianBlur(float(rng.uniform(0, 1.5))))
    return np.asarray(img, np.float64)


def _upsampled_noise(rng, size) -> np.ndarray:
    h, w = size
    factor = int(rng.choice([2, 4, 8]))
    small = rng.random((max(1, h // factor), max(1, w // factor), 3))
    small = np.asarray(Image.fromarray((small * 255).astype(np.uint8)).filter(ImageFilter.GaussianBlur(1.0)), np.float64)
    up = np.kron(small, np.ones((factor, factor, 1)))
    pad_h, pad_w = h - up.shape[0], w - up.shape[1]
    return np.pad(up, ((0, max(0, pad_h)), (0, max(0, pad_w)), (0, 0)), mode="edge")[:h, :w]


RENDERERS = (_fractal, _gradient_blobs, _shapes, _upsampled_noise)


def render(seed: int) -> Image.Image:
    """One synthetic 'generated' image; the renderer and size depend on the seed."""
    rng = np.random.default_rng(seed)
    size = (int(rng.integers(192, 513)), int(rng.integers(192, 513)))
    arr = RENDERERS[seed % len(RENDERERS)](rng, size)
    img = Image.fromarray(arr.clip(0, 255).astype(np.uint8))
    if rng.random() < 0.4:
        img = jpeg(img, int(rng.integers(75, 96)))
    return img


def distort(img: Image.Image, kind: str, level: int) -> Image.Image:
    """Level 0 (pristine) .. 4 (worst) of one distortion."""
    if level == 0:
        return img
    if kind == "blur":
        return img.filter(ImageFilter.GaussianBlur((0.8, 1.6, 3.2, 6.4)[level - 1]))
    if kind == "jpeg":
        return jpeg(img, (40, 20, 10, 4)[level - 1])
    if kind == "noise":
        sigma = (8, 18, 36, 70)[level - 1]
        rng = np.random.default_rng(level)
        arr = np.asarray(img, np.float64) + rng.normal(0, sigma, (img.height, img.width, 3))
        return Image.fromarray(arr.clip(0, 255).astype(np.uint8))
    raise AssertionError(f"unknown distortion {kind!r}")


def detector_set(n_per_class: int, seed: int = 0) -> tuple[list[Image.Image], list[int]]:
    """Balanced real (0) / generated (1) images."""
    rng = np.random.default_rng(seed)
    photos = [photo(n) for n in TRAIN_PHOTOS]
    images, labels = [], []
    for i in range(n_per_class):
        images.append(augment(photos[i % len(photos)], rng))
        labels.append(0)
        images.append(render(10_000 + seed * 100_000 + i))
        labels.append(1)
    return images, labels


def quality_set(n: int, seed: int = 1) -> tuple[list[Image.Image], list[float]]:
    """Distorted photo crops and renders with MOS = 5 - level."""
    rng = np.random.default_rng(seed)
    photos = [photo(p) for p in TRAIN_PHOTOS]
    images, scores = [], []
    for i in range(n):
        if i % 3 == 2:
            base = render(50_000 + seed * 100_000 + i)
        else:
            base = augment(photos[i % len(photos)], rng)
        level = i % 5
        kind = ("blur", "jpeg", "noise")[(i // 5) % 3]
        images.append(distort(base, kind, level))
        scores.append(5.0 - level)
    return images, scores
