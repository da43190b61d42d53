"""A deterministic corpus of real-world-like image files for "scan everything" tests.

``build_corpus(root, seed=...)`` writes well over 1000 files into ``root`` and
returns one :class:`CorpusEntry` per path it created. The corpus mixes

* valid images in every format Pillow can both write and read here, in many
  modes and with the save options cameras, phones, editors and web tools use
  (progressive JPEG, CMYK, ICC profiles, EXIF orientation, 16-bit and float
  data, palettes with transparency, animation, multipage TIFF, ...);
* odd but valid files: 1x1 images, extreme aspect ratios, mid-size images,
  wrong or upper-case extensions, unusual file names;
* broken files: empty, random bytes, text/HTML/JSON named like images,
  truncated at several points, bit-flipped, header only, damaged headers;
* decompression bombs (tiny files whose headers claim hundreds of megapixels
  or more);
* special paths: a directory, a symlink loop, a dangling symlink, a FIFO and
  symlinks to valid images.

Every entry says what a scanner should make of it: ``expect`` is "ok" (Pillow
decodes the file fully), "error" (it cannot be decoded: the scanner must report
an error row) or "either" (damaged in a way a decoder may or may not tolerate;
the scanner only has to produce one row without crashing or hanging).

Formats Pillow registers a writer for but cannot write in this environment
(BUFR, GRIB, HDF5 and WMF need external handlers) are probed at run time and
left out; nothing is recorded for them. Formats Pillow writes but cannot read
(PDF, PALM) are included with expect "error".

Run ``python tests/corpus.py DIR [--seed N] [--verify]`` to build a corpus and
print a summary; ``--verify`` also decodes every file and checks its expectation.
"""
from __future__ import annotations

import gzip
import io
import json
import os
import struct
import time
import zlib
from collections import Counter
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np
from PIL import Image, ImageCms, ImageOps, PngImagePlugin, features

OK, ERROR, EITHER = "ok", "error", "either"

# The corpus is topped up with random valid images until it holds this many entries.
TARGET_ENTRIES = 1100

# Colour and grey photos from scikit-image, by the name used in file names.
COLOUR_PHOTOS = ("astronaut", "chelsea", "coffee", "rocket", "motorcycle",
                 "hubble", "ihc", "retina")
GREY_PHOTOS = ("camera", "coins", "moon")


@dataclass(frozen=True)
class CorpusEntry:
    path: Path  # the file (or directory / symlink / fifo) created
    fmt: str  # Pillow format name ("JPEG", "PNG", ...), or "broken", "bomb", "special"
    variant: str  # short description: "progressive", "cmyk", "exif-6", "truncated-50%", "I;16"
    expect: str  # "ok", "error" or "either"


# --------------------------------------------------------------------------
# Image sources
# --------------------------------------------------------------------------

@lru_cache(maxsize=None)
def _photo(name: str) -> Image.Image:
    """A full-size scikit-image photo ("RGB" or "L"); cached, never mutated."""
    from skimage import data

    loaders = {
        "astronaut": data.astronaut, "chelsea": data.chelsea, "coffee": data.coffee,
        "rocket": data.rocket, "hubble": data.hubble_deep_field,
        "ihc": data.immunohistochemistry, "retina": data.retina,
        "motorcycle": lambda: data.stereo_motorcycle()[0],
        "camera": data.camera, "coins": data.coins, "moon": data.moon,
    }
    return Image.fromarray(np.ascontiguousarray(loaders[name]()))


@lru_cache(maxsize=None)
def _fit_cached(name: str, side: int) -> Image.Image:
    im = _photo(name)
    scale = side / max(im.size)
    size = (max(1, round(im.width * scale)), max(1, round(im.height * scale)))
    return im.resize(size, Image.Resampling.LANCZOS)


def _fit(name: str, side: int) -> Image.Image:
    """The photo scaled so that its longer side is `side` pixels.

    Always a fresh copy: Pillow leaves `encoderinfo` on an image it saved, and a
    shared image would carry one file's save options into the next multi-frame save.
    """
    return _fit_cached(name, side).copy()


def _sized(name: str, size: tuple[int, int]) -> Image.Image:
    """The photo squeezed or stretched to exactly `size` (for odd shapes)."""
    return _photo(name).resize(size, Image.Resampling.BILINEAR)


