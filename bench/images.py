"""The images the benchmark runs on.

The user's folder (walked as a scan walks it), else synthetic 640x480 JPEGs; for the camera
section, camera-sized JPEGs with detail at every scale, so reduced-size (draft) decoding is
measured on fine texture and not only on smooth upscaled content.
"""
from __future__ import annotations

import logging
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from clipscan.runtime.discover import iter_files
from clipscan.runtime.errors import InvalidArgumentError

from .config import BenchConfig

log = logging.getLogger("clipscan.bench")

SYNTHETIC_COUNT = 16


def benchmark_images(cfg: BenchConfig, tmp: Path) -> tuple[list[Path], str]:
    """(image files, a description for the report): the user's folder, else synthetic JPEGs in `tmp`."""
    if cfg.images:
        paths = [Path(p) for p in iter_files([cfg.images])]
        if not paths:
            raise InvalidArgumentError(f"no image files found in {cfg.images}; pass a folder of images (or no "
                                       "--images for synthetic ones)")
        return paths, f"{cfg.images} ({len(paths)} files)"
    folder = tmp / "images"
    paths = synthetic_images(folder, SYNTHETIC_COUNT)
    return paths, f"{SYNTHETIC_COUNT} synthetic 640x480 JPEGs (q=90) in {folder}"


def synthetic_images(folder: Path, n: int = 16, size: tuple[int, int] = (640, 480), seed: int = 0) -> list[Path]:
    """Torch-free stand-in images (smooth gradients, blobs and noise) written as JPEG q=90."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    w, h = size
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    out = []
    for i in range(n):
        base = np.zeros((h, w, 3), np.float32)
        for c in range(3):
            a, b, ph = rng.uniform(-3, 3, 3)
            base[..., c] = 127 + 90 * np.sin(a * xx / w * 3.14 + b * yy / h * 3.14 + ph)
        for _ in range(4):
            cx, cy, r = rng.uniform(0, w), rng.uniform(0, h), rng.uniform(20, h / 3)
            mask = ((xx - cx) ** 2 + (yy - cy) ** 2) < r * r
            base[mask] = rng.uniform(0, 255, 3)
        base += rng.normal(0, rng.uniform(0, 20), base.shape)
        p = folder / f"synthetic_{i:03d}.jpg"
        Image.fromarray(np.clip(base, 0, 255).astype(np.uint8)).save(p, "JPEG", quality=90)
        out.append(p)
    return out


def camera_files(cfg: BenchConfig, tmp: Path) -> tuple[Path, list[str]]:
    """(folder, files) of the camera section: `cfg.camera` JPEGs from `cfg.camera_dir` when it holds
    enough of them, else written there (or under `tmp`)."""
    folder = Path(cfg.camera_dir) if cfg.camera_dir else tmp / "camera"
    existing = sorted(folder.glob("camera_*.jpg")) if folder.exists() else []
    if len(existing) >= cfg.camera:
        return folder, [str(p) for p in existing[:cfg.camera]]
    t0 = time.perf_counter()
    paths = camera_images(folder, cfg.camera, cfg.camera_size)
    log.info("wrote %d camera-sized JPEGs in %.1f s", len(paths), time.perf_counter() - t0)
    return folder, [str(p) for p in paths]


def _camera_sources(seed: int) -> tuple[list[Image.Image], list[Image.Image]]:
    """(photos, renders): scikit-image's samples through `clipscan.export.demo_data` when installed,
    else synthetic images for both."""
    try:
        from clipscan.export import demo_data

        names = list(demo_data.TRAIN_PHOTOS) + list(demo_data.SAMPLE_PHOTOS)
        photos = [demo_data.photo(nm).convert("RGB") for nm in names]
        renders = [demo_data.render(1000 + i).convert("RGB") for i in range(8)]
        return photos, renders
    except Exception as e:  # no torch (MissingExtraError), no scikit-image or its data: synthetic sources
        log.info("camera images from synthetic sources (%s)", e)
        tmp = Path(tempfile.mkdtemp(prefix="clipscan-bench-src-"))
        photos = [Image.open(p).convert("RGB") for p in synthetic_images(tmp, 8, seed=seed)]
        return photos, photos[::-1]


def _camera_image(backdrop: Image.Image, photos: list[Image.Image], size: tuple[int, int],
                  rng: np.random.Generator) -> np.ndarray:
    """`backdrop` upscaled to `size`, photos pasted at native resolution (0.7-1.5x), sharp lines and
    rectangles at full resolution, and sensor-like noise."""
    w, h = size
    big = backdrop.resize(size, Image.Resampling.BICUBIC)
    for _ in range(int(rng.integers(3, 8))):   # native-resolution detail
        tile = photos[int(rng.integers(len(photos)))]
        scale = float(rng.uniform(0.7, 1.5))
        tw, th = max(8, min(w, int(tile.width * scale))), max(8, min(h, int(tile.height * scale)))
        tile = tile.resize((tw, th), Image.Resampling.BICUBIC)
        big.paste(tile, (int(rng.integers(0, max(1, w - tw))), int(rng.integers(0, max(1, h - th)))))
    draw = ImageDraw.Draw(big)
    for _ in range(int(rng.integers(5, 20))):    # sharp edges and thin lines at full resolution
        x, y = float(rng.uniform(0, w)), float(rng.uniform(0, h))
        color = tuple(int(v) for v in rng.integers(0, 256, 3))
        if rng.random() < 0.5:
            draw.line([(x, y), (x + float(rng.uniform(-w / 3, w / 3)), y + float(rng.uniform(-h / 3, h / 3)))],
                      fill=color, width=int(rng.integers(1, 6)))
        else:
            r = float(rng.uniform(10, 300))
            draw.rectangle((x - r, y - r, x + r, y + r * float(rng.uniform(0.3, 1.5))), outline=color,
                           width=int(rng.integers(1, 4)))
    arr = np.asarray(big, np.int16)
    noise = rng.integers(-6, 7, size=arr.shape, dtype=np.int16)
    return np.clip(arr + noise, 0, 255).astype(np.uint8)


def camera_images(folder: Path, n: int = 24, size: tuple[int, int] = (4000, 3000), seed: int = 0,
                  quality: int = 90) -> list[Path]:
    """Camera-sized JPEGs saved at `quality`; even ones have a photo as the backdrop, odd ones a render."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    photos, renders = _camera_sources(seed)
    out = []
    for i in range(n):
        pool = photos if i % 2 == 0 else renders
        arr = _camera_image(pool[(i // 2) % len(pool)], photos, size, rng)
        p = folder / f"camera_{i:03d}.jpg"
        Image.fromarray(arr).save(p, "JPEG", quality=quality)
        out.append(p)
    return out
