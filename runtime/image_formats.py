"""Which image formats clipscan decodes: one registry, a safe default set, and the names users pass.

Pillow can open about 43 formats; some hand the file to another program (EPS and PostScript run
Ghostscript) and many are rarely used decoders with a history of bugs. clipscan tells Pillow exactly
which formats to try (`Image.open(..., formats=...)`), so a file of any other format is not even
identified by its plugin: it becomes an `unsupported_format` error row. Formats that shell out (EPS, PS,
PDF, WMF/EMF) and Pillow's stub formats (BUFR, GRIB, HDF5, MPEG) are not in the registry at all, so no
flag can enable them.

The folder walk (runtime/discover.py) picks files by the extensions of every registered format, enabled
or not, so a `.tga` in a scanned folder is reported ("enable it with --image-formats") rather than
silently skipped, while an `.eps` is skipped like any other non-image file.
"""
from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Iterable

from .errors import InvalidArgumentError


@dataclass(frozen=True)
class ImageFormat:
    name: str                      # what users pass (--image-formats, image_formats=)
    pillow: tuple[str, ...]        # the Pillow format ids `Image.open(formats=...)` is given
    extensions: tuple[str, ...]    # lower-case, with the dot: what the folder walk picks up
    description: str
    default: bool                  # decoded unless the user names the formats


# JPEG files with several pictures (MPO, written by some phones and cameras) open through the JPEG
# plugin, so "jpeg" covers them.
FORMATS: tuple[ImageFormat, ...] = (
    ImageFormat("jpeg", ("JPEG",), (".jpg", ".jpeg", ".jpe", ".jfif"), "JPEG (and multi-picture MPO) photos", True),
    ImageFormat("png", ("PNG",), (".png", ".apng"), "PNG, including animated PNG (first frame)", True),
    ImageFormat("webp", ("WEBP",), (".webp",), "WebP, lossy and lossless (libwebp)", True),
    ImageFormat("gif", ("GIF",), (".gif",), "GIF (first frame)", True),
    ImageFormat("bmp", ("BMP", "DIB"), (".bmp", ".dib"), "Windows bitmaps", True),
    ImageFormat("tiff", ("TIFF",), (".tif", ".tiff"), "TIFF (libtiff)", True),
    ImageFormat("avif", ("AVIF",), (".avif", ".avifs"), "AVIF, as phones and browsers write it (libavif)", True),
    ImageFormat("jpeg2000", ("JPEG2000",), (".jp2", ".j2k", ".jpc", ".jpf", ".jpx", ".j2c"),
                "JPEG 2000 (OpenJPEG)", False),
    ImageFormat("ppm", ("PPM",), (".pbm", ".pgm", ".ppm", ".pnm", ".pfm"), "Netpbm portable bitmaps", False),
    ImageFormat("qoi", ("QOI",), (".qoi",), "Quite OK Image format", False),
    ImageFormat("tga", ("TGA",), (".tga", ".icb", ".vda", ".vst"), "Truevision TGA", False),
    ImageFormat("ico", ("ICO", "CUR"), (".ico", ".cur"), "Windows icons and cursors (largest image)", False),
    ImageFormat("icns", ("ICNS",), (".icns",), "macOS icons (largest image)", False),
    ImageFormat("psd", ("PSD",), (".psd",), "Photoshop documents (the merged image)", False),
    ImageFormat("pcx", ("PCX",), (".pcx",), "PC Paintbrush", False),
    ImageFormat("sgi", ("SGI",), (".sgi", ".rgb", ".rgba", ".bw"), "Silicon Graphics images", False),
    ImageFormat("dds", ("DDS",), (".dds",), "DirectDraw surfaces (textures)", False),
)

BY_NAME = {f.name: f for f in FORMATS}
DEFAULT_IMAGE_FORMATS: tuple[str, ...] = tuple(f.name for f in FORMATS if f.default)
# Formats cameras and phones write that no registered Pillow plugin reads (HEIF without pillow-heif, raw
# files): a folder walk still picks them up, so the user sees an error row rather than a missing file.
UNDECODED_EXTENSIONS = frozenset({".heic", ".heif", ".jxl", ".dng", ".cr2", ".cr3", ".nef", ".arw", ".raf",
                                  ".orf", ".rw2"})


def format_choices() -> str:
    """The names --image-formats accepts, defaults marked, for help texts and error messages."""
    return ", ".join(f"{f.name}{'*' if f.default else ''}" for f in FORMATS)


def parse_image_formats(value: str | Iterable[str] | None) -> tuple[str, ...]:
    """Registry names from "jpeg,png", a list of names, or None (the default set); `default` stands for the
    default set, so "default,tga" adds TGA. Unknown names raise InvalidArgumentError naming the choices."""
    if value is None:
        return DEFAULT_IMAGE_FORMATS
    names = value.split(",") if isinstance(value, str) else list(value)
    out: list[str] = []
    for raw in names:
        if not isinstance(raw, str):
            raise InvalidArgumentError(f"image formats are names like 'jpeg', got {type(raw).__name__} {raw!r}")
        name = raw.strip().lower()
        if not name:
            continue
        expanded = DEFAULT_IMAGE_FORMATS if name == "default" else (name,)
        for n in expanded:
            if n not in BY_NAME:
                raise InvalidArgumentError(
                    f"image format {raw.strip()!r} is not one clipscan decodes; choose from {format_choices()} "
                    "(* = the default set, also named 'default'); EPS, PostScript and PDF are never decoded "
                    "(Pillow hands them to Ghostscript)")
            if n not in out:
                out.append(n)
    if not out:
        raise InvalidArgumentError(f"no image format was named; choose from {format_choices()}")
    return tuple(out)


@functools.lru_cache(maxsize=64)
def pillow_formats(names: tuple[str, ...]) -> tuple[str, ...]:
    """The Pillow format ids of registry names (already parsed), for `Image.open(formats=...)`; ids this
    Pillow build has no plugin for (AVIF without libavif) are left out, so such files read as unidentified."""
    from PIL import Image

    Image.init()
    return tuple(pid for n in names for pid in BY_NAME[n].pillow if pid in Image.OPEN)


@functools.lru_cache(maxsize=1)
def walk_extensions() -> frozenset[str]:
    """File extensions a folder walk picks up: every registered format's, and the undecoded camera formats'."""
    return frozenset(e for f in FORMATS for e in f.extensions) | UNDECODED_EXTENSIONS


def identify_refused(prefix: bytes, allowed: tuple[str, ...]) -> str | None:
    """The Pillow format id whose signature matches `prefix` among the formats not allowed, or None.

    Only each plugin's signature check (a comparison of the first bytes) runs; no plugin opens the file,
    so naming an EPS file as EPS runs no Ghostscript."""
    from PIL import Image

    Image.init()
    for pid, (_factory, accept) in Image.OPEN.items():
        if pid in allowed or accept is None:
            continue
        try:
            if accept(prefix):
                return pid
        except Exception:  # noqa: BLE001 -- a signature check that fails means "not this format"
            continue
    return None


def registered_name(pillow_id: str) -> str | None:
    """The registry name of a Pillow format id (None for formats clipscan never decodes, like EPS)."""
    return next((f.name for f in FORMATS if pillow_id in f.pillow), None)