def _synthetic(kind: str, w: int, h: int, rng: np.random.Generator) -> Image.Image:
    """A synthetic RGB image: smooth gradients, noise, a checkerboard or a flat colour."""
    y, x = np.mgrid[0:h, 0:w].astype(np.float32)
    fx, fy = x / max(w - 1, 1), y / max(h - 1, 1)
    if kind == "gradient":
        arr = np.stack([fx, fy, 1 - fx * fy], -1) * 255
    elif kind == "radial":
        r = np.clip(np.hypot(fx - 0.5, fy - 0.5) / 0.7072, 0, 1)
        arr = np.stack([1 - r, (1 - r) ** 2, r], -1) * 255
    elif kind == "noise":
        arr = rng.integers(0, 256, (h, w, 3))
    elif kind == "checker":
        c = ((x // 8 + y // 8) % 2) * 255
        arr = np.stack([c, 255 - c, c], -1)
    elif kind == "solid":
        arr = np.broadcast_to(rng.integers(0, 256, 3), (h, w, 3))
    else:
        raise ValueError(kind)
    return Image.fromarray(np.ascontiguousarray(np.clip(arr, 0, 255).astype(np.uint8)))


def _alpha_mask(w: int, h: int) -> Image.Image:
    """A soft elliptical alpha channel: opaque centre, transparent corners."""
    y, x = np.mgrid[0:h, 0:w].astype(np.float32)
    r = np.hypot((x + 0.5) / w - 0.5, (y + 0.5) / h - 0.5) * 2
    return Image.fromarray((np.clip(1.4 - r, 0, 1) * 255).astype(np.uint8))


def _as_mode(im: Image.Image, mode: str, colors: int = 256) -> Image.Image:
    """Convert an RGB/L photo to `mode`, building alpha and high-bit-depth data as needed."""
    if mode == "RGBA":
        out = im.convert("RGB")
        out.putalpha(_alpha_mask(*im.size))
        return out
    if mode == "LA":
        out = im.convert("L").convert("LA")
        out.putalpha(_alpha_mask(*im.size))
        return out
    if mode == "P":
        return im.convert("RGB").convert("P", palette=Image.Palette.ADAPTIVE, colors=colors)
    if mode == "1":
        return im.convert("L").convert("1")
    grey = np.asarray(im.convert("L"))
    if mode == "I;16":
        return Image.fromarray(grey.astype(np.uint16) * 257)
    if mode == "I":
        return Image.fromarray(grey.astype(np.int32) * 257)
    if mode == "F":
        return Image.fromarray(grey.astype(np.float32) / 255)
    return im.convert(mode)


@lru_cache(maxsize=None)
def _srgb_icc() -> bytes:
    """A real sRGB ICC profile, with its creation date pinned so the bytes are stable."""
    icc = bytearray(ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB")).tobytes())
    icc[24:36] = struct.pack(">6H", 2024, 1, 1, 0, 0, 0)
    return bytes(icc)


def _exif(orientation: int | None = None, tags: dict[int, object] | None = None) -> Image.Exif:
    """An EXIF block with the Orientation tag (0x0112) and any other tags given."""
    ex = Image.Exif()
    if orientation is not None:
        ex[0x0112] = orientation
    ex.update(tags or {})
    return ex


def _encode(im: Image.Image, fmt: str, **options) -> bytes:
    buf = io.BytesIO()
    im.save(buf, fmt, **options)
    return buf.getvalue()


@lru_cache(maxsize=None)
def _writable_formats() -> frozenset[str]:
    """Formats Pillow can actually write here (some only register a stub handler)."""
    Image.init()
    ok = set()
    for fmt in Image.SAVE:
        for mode in ("RGB", "L", "P", "1"):
            try:
                _encode(Image.new(mode, (8, 8)), fmt)
            except Exception:  # stub handlers raise OSError, picky writers ValueError
                continue
            ok.add(fmt)
            break
    return frozenset(ok)


def skipped_writers() -> list[str]:
    """Formats in Image.SAVE that this corpus leaves out because they cannot be written."""
    Image.init()
    return sorted(set(Image.SAVE) - _writable_formats())


# --------------------------------------------------------------------------
# Low-level byte crafting (PNG chunks, JPEG markers)
# --------------------------------------------------------------------------

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def _png_chunk(tag: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + tag + data + struct.pack(">I", zlib.crc32(tag + data))


def _png_file(width: int, height: int, depth: int, colour_type: int, idat: bytes,
              interlace: int = 0) -> bytes:
    ihdr = struct.pack(">IIBBBBB", width, height, depth, colour_type, 0, 0, interlace)
    return (PNG_SIGNATURE + _png_chunk(b"IHDR", ihdr) + _png_chunk(b"IDAT", idat)
            + _png_chunk(b"IEND", b""))


_ADAM7 = ((0, 0, 8, 8), (4, 0, 8, 8), (0, 4, 4, 8), (2, 0, 4, 4), (0, 2, 2, 4), (1, 0, 2, 2), (0, 1, 1, 2))


def _png_from_array(arr: np.ndarray, interlace: bool = False) -> bytes:
    """A PNG written by hand from an 8/16-bit grey, grey+alpha, RGB or RGBA array.

    Used for what Pillow does not write: Adam7 interlacing and 16-bit colour.
    """
    if arr.ndim == 2:
        arr = arr[:, :, None]
    h, w, channels = arr.shape
    colour_type = {1: 0, 2: 4, 3: 2, 4: 6}[channels]
    depth = 16 if arr.dtype == np.uint16 else 8
    if depth == 16:
        arr = arr.astype(">u2")
    raw = []
    for x0, y0, dx, dy in _ADAM7 if interlace else ((0, 0, 1, 1),):
        sub = np.ascontiguousarray(arr[y0::dy, x0::dx])
        if sub.size == 0:  # small images leave some passes empty; they are omitted
            continue
        rows = sub.view(np.uint8).reshape(sub.shape[0], -1)
        raw.append(np.hstack([np.zeros((rows.shape[0], 1), np.uint8), rows]).tobytes())
    return _png_file(w, h, depth, colour_type, zlib.compress(b"".join(raw), 9), int(interlace))


def _zero_png(width: int, height: int) -> bytes:
    """A valid 1-bit grey PNG of all-black pixels, compressed without holding it in memory."""
    row = bytes(1 + (width + 7) // 8)
    comp = zlib.compressobj(9)
    parts, left = [], height
    while left:
        n = min(left, 1000)
        parts.append(comp.compress(row * n))
        left -= n
    parts.append(comp.flush())
    return _png_file(width, height, 1, 0, b"".join(parts))


def _png_chunk_offsets(data: bytes) -> dict[bytes, int]:
    """Offset of the first chunk of each type in a PNG."""
    out, i = {}, len(PNG_SIGNATURE)
    while i + 8 <= len(data):
        length, tag = struct.unpack(">I4s", data[i:i + 8])
        out.setdefault(tag, i)
        i += 12 + length
    return out


def _jpeg_markers(data: bytes) -> dict[int, int]:
    """Offset of the first occurrence of each marker up to (and including) the first SOS."""
    out, i = {}, 2
    while i + 4 <= len(data) and data[i] == 0xFF:
        marker = data[i + 1]
        out.setdefault(marker, i)
        if marker == 0xDA:
            break
        i += 2 + struct.unpack(">H", data[i + 2:i + 4])[0]
    return out


def _patch_jpeg_size(data: bytes, width: int, height: int) -> bytes:
    """Rewrite the frame size in a baseline JPEG's SOF0 segment."""
    sof = _jpeg_markers(data)[0xC0]
    return data[:sof + 5] + struct.pack(">HH", height, width) + data[sof + 9:]


def _pin_isobmff_times(data: bytes) -> bytes:
    """Zero the creation/modification times libavif stamps into an image sequence's
    mvhd/tkhd/mdhd boxes, so that the bytes do not depend on the clock."""
    out = bytearray(data)
    for tag in (b"mvhd", b"tkhd", b"mdhd"):
        i = out.find(tag)
        while i >= 0:
            width = 8 if out[i + 4] == 1 else 4  # box version 1 uses 64-bit times
            out[i + 8:i + 8 + 2 * width] = bytes(2 * width)
            i = out.find(tag, i + 4)
    return bytes(out)


def _gif_colour_table_size(data: bytes) -> int:
    """Length in bytes of a GIF's global colour table (0 if it has none)."""
    flags = data[10]
    return 3 * (2 << (flags & 7)) if flags & 0x80 else 0


def _tiff_ifd(entries: list[tuple[int, int, int, bytes]]) -> bytes:
    """A little-endian TIFF header plus one IFD (used to build EXIF blocks)."""
    body = struct.pack("<H", len(entries))
    for tag, typ, count, value in entries:
        body += struct.pack("<HHI", tag, typ, count) + value.ljust(4, b"\x00")
    return b"II*\x00" + struct.pack("<I", 8) + body + struct.pack("<I", 0)


# --------------------------------------------------------------------------
# The builder: names files and records entries
# --------------------------------------------------------------------------

def _slug(text: str) -> str:
    return "".join(c if c.isalnum() or c in "-_." else "-" for c in text).strip("-")


class _Builder:
    def __init__(self, root: Path, seed: int):
        self.root = root
        self.rng = np.random.default_rng(seed)
        self.entries: list[CorpusEntry] = []
        self.writable = _writable_formats()
        self._count = 0

    def can(self, *formats: str) -> bool:
        return all(f in self.writable for f in formats)

    def new_path(self, folder: str, stem: str, ext: str, *, slug: bool = True) -> Path:
        """A fresh, unique path: <root>/<folder>/<stem>_<NNNN><ext> (stem made file-name safe
        unless `slug` is False)."""
        self._count += 1
        d = self.root / folder
        d.mkdir(parents=True, exist_ok=True)
        return d / f"{_slug(stem) if slug else stem}_{self._count:04d}{ext}"

    def record(self, path: Path, fmt: str, variant: str, expect: str) -> Path:
        self.entries.append(CorpusEntry(path, fmt, variant, expect))
        return path

    def save(self, folder: str, stem: str, ext: str, im: Image.Image, fmt: str, variant: str,
             expect: str = OK, **options) -> Path | None:
        """Save `im` with Pillow; formats that cannot be written here are skipped silently."""
        if fmt not in self.writable:
            return None
        path = self.new_path(folder, stem, ext)
        im.save(path, fmt, **options)
        return self.record(path, fmt, variant, expect)

    def write(self, folder: str, stem: str, ext: str, data: bytes, fmt: str, variant: str,
              expect: str) -> Path:
        path = self.new_path(folder, stem, ext)
        path.write_bytes(data)
        return self.record(path, fmt, variant, expect)


# --------------------------------------------------------------------------
# Format families
# --------------------------------------------------------------------------

def _jpeg_family(b: _Builder) -> None:
    icc = _srgb_icc()
    xmp = (b'<x:xmpmeta xmlns:x="adobe:ns:meta/"><rdf:RDF xmlns:rdf="http://www.w3.org/1999/'
           b'02/22-rdf-syntax-ns#"><rdf:Description rdf:about=""/></rdf:RDF></x:xmpmeta>')
    variants = [
        ("baseline", {"quality": 85}),
        ("progressive", {"quality": 85, "progressive": True}),
        ("optimize", {"quality": 85, "optimize": True}),
        ("progressive-optimize", {"quality": 75, "progressive": True, "optimize": True}),
        ("quality-1", {"quality": 1}),
        ("quality-50", {"quality": 50}),
        ("quality-100", {"quality": 100}),
        ("subsampling-4:4:4", {"subsampling": "4:4:4"}),
        ("subsampling-4:2:2", {"subsampling": "4:2:2"}),
        ("subsampling-4:2:0", {"subsampling": "4:2:0"}),
        ("restart-markers", {"restart_marker_rows": 1}),
        ("rgb-no-ycbcr", {"keep_rgb": True}),  # Adobe transform 0: components stored as RGB
        ("comment", {"comment": "Scanned with clipscan corpus"}),
        ("dpi-300", {"dpi": (300, 300)}),
        ("xmp", {"xmp": xmp}),
        ("icc-srgb", {"icc_profile": icc}),
        ("icc-srgb-progressive", {"icc_profile": icc, "progressive": True}),
    ]
    sides = (96, 200, 320)
    for i, (variant, opts) in enumerate(variants):
        for k, side in enumerate(sides):
            name = COLOUR_PHOTOS[(i * len(sides) + k) % len(COLOUR_PHOTOS)]
            b.save("jpeg", f"jpeg_{variant}_{name}", ".jpg", _fit(name, side), "JPEG", variant, **opts)

    # grey and CMYK
    for name in GREY_PHOTOS:
        b.save("jpeg", f"jpeg_grey_{name}", ".jpg", _fit(name, 256), "JPEG", "L", quality=90)
    b.save("jpeg", "jpeg_grey-progressive_camera", ".jpg", _fit("camera", 200), "JPEG",
           "L-progressive", progressive=True)
    b.save("jpeg", "jpeg_grey_from-colour_coffee", ".jpg", _fit("coffee", 240).convert("L"),
           "JPEG", "L")
    for name in ("astronaut", "rocket", "ihc"):
        b.save("jpeg", f"jpeg_cmyk_{name}", ".jpg", _fit(name, 220).convert("CMYK"), "JPEG", "cmyk")
    b.save("jpeg", "jpeg_cmyk-progressive_chelsea", ".jpg", _fit("chelsea", 200).convert("CMYK"),
           "JPEG", "cmyk-progressive", progressive=True)

    # EXIF orientation 1..8 on non-square photos, as phones write them
    for orientation in range(1, 9):
        for name, side in (("coffee", 180), ("motorcycle", 120)):
            b.save("jpeg", f"jpeg_exif-orientation-{orientation}_{name}", ".jpg", _fit(name, side),
                   "JPEG", f"exif-{orientation}", exif=_exif(orientation, {0x010F: "Corpus", 0x0110: "Phone 1"}))

    # EXIF blocks a parser may choke on; the pixel data itself is fine
    good = _exif(6, {0x010F: "Corpus"}).tobytes()
    broken_exif = [
        ("exif-garbage", b"Exif\x00\x00" + b.rng.bytes(200)),
        ("exif-empty", b"Exif\x00\x00"),
        ("exif-bad-ifd-offset", b"Exif\x00\x00II*\x00" + struct.pack("<I", 0x7FFFFFF0)),
        ("exif-truncated", good[: len(good) // 2]),
        ("exif-bad-byte-order", b"Exif\x00\x00XX" + good[8:]),
        ("exif-orientation-0", _exif(0).tobytes()),
        ("exif-orientation-9", _exif(9).tobytes()),
        ("exif-orientation-65535", _exif(65535).tobytes()),
        # Orientation stored as an ASCII string instead of a SHORT
        ("exif-orientation-ascii", b"Exif\x00\x00" + _tiff_ifd([(0x0112, 2, 2, b"6\x00")])),
        # the Exif sub-IFD pointer points back at IFD0, and IFD0's "next" is itself
        ("exif-ifd-loop", b"Exif\x00\x00" + _tiff_ifd([(0x0112, 3, 1, struct.pack("<H", 6)),
                                                       (0x8769, 4, 1, struct.pack("<I", 8))])[:-4]
         + struct.pack("<I", 8)),
        ("exif-count-overflow", b"Exif\x00\x00" + _tiff_ifd([(0x010F, 2, 0x7FFFFFFF, struct.pack("<I", 26))])),
    ]
    for variant, payload in broken_exif:
        b.save("jpeg", f"jpeg_{variant}", ".jpg", _fit("rocket", 160), "JPEG", variant, exif=payload)
    # an ICC profile that is not a valid profile at all (Pillow stores it unparsed)
    b.save("jpeg", "jpeg_icc-garbage", ".jpg", _fit("chelsea", 150), "JPEG", "icc-garbage",
           icc_profile=b"\x00\x00\x02\x00garbage-profile" + b.rng.bytes(300))

    # Bytes after the end-of-image marker, as some phones and editors leave behind
    base = _encode(_fit("astronaut", 160), "JPEG", quality=80)
    b.write("jpeg", "jpeg_trailing-garbage", ".jpg", base + b.rng.bytes(3000), "JPEG", "trailing-garbage", OK)
    b.write("jpeg", "jpeg_trailing-zeros", ".jpg", base + bytes(5000), "JPEG", "trailing-zeros", OK)
    b.write("jpeg", "jpeg_two-concatenated", ".jpg", base + _encode(_fit("coffee", 100), "JPEG"),
            "JPEG", "two-concatenated", OK)
    # An "abbreviated" stream without quantisation/Huffman tables: undecodable on its own
    b.save("jpeg", "jpeg_abbreviated-no-tables", ".jpg", _fit("coins", 96), "JPEG",
           "abbreviated-no-tables", ERROR, streamtype=2)
    # the other JPEG file extensions
    for ext in (".jpeg", ".jpe", ".jfif", ".JPG", ".JPEG"):
        b.save("jpeg", f"jpeg_extension-{ext[1:]}", ext, _fit("retina", 128), "JPEG", f"ext{ext}")


def _png_family(b: _Builder) -> None:
    # (Pillow 13 no longer writes mode "I" as PNG; PNG has no 32-bit samples anyway)
    modes = ["1", "L", "LA", "P", "RGB", "RGBA", "I;16"]
    for i, mode in enumerate(modes):
        for k, side in enumerate((64, 180, 300)):
            if mode == "I;16":  # high bit depth grey: use the grey photos
                name = GREY_PHOTOS[(i + k) % len(GREY_PHOTOS)]
            else:
                name = COLOUR_PHOTOS[(3 * i + k) % len(COLOUR_PHOTOS)]
            b.save("png", f"png_{mode}_{name}", ".png", _as_mode(_fit(name, side), mode), "PNG", mode)
    # palettes of fewer bits and grey of fewer bits
    for bits in (1, 2, 4):
        b.save("png", f"png_P-{bits}bit", ".png", _as_mode(_fit("chelsea", 120), "P", 1 << bits),
               "PNG", f"P-{bits}bit", bits=bits)
        b.save("png", f"png_L-{bits}bit", ".png", _fit("moon", 120), "PNG", f"L-{bits}bit", bits=bits)
    # transparency: palette index (tRNS), colour key in RGB and grey, palette with many alpha levels
    b.save("png", "png_P-transparency", ".png", _as_mode(_fit("rocket", 160), "P", 64), "PNG",
           "P-transparency", transparency=0)
    b.save("png", "png_P-transparency-2", ".png", _as_mode(_fit("astronaut", 100), "P", 16), "PNG",
           "P-transparency", transparency=3)
    b.save("png", "png_P-alpha-palette", ".png", _fit("ihc", 120).convert("RGBA").quantize(32),
           "PNG", "P-alpha-palette", transparency=bytes(range(0, 256, 8)))
    b.save("png", "png_RGB-colour-key", ".png", _fit("coffee", 140), "PNG", "RGB-colour-key",
           transparency=(255, 255, 255))
    b.save("png", "png_L-colour-key", ".png", _fit("coins", 140), "PNG", "L-colour-key", transparency=0)

    # chunks and save options
    gamma = PngImagePlugin.PngInfo()
    gamma.add(b"gAMA", struct.pack(">I", 45455))
    gamma.add(b"cHRM", struct.pack(">8I", 31270, 32900, 64000, 33000, 30000, 60000, 15000, 6000))
    texts = PngImagePlugin.PngInfo()
    texts.add_text("Title", "corpus")
    texts.add_text("Comment", "compressed text " * 20, zip=True)
    texts.add_itxt("Description", "unicode text: ünïcødé 写真", lang="en", tkey="Description")
    options = [
        ("gamma-chrm", {"pnginfo": gamma}),
        ("icc-srgb", {"icc_profile": _srgb_icc()}),
        ("text-chunks", {"pnginfo": texts}),
        ("dpi-72", {"dpi": (72, 72)}),
        ("compress-0", {"compress_level": 0}),
        ("compress-1", {"compress_level": 1}),
        ("compress-9", {"compress_level": 9}),
        ("optimize", {"optimize": True}),
        ("exif-orientation-6", {"exif": _exif(6)}),
        ("exif-orientation-8", {"exif": _exif(8)}),
    ]
    for i, (variant, opts) in enumerate(options):
        name = COLOUR_PHOTOS[i % len(COLOUR_PHOTOS)]
        side = 64 if variant == "compress-0" else 150
        b.save("png", f"png_{variant}_{name}", ".png", _fit(name, side), "PNG", variant, **opts)
    # a zTXt chunk that inflates to 8 MB of zeros (a "text bomb"); pixels are fine,
    # but Pillow refuses chunks above PngImagePlugin.MAX_TEXT_CHUNK
    raw = _encode(_fit("coffee", 80), "PNG")
    ztxt = _png_chunk(b"zTXt", b"Comment\x00\x00" + zlib.compress(bytes(8 << 20), 9))
    iend = _png_chunk_offsets(raw)[b"IDAT"]
    b.write("png", "png_ztxt-bomb", ".png", raw[:iend] + ztxt + raw[iend:], "PNG", "ztxt-bomb", EITHER)

    # Adam7-interlaced PNGs, written by hand (including sizes that leave passes empty)
    rgb = np.asarray(_fit("astronaut", 200))
    interlaced = [
        ("interlaced-RGB", rgb),
        ("interlaced-RGBA", np.asarray(_as_mode(_fit("chelsea", 160), "RGBA"))),
        ("interlaced-L", np.asarray(_fit("camera", 150))),
        ("interlaced-LA", np.asarray(_as_mode(_fit("moon", 90), "LA"))),
        ("interlaced-I;16", np.asarray(_fit("coins", 120)).astype(np.uint16) * 257),
        ("interlaced-RGB-1x1", rgb[:1, :1]),
        ("interlaced-RGB-2x3", rgb[:3, :2]),
        ("interlaced-RGB-7x5", rgb[:5, :7]),
        ("interlaced-RGB-9x1", rgb[:1, :9]),
        ("interlaced-L-33x17", np.asarray(_fit("camera", 33))[:17]),
    ]
    for variant, arr in interlaced:
        b.write("png", f"png_{variant}", ".png", _png_from_array(arr, interlace=True), "PNG", variant, OK)
    # 16 bits per colour sample, as scanners and raw converters write
    for variant, name, alpha in (("RGB-16bit", "retina", False), ("RGBA-16bit", "rocket", True)):
        arr = np.asarray(_as_mode(_fit(name, 150), "RGBA" if alpha else "RGB")).astype(np.uint16) * 257
        b.write("png", f"png_{variant}", ".png", _png_from_array(arr), "PNG", variant, OK)
    b.write("png", "png_LA-16bit", ".png",
            _png_from_array(np.asarray(_as_mode(_fit("moon", 100), "LA")).astype(np.uint16) * 257),
            "PNG", "LA-16bit", OK)

    # APNG animations
    frames = [_fit(n, 120).resize((120, 80)) for n in ("astronaut", "coffee", "rocket", "chelsea")]
    b.save("png", "apng_rgb-4-frames", ".png", frames[0], "PNG", "apng", save_all=True,
           append_images=frames[1:], duration=100, loop=0)
    rgba = [_as_mode(f, "RGBA") for f in frames]
    b.save("png", "apng_rgba-blend-over", ".png", rgba[0], "PNG", "apng-blend-over", save_all=True,
           append_images=rgba[1:], duration=[80, 120, 80, 200], blend=PngImagePlugin.Blend.OP_OVER,
           disposal=PngImagePlugin.Disposal.OP_BACKGROUND)
    b.save("png", "apng_hidden-default-image", ".png", frames[0], "PNG", "apng-default-image",
           save_all=True, append_images=frames[1:3], default_image=True, duration=50)
    b.save("png", "apng_extension", ".apng", frames[1], "PNG", "apng-ext.apng", save_all=True,
           append_images=frames[2:], duration=70)
    grey = [_fit(n, 90) for n in GREY_PHOTOS]
    b.save("png", "apng_grey-frames", ".png", grey[0].resize((90, 90)), "PNG", "apng-L", save_all=True,
           append_images=[g.resize((90, 90)) for g in grey[1:]], duration=100)


def _gif_family(b: _Builder) -> None:
    for i, name in enumerate(COLOUR_PHOTOS[:5]):
        b.save("gif", f"gif_static_{name}", ".gif", _fit(name, (80, 160, 260)[i % 3]), "GIF", "static")
    for name in GREY_PHOTOS:
        b.save("gif", f"gif_grey_{name}", ".gif", _fit(name, 150), "GIF", "L")
    b.save("gif", "gif_bilevel", ".gif", _as_mode(_fit("camera", 128), "1"), "GIF", "1")
    b.save("gif", "gif_16-colours", ".gif", _as_mode(_fit("chelsea", 140), "P", 16), "GIF", "P-16")
    b.save("gif", "gif_2-colours", ".gif", _as_mode(_fit("coins", 140), "P", 2), "GIF", "P-2")
    b.save("gif", "gif_transparency", ".gif", _as_mode(_fit("rocket", 150), "P", 64), "GIF",
           "transparency", transparency=0)
    b.save("gif", "gif_from-rgba", ".gif", _as_mode(_fit("ihc", 120), "RGBA"), "GIF", "from-rgba")
    b.save("gif", "gif_not-interlaced", ".gif", _fit("astronaut", 150), "GIF", "not-interlaced", interlace=0)
    b.save("gif", "gif_comment", ".gif", _fit("coffee", 150), "GIF", "comment", comment=b"corpus")
    b.save("gif", "gif_optimize", ".gif", _fit("motorcycle", 150), "GIF", "optimize", optimize=True)

    frames = [_fit(n, 100).resize((100, 75)) for n in COLOUR_PHOTOS[:5]]
    b.save("gif", "gif_animated-5-frames", ".gif", frames[0], "GIF", "animated", save_all=True,
           append_images=frames[1:], duration=100, loop=0)
    b.save("gif", "gif_animated-no-loop", ".gif", frames[2], "GIF", "animated-no-loop", save_all=True,
           append_images=frames[3:], duration=[50, 300, 80])
    rgba = [_as_mode(f, "RGBA") for f in frames[:3]]
    b.save("gif", "gif_animated-transparent-dispose", ".gif", rgba[0], "GIF", "animated-transparency",
           save_all=True, append_images=rgba[1:], duration=120, disposal=2, loop=0)
    # each frame with its own palette (local colour tables)
    own = [_as_mode(f, "P", 32) for f in frames]
    b.save("gif", "gif_animated-local-palettes", ".gif", own[0], "GIF", "animated-local-palettes",
           save_all=True, append_images=own[1:], duration=90)
    # a moving gradient, 12 small frames
    grad = _synthetic("radial", 48, 48, b.rng)
    spin = [grad.rotate(30 * k) for k in range(12)]
    b.save("gif", "gif_animated-12-frames", ".gif", spin[0], "GIF", "animated-12", save_all=True,
           append_images=spin[1:], duration=40, loop=0)


def _webp_family(b: _Builder) -> None:
    variants = [
        ("lossy-q5", {"quality": 5}),
        ("lossy-q50", {"quality": 50}),
        ("lossy-q80", {"quality": 80}),
        ("lossy-q100", {"quality": 100, "method": 6}),
        ("lossy-method-0", {"quality": 75, "method": 0}),
        ("lossless", {"lossless": True}),
        ("lossless-q0", {"lossless": True, "quality": 0}),
        ("icc-srgb", {"icc_profile": _srgb_icc()}),
        ("exif-orientation-6", {"exif": _exif(6)}),
    ]
    for i, (variant, opts) in enumerate(variants):
        for k, side in enumerate((90, 240)):
            name = COLOUR_PHOTOS[(2 * i + k) % len(COLOUR_PHOTOS)]
            b.save("webp", f"webp_{variant}_{name}", ".webp", _fit(name, side), "WEBP", variant, **opts)
    for name in ("rocket", "chelsea"):
        rgba = _as_mode(_fit(name, 160), "RGBA")
        b.save("webp", f"webp_lossy-alpha_{name}", ".webp", rgba, "WEBP", "lossy-alpha", quality=70)
        b.save("webp", f"webp_lossless-alpha_{name}", ".webp", rgba, "WEBP", "lossless-alpha", lossless=True)
    b.save("webp", "webp_alpha-quality-10", ".webp", _as_mode(_fit("coffee", 150), "RGBA"), "WEBP",
           "alpha-quality-10", alpha_quality=10, exact=True)
    b.save("webp", "webp_from-grey", ".webp", _fit("camera", 160), "WEBP", "from-L")

    frames = [_fit(n, 96).resize((96, 64)) for n in COLOUR_PHOTOS[:4]]
    b.save("webp", "webp_animated-lossy", ".webp", frames[0], "WEBP", "animated", save_all=True,
           append_images=frames[1:], duration=100, loop=0, quality=60)
    b.save("webp", "webp_animated-lossless", ".webp", frames[0], "WEBP", "animated-lossless",
           save_all=True, append_images=frames[1:], duration=[40, 80, 120, 160], lossless=True)
    rgba = [_as_mode(f, "RGBA") for f in frames]
    b.save("webp", "webp_animated-alpha", ".webp", rgba[0], "WEBP", "animated-alpha", save_all=True,
           append_images=rgba[1:], duration=100, background=(0, 0, 0, 0))


def _tiff_family(b: _Builder) -> None:
    compressions = ["raw", "lzw", "tiff_deflate", "tiff_adobe_deflate", "jpeg", "packbits"]
    if not features.check("libtiff"):
        compressions = ["raw"]  # Pillow's own writer only does uncompressed data
    modes = ["1", "L", "LA", "P", "RGB", "RGBA", "CMYK", "I;16", "I", "F"]
    jpeg_modes = {"L", "RGB", "RGBA", "CMYK"}  # libtiff's JPEG codec takes 8-bit samples only
    i = 0
    for comp in compressions:
        for mode in modes:
            if comp == "jpeg" and mode not in jpeg_modes:
                continue
            i += 1
            name = COLOUR_PHOTOS[i % len(COLOUR_PHOTOS)]
            im = _as_mode(_fit(name, (64, 128, 200)[i % 3]), mode)
            b.save("tiff", f"tiff_{comp}_{mode}", ".tif", im, "TIFF", f"{comp}-{mode}", compression=comp)
    if features.check("libtiff"):
        for comp in ("group3", "group4", "tiff_ccitt"):  # fax compressions, bilevel only
            b.save("tiff", f"tiff_{comp}_1", ".tif", _as_mode(_fit("camera", 200), "1"), "TIFF",
                   f"{comp}-1", compression=comp)
        b.save("tiff", "tiff_jpeg-quality-30", ".tif", _fit("hubble", 200), "TIFF", "jpeg-q30",
               compression="jpeg", quality=30)
        b.save("tiff", "tiff_lzw_YCbCr", ".tif", _fit("coffee", 120).convert("YCbCr"), "TIFF",
               "lzw-YCbCr", compression="lzw")

    # multipage documents
    pages = [_fit(n, 120) for n in COLOUR_PHOTOS[:4]]
    b.save("tiff", "tiff_multipage-4", ".tif", pages[0], "TIFF", "multipage", save_all=True,
           append_images=pages[1:], compression="lzw" if features.check("libtiff") else "raw")
    mixed = [_fit("camera", 100), _fit("rocket", 150), _as_mode(_fit("coins", 80), "1")]
    b.save("tiff", "tiff_multipage-mixed-modes", ".tif", mixed[0], "TIFF", "multipage-mixed",
           save_all=True, append_images=mixed[1:])
    # metadata and container variants
    b.save("tiff", "tiff_bigtiff", ".tif", _fit("retina", 150), "TIFF", "bigtiff", big_tiff=True)
    b.save("tiff", "tiff_icc-srgb", ".tif", _fit("ihc", 150), "TIFF", "icc-srgb", icc_profile=_srgb_icc())
    b.save("tiff", "tiff_dpi", ".tif", _fit("chelsea", 150), "TIFF", "dpi-600", dpi=(600, 600))
    b.save("tiff", "tiff_exif-orientation-6", ".tif", _fit("coffee", 150), "TIFF", "exif-6", exif=_exif(6))
    b.save("tiff", "tiff_extension-tiff", ".tiff", _fit("rocket", 120), "TIFF", "ext.tiff")
    b.save("tiff", "tiff_extension-TIF", ".TIF", _fit("astronaut", 120), "TIFF", "ext.TIF")


def _bitmap_family(b: _Builder) -> None:
    """BMP/DIB, ICO, ICNS, TGA, PCX, QOI, SGI, MSP, XBM, IM, SPIDER, DDS, BLP."""
    for mode in ("1", "L", "P", "RGB", "RGBA"):
        for name, side in (("astronaut", 64), ("rocket", 200)):
            b.save("other", f"bmp_{mode}_{name}", ".bmp", _as_mode(_fit(name, side), mode), "BMP", mode)
    # a top-down BMP (negative height), which Pillow reads but does not write
    data = bytearray(_encode(_fit("coffee", 101), "BMP"))
    width, height = struct.unpack("<ii", data[18:26])
    offset, stride = struct.unpack("<I", data[10:14])[0], (width * 3 + 3) // 4 * 4
    rows = [data[offset + r * stride: offset + (r + 1) * stride] for r in range(height)]
    data[22:26] = struct.pack("<i", -height)
    data[offset:] = b"".join(reversed(rows))
    b.write("other", "bmp_top-down", ".bmp", bytes(data), "BMP", "top-down", OK)
    for mode in ("1", "P", "RGB"):
        b.save("other", f"dib_{mode}", ".dib", _as_mode(_fit("chelsea", 100), mode), "DIB", mode)

    icon = _as_mode(_fit("astronaut", 256), "RGBA")
    b.save("other", "ico_multi-size", ".ico", icon, "ICO", "sizes-16-256")
    b.save("other", "ico_16-32", ".ico", icon, "ICO", "sizes-16-32", sizes=[(16, 16), (32, 32)])
    b.save("other", "ico_bmp-entries", ".ico", icon, "ICO", "bmp-entries", sizes=[(32, 32), (48, 48)],
           bitmap_format="bmp")
    b.save("other", "ico_rgb-48", ".ico", _fit("rocket", 48), "ICO", "rgb-48")
    b.save("other", "icns_gradient", ".icns", _as_mode(_synthetic("radial", 128, 128, b.rng), "RGBA"),
           "ICNS", "gradient")
    b.save("other", "icns_photo", ".icns", _fit("ihc", 128).crop((0, 0, 128, 128)), "ICNS", "photo")

    for mode in ("L", "LA", "P", "RGB", "RGBA"):
        for rle in (False, True):
            variant = f"{mode}{'-rle' if rle else ''}"
            b.save("other", f"tga_{variant}", ".tga", _as_mode(_fit("motorcycle", 150), mode), "TGA",
                   variant, rle=rle)
    b.save("other", "tga_top-left-origin", ".tga", _fit("chelsea", 120), "TGA", "top-left", orientation=1)
    b.save("other", "tga_id-section", ".tga", _fit("coins", 120), "TGA", "id-section", id_section=b"corpus")

    for mode in ("1", "L", "P", "RGB"):
        b.save("other", f"pcx_{mode}", ".pcx", _as_mode(_fit("hubble", 140), mode), "PCX", mode)
    for mode, name in (("RGB", "coffee"), ("RGBA", "rocket"), ("RGB", "retina")):
        b.save("other", f"qoi_{mode}_{name}", ".qoi", _as_mode(_fit(name, 180), mode), "QOI", mode)
    for mode, ext in (("L", ".bw"), ("L", ".sgi"), ("RGB", ".rgb"), ("RGB", ".sgi"), ("RGBA", ".rgba")):
        b.save("other", f"sgi_{mode}", ext, _as_mode(_fit("astronaut", 128), mode), "SGI", f"{mode}-{ext[1:]}")
    b.save("other", "sgi_RGB-16bit", ".sgi", _fit("chelsea", 100), "SGI", "RGB-16bit", bpc=2)
    for name in ("camera", "coffee"):
        b.save("other", f"msp_{name}", ".msp", _as_mode(_fit(name, 128), "1"), "MSP", "1")
        b.save("other", f"xbm_{name}", ".xbm", _as_mode(_fit(name, 96), "1"), "XBM", "1")
    for mode in ("1", "L", "LA", "P", "I", "I;16", "F", "RGB", "RGBA", "CMYK", "YCbCr"):
        b.save("other", f"im_{mode}", ".im", _as_mode(_fit("rocket", 100), mode), "IM", mode)
    for name in ("moon", "coins"):
        # SPIDER has no registered file extension; ".spi" is what EM software uses
        b.save("other", f"spider_F_{name}", ".spi", _as_mode(_fit(name, 128), "F"), "SPIDER", "F")

    for mode in ("L", "LA", "RGB", "RGBA"):
        b.save("other", f"dds_{mode}", ".dds", _as_mode(_fit("ihc", 64), mode), "DDS", mode)
    for pixel_format, mode in (("DXT1", "RGBA"), ("DXT3", "RGBA"), ("DXT5", "RGBA"), ("BC2", "RGBA"),
                               ("BC3", "RGBA"), ("BC5", "RGB")):
        b.save("other", f"dds_{pixel_format}", ".dds", _as_mode(_fit("chelsea", 96).crop((0, 0, 96, 64)), mode),
               "DDS", pixel_format, pixel_format=pixel_format)
    for version in ("BLP1", "BLP2"):  # Pillow's BLP writer is pure Python: keep these small
        b.save("other", f"blp_{version}", ".blp", _as_mode(_fit("coffee", 64), "P"), "BLP", version,
               blp_version=version)


def _codec_family(b: _Builder) -> None:
    """JPEG 2000, AVIF, MPO, the PPM family, and EPS/PDF/PALM."""
    j2k = [
        ("lossless", ".jp2", "astronaut", "RGB", {}),
        ("irreversible", ".jp2", "coffee", "RGB", {"irreversible": True, "quality_mode": "rates",
                                                   "quality_layers": [40]}),
        ("quality-layers", ".jp2", "rocket", "RGB", {"quality_layers": [80, 40, 10]}),
        ("codestream", ".j2k", "chelsea", "RGB", {}),
        ("grey", ".jp2", "camera", "L", {}),
        ("alpha", ".jp2", "ihc", "RGBA", {}),
        ("16bit", ".jp2", "moon", "I;16", {}),
        ("tiled", ".jp2", "retina", "RGB", {"tile_size": (64, 64)}),
        ("rpcl-progression", ".jp2", "hubble", "RGB", {"progression": "RPCL"}),
        ("one-resolution", ".j2k", "motorcycle", "RGB", {"num_resolutions": 1}),
    ]
    for variant, ext, name, mode, opts in j2k:
        b.save("other", f"jpeg2000_{variant}", ext, _as_mode(_fit(name, 160), mode), "JPEG2000", variant, **opts)

    avif = [
        ("q30", "rocket", "RGB", {"quality": 30}),
        ("q75", "astronaut", "RGB", {}),
        ("q95-444", "coffee", "RGB", {"quality": 95, "subsampling": "4:4:4"}),
        ("alpha", "chelsea", "RGBA", {}),
        ("grey", "camera", "L", {}),
        ("exif-orientation-6", "motorcycle", "RGB", {"exif": _exif(6)}),
        ("icc-srgb", "ihc", "RGB", {"icc_profile": _srgb_icc()}),
    ]
    for variant, name, mode, opts in avif:
        b.save("other", f"avif_{variant}", ".avif", _as_mode(_fit(name, 160), mode), "AVIF", variant,
               speed=8, max_threads=1, **opts)
    frames = [_fit(n, 80).resize((80, 60)) for n in COLOUR_PHOTOS[:3]]
    if b.can("AVIF"):
        anim = _encode(frames[0], "AVIF", save_all=True, append_images=frames[1:], duration=100, speed=10,
                       max_threads=1)
        b.write("other", "avif_animated", ".avif", _pin_isobmff_times(anim), "AVIF", "animated", OK)

    b.save("other", "mpo_single", ".mpo", _fit("coffee", 160), "MPO", "single")
    left, right = _photo("motorcycle").crop((0, 0, 700, 500)), _photo("motorcycle").crop((41, 0, 741, 500))
    b.save("other", "mpo_stereo-pair", ".mpo", left.resize((210, 150)), "MPO", "stereo-2",
           save_all=True, append_images=[right.resize((210, 150))])
    b.save("other", "mpo_3-frames", ".mpo", _fit("rocket", 120), "MPO", "frames-3", save_all=True,
           append_images=[_fit("rocket", 120).rotate(5), _fit("rocket", 120).rotate(10)])

    ppm = [(".ppm", "RGB", "astronaut"), (".pgm", "L", "camera"), (".pbm", "1", "coins"),
           (".pgm", "I;16", "moon"), (".pfm", "F", "camera"), (".pnm", "RGB", "chelsea")]
    for ext, mode, name in ppm:
        b.save("other", f"ppm_{mode}_{ext[1:]}", ext, _as_mode(_fit(name, 140), mode), "PPM", f"{mode}-{ext[1:]}")
    # plain (ASCII) variants, which Pillow reads but only writes in binary form
    grey = np.asarray(_fit("coins", 24))
    rgb = np.asarray(_fit("chelsea", 16))
    bits = (grey > 128).astype(np.uint8)
    plain = [
        ("P1", ".pbm", bits, 0),
        ("P2", ".pgm", grey, 255),
        ("P3", ".ppm", rgb, 255),
    ]
    for magic, ext, arr, maxval in plain:
        h, w = arr.shape[:2]
        head = f"{magic}\n# plain corpus file\n{w} {h}\n" + (f"{maxval}\n" if maxval else "")
        body = "\n".join(" ".join(str(v) for v in row.ravel()) for row in arr)
        b.write("other", f"ppm_plain-{magic}", ext, (head + body + "\n").encode(), "PPM", f"plain-{magic}", OK)

    # EPS: Pillow parses the header, but decoding needs Ghostscript
    for mode in ("RGB", "L", "CMYK"):
        b.save("other", f"eps_{mode}", ".eps", _as_mode(_fit("rocket", 100), mode), "EPS", mode, EITHER)
    # written by Pillow, never read by it
    stamp = time.gmtime(1704067200)  # fixed dates keep the PDF bytes stable
    b.save("other", "pdf_RGB", ".pdf", _fit("astronaut", 150), "PDF", "RGB", ERROR,
           creationDate=stamp, modDate=stamp)
    b.save("other", "pdf_multipage", ".pdf", _fit("coffee", 120), "PDF", "multipage", ERROR, save_all=True,
           append_images=[_fit("chelsea", 120)], creationDate=stamp, modDate=stamp)
    b.save("other", "palm_P", ".palm", _fit("rocket", 80).convert("P", palette=Image.Palette.WEB), "PALM",
           "P", ERROR)
    b.save("other", "palm_1", ".palm", _as_mode(_fit("camera", 80), "1"), "PALM", "1", ERROR)


# --------------------------------------------------------------------------
# Odd sizes, names and extensions
# --------------------------------------------------------------------------

_ODD_FORMATS = [("JPEG", ".jpg"), ("PNG", ".png"), ("GIF", ".gif"), ("WEBP", ".webp"), ("TIFF", ".tif"),
                ("BMP", ".bmp"), ("QOI", ".qoi"), ("TGA", ".tga"), ("PPM", ".ppm")]
_ODD_SIZES = [(1, 1), (2, 3), (7, 5), (3000, 4), (4, 3000), (1200, 20)]


def _odd_sizes(b: _Builder) -> None:
    for fi, (fmt, ext) in enumerate(_ODD_FORMATS):
        for si, (w, h) in enumerate(_ODD_SIZES):
            name = COLOUR_PHOTOS[(fi + si) % len(COLOUR_PHOTOS)]
            b.save("odd", f"{fmt.lower()}_size-{w}x{h}", ext, _sized(name, (w, h)), fmt, f"{w}x{h}")
    for fmt, ext, opts in (("AVIF", ".avif", {"speed": 10, "max_threads": 1}), ("JPEG2000", ".jp2", {})):
        for w, h in ((1, 1), (2, 3), (7, 5), (1200, 20)):
            b.save("odd", f"{fmt.lower()}_size-{w}x{h}", ext, _sized("coffee", (w, h)), fmt, f"{w}x{h}", **opts)
    # a handful of mid-size photos (about 1.5 MP)
    big = [
        ("JPEG", ".jpg", "retina", (1500, 1000), {"quality": 85}),
        ("JPEG", ".jpg", "motorcycle", (1000, 1500), {"progressive": True}),
        ("PNG", ".png", "hubble", (1500, 1000), {}),
        ("WEBP", ".webp", "coffee", (1500, 1000), {}),
        ("TIFF", ".tif", "astronaut", (1200, 1200), {"compression": "jpeg"} if features.check("libtiff") else {}),
        ("GIF", ".gif", "rocket", (1500, 1000), {}),
    ]
    for fmt, ext, name, size, opts in big:
        b.save("odd", f"{fmt.lower()}_mid-size-{size[0]}x{size[1]}", ext, _sized(name, size), fmt,
               f"{size[0]}x{size[1]}", **opts)
    # a 1-pixel-wide colour strip and a flat single-colour image
    b.save("odd", "png_size-1x400", ".png", _sized("ihc", (1, 400)), "PNG", "1x400")
    b.save("odd", "jpeg_solid-colour", ".jpg", _synthetic("solid", 200, 150, b.rng), "JPEG", "solid")


def _wrong_extensions(b: _Builder) -> None:
    """Valid images whose extension lies about the format (Pillow sniffs the content)."""
    cases = [
        ("PNG", ".jpg"), ("JPEG", ".png"), ("GIF", ".jpg"), ("WEBP", ".jpg"), ("WEBP", ".png"),
        ("TIFF", ".jpg"), ("BMP", ".jpg"), ("JPEG", ".tif"), ("PNG", ".webp"), ("JPEG", ".gif"),
        ("AVIF", ".jpg"), ("JPEG", ".heic"), ("JPEG", ".avif"), ("PNG", ".bmp"),
    ]
    for i, (fmt, ext) in enumerate(cases):
        if not b.can(fmt):
            continue
        name = COLOUR_PHOTOS[i % len(COLOUR_PHOTOS)]
        opts = {"speed": 10, "max_threads": 1} if fmt == "AVIF" else {}
        b.write("wrong_ext", f"{fmt.lower()}_named-{ext[1:]}", ext, _encode(_fit(name, 120), fmt, **opts),
                fmt, f"named{ext}", OK)
    for ext, fmt in ((".PNG", "PNG"), (".Png", "PNG"), (".WEBP", "WEBP"), (".GIF", "GIF"), (".BMP", "BMP")):
        b.save("wrong_ext", f"{fmt.lower()}_upper-case-{ext[1:]}", ext, _fit("chelsea", 100), fmt, f"ext{ext}")


def _odd_names(b: _Builder) -> None:
    """Valid JPEG/PNG files with names that trip up naive path handling or output encoding."""
    jpeg = _encode(_fit("astronaut", 100), "JPEG")
    png = _encode(_fit("coffee", 90), "PNG")
    names = [
        ("IMG 0001 (copy)", ".jpg", jpeg, "JPEG", "spaces-parentheses"),
        ("photo ünïcødé 写真 📷", ".jpg", jpeg, "JPEG", "unicode"),
        ("-leading-dash", ".jpg", jpeg, "JPEG", "leading-dash"),
        ("many.dots.in.the.name", ".png", png, "PNG", "dots"),
        ("quote's, comma; and \"double\"", ".png", png, "PNG", "quotes-comma"),
        ("percent %20 hash # ampersand &", ".jpg", jpeg, "JPEG", "url-chars"),
        ("long-" + "x" * 180, ".jpg", jpeg, "JPEG", "long-name"),
    ]
    for stem, ext, data, fmt, variant in names:
        path = b.new_path("names", stem, ext, slug=False)
        path.write_bytes(data)
        b.record(path, fmt, f"name-{variant}", OK)
    # a name that is not valid UTF-8 (Latin-1 "é"), as old archives contain
    path = b.new_path("names", "latin1-cafe", ".jpg")
    raw = os.fsencode(path.parent) + b"/" + os.fsencode(path.name).replace(b"cafe", b"caf\xe9", 1)
    try:
        with open(raw, "wb") as fh:
            fh.write(jpeg)
    except OSError:  # some filesystems insist on UTF-8 names
        return
    b.record(Path(os.fsdecode(raw)), "JPEG", "name-not-utf8", OK)


# --------------------------------------------------------------------------
# Broken files, bombs and special paths
# --------------------------------------------------------------------------

_TRUNCATE_AT = (0.005, 0.10, 0.50, 0.90, 0.99)


def _flip_bits(data: bytes, n: int, rng: np.random.Generator, skip: int) -> bytes:
    """Flip `n` random bits after the first `skip` bytes (so the header stays recognisable)."""
    out = bytearray(data)
    for pos in rng.integers(skip, len(out), n):
        out[pos] ^= 1 << int(rng.integers(8))
    return bytes(out)


def _broken(b: _Builder) -> None:
    rng = b.rng
    libtiff = features.check("libtiff")
    sources = {  # two different files per format: (label, encoded bytes)
        "jpeg": [("baseline", _encode(_fit("astronaut", 200), "JPEG", quality=85)),
                 ("progressive", _encode(_fit("coffee", 200), "JPEG", progressive=True))],
        "png": [("rgb", _encode(_fit("rocket", 160), "PNG")),
                ("palette", _encode(_as_mode(_fit("chelsea", 160), "P"), "PNG"))],
        "gif": [("static", _encode(_fit("motorcycle", 160), "GIF")),
                ("animated", _encode(_fit("coffee", 80), "GIF", save_all=True,
                                     append_images=[_fit("rocket", 80).resize((80, 53))], duration=100))],
        "webp": [("lossy", _encode(_fit("hubble", 160), "WEBP")),
                 ("lossless", _encode(_fit("ihc", 120), "WEBP", lossless=True))],
        "tiff": [("raw", _encode(_fit("retina", 120), "TIFF")),
                 ("lzw", _encode(_fit("astronaut", 120), "TIFF", compression="lzw" if libtiff else "raw"))],
    }
    ext = {"jpeg": ".jpg", "png": ".png", "gif": ".gif", "webp": ".webp", "tiff": ".tif"}

    # truncated copies: up to 90% the file is certainly incomplete; at 99% a decoder
    # may or may not notice, depending on what the last 1% held
    for fam, items in sources.items():
        for label, data in items:
            for frac in _TRUNCATE_AT:
                cut = max(1, int(len(data) * frac))
                pct = f"{frac * 100:g}%"
                # only the first frame is decoded, so a cut late in an animation may spare it
                unsure = frac > 0.95 or (label == "animated" and frac >= 0.5)
                b.write("broken", f"{fam}_{label}_truncated-{pct.replace('%', 'pct')}", ext[fam], data[:cut],
                        "broken", f"{fam}-{label}-truncated-{pct}", EITHER if unsure else ERROR)
    # other formats cut in half: the pixel data is gone, except that JPEG 2000 is
    # designed to decode from a truncated code stream at lower quality
    # (a multi-frame file may keep its first frame intact)
    halves = [  # (label, extension, format, image, save options, expect)
        ("bmp", ".bmp", "BMP", _fit("rocket", 120), {}, ERROR),
        ("qoi", ".qoi", "QOI", _fit("coffee", 120), {}, ERROR),
        ("tga", ".tga", "TGA", _fit("chelsea", 120), {}, ERROR),
        ("pcx", ".pcx", "PCX", _fit("coins", 120), {}, ERROR),
        ("ppm", ".ppm", "PPM", _fit("astronaut", 120), {}, ERROR),
        ("ico", ".ico", "ICO", _as_mode(_fit("ihc", 64), "RGBA"), {}, ERROR),
        ("avif", ".avif", "AVIF", _fit("rocket", 120), {"speed": 10, "max_threads": 1}, ERROR),
        ("jpeg2000", ".jp2", "JPEG2000", _fit("retina", 120), {}, EITHER),
        ("tiff-multipage", ".tif", "TIFF", _fit("coffee", 80),
         {"save_all": True, "append_images": [_fit("rocket", 80)]}, EITHER),
        ("apng", ".png", "PNG", _fit("coffee", 80),
         {"save_all": True, "append_images": [_fit("rocket", 80).resize((80, 53))]}, EITHER),
    ]
    for label, e, fmt, im, opts, expect in halves:
        if b.can(fmt):
            data = _encode(im, fmt, **opts)
            b.write("broken", f"{label}_truncated-50pct", e, data[: len(data) // 2], "broken",
                    f"{label}-truncated-50%", expect)

    # random bit flips in the body
    for fam, items in sources.items():
        data = items[0][1]
        for n in (1, 10, 200):
            b.write("broken", f"{fam}_bitflip-{n}", ext[fam], _flip_bits(data, n, rng, len(data) // 10),
                    "broken", f"{fam}-bitflip-{n}", EITHER)
    bmp = _encode(_fit("coffee", 100), "BMP")
    b.write("broken", "bmp_bitflip-50", ".bmp", _flip_bits(bmp, 50, rng, 54), "broken", "bmp-bitflip-50", EITHER)

    # header only, and a valid header followed by random bytes
    jpeg = sources["jpeg"][0][1]
    png = sources["png"][0][1]
    tiff = sources["tiff"][0][1]
    gif = sources["gif"][0][1]
    with Image.open(io.BytesIO(tiff)) as t:
        tiff_data_start = int(t.tag_v2[273][0])  # StripOffsets: where the pixels start
    headers = {
        "jpeg": (jpeg, _jpeg_markers(jpeg)[0xDA]),  # everything before the start of scan
        "png": (png, _png_chunk_offsets(png)[b"IDAT"]),  # signature + IHDR (+ ancillary chunks)
        "gif": (gif, 13 + _gif_colour_table_size(gif)),  # header, screen descriptor, colour table
        "webp": (sources["webp"][0][1], 30),  # RIFF + VP8 chunk header + frame header
        "tiff": (tiff, tiff_data_start),
        "bmp": (bmp, 54),
    }
    for fam, (data, n) in headers.items():
        e = ext.get(fam, ".bmp")
        b.write("broken", f"{fam}_header-only", e, data[:n], "broken", f"{fam}-header-only", ERROR)
        b.write("broken", f"{fam}_header-then-garbage", e, data[:n] + rng.bytes(len(data) - n), "broken",
                f"{fam}-header-then-garbage", EITHER)

    # empty files and random bytes behind image extensions
    for e in (".jpg", ".png", ".gif", ".webp", ".tif", ".bmp", ".heic"):
        b.write("broken", f"empty{e.replace('.', '-')}", e, b"", "broken", f"empty{e}", ERROR)
    for size, e in [(1, ".jpg"), (7, ".png"), (64, ".gif"), (512, ".webp"), (1000, ".tif"), (4096, ".jpg"),
                    (4096, ".png"), (10000, ".bmp"), (20000, ".avif"), (65536, ".jpg"), (3000, ".jp2"),
                    (2000, ".ico"), (5000, ".tga")]:
        b.write("broken", f"random-bytes-{size}{e.replace('.', '-')}", e, rng.bytes(size), "broken",
                f"random-{size}{e}", ERROR)

    # documents that are not images, named like images
    html = b"<!DOCTYPE html>\n<html><head><title>404 Not Found</title></head>\n<body><h1>Not Found</h1></body></html>\n"
    lfs = (b"version https://git-lfs.github.com/spec/v1\n"
           b"oid sha256:4d7a214614ab2935c943f9e0ff69d22eadbb8f32b1258daaa5e2ca24d17e2393\nsize 48213\n")
    svg = b'<?xml version="1.0"?>\n<svg xmlns="http://www.w3.org/2000/svg" width="10" height="10"><rect width="10" height="10"/></svg>\n'
    docs = [
        ("text", ".jpg", b"this is not a picture\n" * 5),
        ("text", ".png", "notes: ünïcødé text, not pixels\n".encode()),
        ("html-404", ".jpg", html),
        ("html-404", ".png", html),
        ("json", ".jpg", json.dumps({"error": "unauthorized", "status": 401}).encode()),
        ("json", ".png", json.dumps([{"url": "https://example.com/a.png"}] * 20).encode()),
        ("git-lfs-pointer", ".jpg", lfs),
        ("git-lfs-pointer", ".png", lfs),
        ("svg", ".png", svg),
        ("csv", ".gif", b"a,b,c\n1,2,3\n" * 50),
        ("gzip-of-jpeg", ".jpg", gzip.compress(jpeg, mtime=0)),
        ("pdf", ".jpg", b"%PDF-1.4\n1 0 obj << /Type /Catalog >> endobj\ntrailer << /Root 1 0 R >>\n%%EOF\n"),
    ]
    for kind, e, data in docs:
        b.write("broken", f"{kind}_named{e.replace('.', '-')}", e, data, "broken", f"{kind}-as{e}", ERROR)

    # structural damage
    ihdr = _png_chunk_offsets(png)[b"IHDR"]
    bad_crc = bytearray(png)
    bad_crc[ihdr + 8 + 13] ^= 0xFF  # first byte of IHDR's CRC
    zero_w = _png_file(0, 10, 8, 0, zlib.compress(b"\x00" * 10))
    idat = _png_chunk_offsets(png)[b"IDAT"]
    bad_idat_crc = bytearray(png)
    bad_idat_crc[idat + 8 + struct.unpack(">I", png[idat:idat + 4])[0]] ^= 0xFF
    bmp_off = bytearray(bmp)
    bmp_off[10:14] = struct.pack("<I", 10_000_000)
    tiff_ifd = bytearray(tiff)
    tiff_ifd[4:8] = struct.pack("<I", len(tiff) + 100_000)
    riff = bytearray(sources["webp"][0][1])
    riff[4:8] = struct.pack("<I", 0x7FFFFFF0)
    damage = [
        ("jpeg_soi-eoi-only", ".jpg", b"\xff\xd8\xff\xd9", ERROR),
        ("jpeg_no-eoi", ".jpg", jpeg[:-2], EITHER),
        ("jpeg_zero-height", ".jpg", _patch_jpeg_size(jpeg, 200, 0), ERROR),
        ("png_bad-ihdr-crc", ".png", bytes(bad_crc), ERROR),
        ("png_bad-idat-crc", ".png", bytes(bad_idat_crc), EITHER),
        ("png_zero-width", ".png", zero_w, ERROR),
        ("png_no-iend", ".png", png[:-12], EITHER),
        ("png_signature-only", ".png", PNG_SIGNATURE, ERROR),
        ("png_idat-zeroed", ".png", png[: len(png) // 2] + bytes(64) + png[len(png) // 2 + 64:], EITHER),
        ("gif_no-trailer", ".gif", sources["gif"][0][1][:-1], EITHER),
        ("webp_riff-size-too-big", ".webp", bytes(riff), EITHER),
        ("tiff_ifd-past-eof", ".tif", bytes(tiff_ifd), ERROR),
        ("bmp_pixels-past-eof", ".bmp", bytes(bmp_off), ERROR),
    ]
    for stem, e, data, expect in damage:
        b.write("broken", stem, e, data, "broken", stem.replace("_", "-", 1), expect)
    # two PNGs back to back still start with a complete PNG
    b.write("broken", "png_two-concatenated", ".png", png + sources["png"][1][1], "PNG", "two-concatenated", OK)


def _bombs(b: _Builder) -> None:
    """Small files whose headers claim more pixels than the scanner's 179 MP limit."""
    b.write("bomb", "png_bomb-20000x20000", ".png", _zero_png(20000, 20000), "bomb", "png-20000x20000-valid", ERROR)
    b.write("bomb", "png_bomb-15000x12000", ".png", _zero_png(15000, 12000), "bomb", "png-180MP-valid", ERROR)
    b.write("bomb", "png_bomb-100000x100000", ".png", _png_file(100000, 100000, 8, 0, zlib.compress(b"\x00" * 16)),
            "bomb", "png-100000x100000-header", ERROR)
    # a GIF declaring a 65535x65535 screen and frame, with an empty LZW stream
    gif = (b"GIF89a" + struct.pack("<HHBBB", 65535, 65535, 0x80, 0, 0) + b"\x00\x00\x00\xff\xff\xff"
           + b"," + struct.pack("<HHHHB", 0, 0, 65535, 65535, 0) + b"\x02\x01\x2c\x00" + b";")
    b.write("bomb", "gif_bomb-65535x65535", ".gif", gif, "bomb", "gif-65535x65535-header", ERROR)
    small = _encode(_fit("coins", 64), "JPEG")
    b.write("bomb", "jpeg_bomb-60000x60000", ".jpg", _patch_jpeg_size(small, 60000, 60000), "bomb",
            "jpeg-60000x60000-header", ERROR)


def _special(b: _Builder, valid_target: Path) -> None:
    """A directory, symlinks (loop, dangling, to a valid image, chained) and a FIFO."""
    d = b.root / "special"
    d.mkdir(parents=True, exist_ok=True)
    folder = d / "dir_named_like.jpg"
    folder.mkdir()
    b.record(folder, "special", "directory", ERROR)
    if hasattr(os, "symlink"):
        loop = d / "loop.jpg"
        os.symlink("loop.jpg", loop)
        b.record(loop, "special", "symlink-loop", ERROR)
        dangling = d / "dangling.png"
        os.symlink("does_not_exist.png", dangling)
        b.record(dangling, "special", "symlink-dangling", ERROR)
        link = d / "link_to_valid.jpg"
        os.symlink(os.path.relpath(valid_target, d), link)
        b.record(link, "special", "symlink-to-valid", OK)
        chain = d / "link_to_link.jpg"
        os.symlink("link_to_valid.jpg", chain)
        b.record(chain, "special", "symlink-chain", OK)
        empty = d / "empty_target.png"
        empty.write_bytes(b"")
        b.record(empty, "broken", "empty-symlink-target", ERROR)
        to_empty = d / "link_to_empty.png"
        os.symlink("empty_target.png", to_empty)
        b.record(to_empty, "special", "symlink-to-empty", ERROR)
    if hasattr(os, "mkfifo"):
        fifo = d / "fifo.jpg"
        os.mkfifo(fifo)
        b.record(fifo, "special", "fifo", ERROR)


# --------------------------------------------------------------------------
# Random valid images to fill the corpus up
# --------------------------------------------------------------------------

# (format, extension, weight, modes it accepts)
_RANDOM_FORMATS = [
    ("JPEG", ".jpg", 30, ("RGB", "RGB", "RGB", "L", "CMYK")),
    ("PNG", ".png", 22, ("RGB", "RGB", "RGBA", "L", "LA", "P", "1", "I;16")),
    ("WEBP", ".webp", 12, ("RGB", "RGB", "RGBA")),
    ("GIF", ".gif", 6, ("RGB", "L", "P")),
    ("TIFF", ".tif", 8, ("RGB", "RGBA", "L", "CMYK", "1", "I;16")),
    ("BMP", ".bmp", 5, ("RGB", "RGBA", "L", "P", "1")),
    ("TGA", ".tga", 3, ("RGB", "RGBA", "L", "P")),
    ("QOI", ".qoi", 2, ("RGB", "RGBA")),
    ("PPM", ".ppm", 2, ("RGB",)),
    ("PCX", ".pcx", 2, ("RGB", "L", "P")),
    ("SGI", ".sgi", 1, ("RGB", "RGBA", "L")),
    ("JPEG2000", ".jp2", 3, ("RGB", "L")),
    ("AVIF", ".avif", 3, ("RGB", "RGBA")),
]


def _random_options(fmt: str, rng: np.random.Generator) -> dict:
    if fmt == "JPEG":
        return {"quality": int(rng.integers(5, 99)), "progressive": bool(rng.random() < 0.3),
                "subsampling": int(rng.integers(0, 3))}
    if fmt == "PNG":
        return {"compress_level": int(rng.integers(1, 10))}
    if fmt == "WEBP":
        return {"lossless": True} if rng.random() < 0.25 else {"quality": int(rng.integers(10, 100))}
    if fmt == "TIFF" and features.check("libtiff"):
        return {"compression": ["raw", "lzw", "tiff_deflate", "packbits"][int(rng.integers(4))]}
    if fmt == "TGA":
        return {"rle": bool(rng.random() < 0.5)}
    if fmt == "JPEG2000":
        return {"irreversible": bool(rng.random() < 0.5)}
    if fmt == "AVIF":
        return {"quality": int(rng.integers(20, 95)), "speed": 10, "max_threads": 1}
    return {}


def _random_image(rng: np.random.Generator) -> tuple[Image.Image, str]:
    """A random crop of a photo (or a synthetic picture), rescaled to 16-400 px on its longer side."""
    side = int(round(np.exp(rng.uniform(np.log(16), np.log(400)))))
    if rng.random() < 0.12:
        kind = ["gradient", "radial", "noise", "checker", "solid"][int(rng.integers(5))]
        aspect = rng.uniform(0.5, 2.0)
        w, h = (side, max(1, round(side / aspect))) if aspect >= 1 else (max(1, round(side * aspect)), side)
        return _synthetic(kind, w, h, rng), kind
    name = (COLOUR_PHOTOS + GREY_PHOTOS)[int(rng.integers(len(COLOUR_PHOTOS) + len(GREY_PHOTOS)))]
    src = _fit(name, 640)  # crop from a moderate size copy: fast and still detailed
    cw = int(rng.integers(max(8, src.width // 5), src.width + 1))
    ch = int(rng.integers(max(8, src.height // 5), src.height + 1))
    x0, y0 = int(rng.integers(0, src.width - cw + 1)), int(rng.integers(0, src.height - ch + 1))
    crop = src.crop((x0, y0, x0 + cw, y0 + ch))
    scale = side / max(cw, ch)
    size = (max(1, round(cw * scale)), max(1, round(ch * scale)))
    resample = [Image.Resampling.NEAREST, Image.Resampling.BILINEAR, Image.Resampling.LANCZOS][int(rng.integers(3))]
    crop = crop.resize(size, resample)
    if rng.random() < 0.15:
        crop = crop.transpose([Image.Transpose.ROTATE_90, Image.Transpose.FLIP_LEFT_RIGHT][int(rng.integers(2))])
    return crop, name


def _random_fill(b: _Builder, target: int) -> None:
    formats = [f for f in _RANDOM_FORMATS if b.can(f[0])]
    weights = np.array([f[2] for f in formats], float)
    weights /= weights.sum()
    while len(b.entries) < target:
        fmt, ext, _, modes = formats[int(b.rng.choice(len(formats), p=weights))]
        mode = modes[int(b.rng.integers(len(modes)))]
        im, source = _random_image(b.rng)
        if mode == "P":
            im = _as_mode(im, "P", int(b.rng.integers(2, 257)))
        else:
            im = _as_mode(im, mode)
        opts = _random_options(fmt, b.rng)
        b.save("random", f"random_{fmt.lower()}_{mode}_{source}", ext, im, fmt, f"random-{mode}", **opts)


# --------------------------------------------------------------------------
# Public API
# --------------------------------------------------------------------------

def build_corpus(root: Path, *, seed: int = 0, verify: bool = False) -> list[CorpusEntry]:
    """Write the corpus into `root` (created if needed; must be empty) and return its entries.

    The same seed gives the same file names, entries and file contents. With
    `verify=True` every file is also decoded and an AssertionError lists entries
    whose outcome contradicts their `expect` (slow; meant for checking the generator).
    """
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    if any(root.iterdir()):
        raise FileExistsError(f"{root} is not empty")
    b = _Builder(root, seed)
    _jpeg_family(b)
    valid_jpeg = b.entries[0].path
    _png_family(b)
    _gif_family(b)
    _webp_family(b)
    _tiff_family(b)
    _bitmap_family(b)
    _codec_family(b)
    _odd_sizes(b)
    _wrong_extensions(b)
    _odd_names(b)
    _broken(b)
    _bombs(b)
    _special(b, valid_jpeg)
    _random_fill(b, TARGET_ENTRIES)
    if verify:
        problems = verify_corpus(b.entries)
        if problems:
            raise AssertionError("corpus entries contradict their expectation:\n" + "\n".join(problems))
    return b.entries


# --------------------------------------------------------------------------
# Verification (used by --verify; not part of a normal build)
# --------------------------------------------------------------------------

def _decode(path: Path, via_handle: bool) -> None:
    """Decode fully, as a scanner would; raises on any failure (including an empty size)."""
    fh = open(path, "rb") if via_handle else None
    try:
        with Image.open(fh or path) as im:
            if im.width <= 0 or im.height <= 0:
                raise ValueError(f"empty size {im.size}")
            im.load()
            try:
                ImageOps.exif_transpose(im)
            except Exception:  # scanners tolerate bad EXIF; only the pixels matter here
                pass
    finally:
        if fh:
            fh.close()


def verify_corpus(entries: list[CorpusEntry], slow_seconds: float = 2.0) -> list[str]:
    """Decode every regular file; return a line per entry whose outcome contradicts `expect`
    (or that took longer than `slow_seconds`). Special paths are skipped: a FIFO would block."""
    problems = []
    for e in entries:
        if e.fmt == "special" or not e.path.is_file():
            continue
        outcomes = []
        for via_handle in (False, True):
            t0 = time.perf_counter()
            try:
                _decode(e.path, via_handle)
                outcomes.append(None)
            except Exception as exc:  # noqa: BLE001 - any failure counts
                outcomes.append(f"{type(exc).__name__}: {exc}")
            dt = time.perf_counter() - t0
            if dt > slow_seconds:
                problems.append(f"SLOW {dt:.1f}s {e.path.name} ({e.variant})")
        if e.expect == OK and any(outcomes):
            problems.append(f"expected ok, failed: {e.path} ({e.variant}): {next(o for o in outcomes if o)}")
        if e.expect == ERROR and not all(outcomes):
            problems.append(f"expected error, decoded: {e.path} ({e.variant})")
    return problems


def _summary(entries: list[CorpusEntry], root: Path) -> str:
    size = sum(p.stat().st_size for p in root.rglob("*") if p.is_file() and not p.is_symlink())
    lines = [f"{len(entries)} entries, {size / 1e6:.1f} MB on disk"]
    lines.append("by expect: " + ", ".join(f"{k}={v}" for k, v in sorted(Counter(e.expect for e in entries).items())))
    lines.append("by fmt:")
    lines += [f"  {fmt:10s} {n:4d}" for fmt, n in sorted(Counter(e.fmt for e in entries).items())]
    skipped = skipped_writers()
    lines.append("writers skipped (not writable here): " + (", ".join(skipped) or "none"))
    return "\n".join(lines)


if __name__ == "__main__":
    import argparse

    parser = argparse.ArgumentParser(description="Build the image corpus into an empty directory.")
    parser.add_argument("root", type=Path)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--verify", action="store_true", help="decode every file and check its expectation")
    args = parser.parse_args()
    t0 = time.perf_counter()
    built = build_corpus(args.root, seed=args.seed)
    elapsed = time.perf_counter() - t0
    print(_summary(built, args.root))
    print(f"built in {elapsed:.1f} s")
    if args.verify:
        t0 = time.perf_counter()
        found = verify_corpus(built)
        print(f"verified in {time.perf_counter() - t0:.1f} s: {len(found)} problem(s)")
        for line in found:
            print("  " + line)
        raise SystemExit(1 if found else 0)
