"""Decode one input (path, bytes or file object) into a loaded PIL image, safely.

Every failure becomes an ImageReadError with a short stable `kind` and a message
that says what happened, so a scan can write an error row and go on.
"""
from __future__ import annotations

import errno
import io
import os
import re
from pathlib import Path
from typing import BinaryIO, Union

from PIL import Image, ImageOps, UnidentifiedImageError

from .errors import ImageReadError
from .image_formats import DEFAULT_IMAGE_FORMATS, identify_refused, parse_image_formats, pillow_formats, registered_name

# Pillow refuses images over 2 x MAX_IMAGE_PIXELS (about 179 MP) as decompression bombs.
# clipscan applies its own limit, checked from the header before any pixel is decoded.
DEFAULT_MAX_PIXELS = 2 * 89_478_485

Source = Union[str, os.PathLike, bytes, bytearray, memoryview, BinaryIO]


_HINT = "raise it with --max-pixels / Scanner(max_pixels=...) if the file is trusted"


def _too_large(pixels: int, max_pixels: int, dims: str = "") -> ImageReadError:
    return ImageReadError("too_large", f"{dims}{pixels / 1e6:.0f} MP exceeds the limit of {max_pixels / 1e6:.0f} MP ({_HINT})")


def _bomb(e: Exception, max_pixels: int) -> ImageReadError:
    """Pillow's own decompression-bomb refusal, in clipscan's words."""
    m = re.search(r"\((\d+) pixels\)", str(e))
    if m:
        return _too_large(int(m.group(1)), max_pixels)
    return ImageReadError("too_large", str(e))


def allow_pixels(max_pixels: int) -> None:
    """Let Pillow open images up to `max_pixels` (its own refusal starts at 2 x MAX_IMAGE_PIXELS)."""
    if Image.MAX_IMAGE_PIXELS is not None and max_pixels > 2 * Image.MAX_IMAGE_PIXELS:
        Image.MAX_IMAGE_PIXELS = max_pixels // 2 + 1


def _check_path(path: Path) -> None:
    try:
        st = path.stat()
    except FileNotFoundError:
        if path.is_symlink():
            raise ImageReadError("unreadable", "broken symbolic link") from None
        raise ImageReadError("not_found", "no such file") from None
    except OSError as e:
        if e.errno == errno.ELOOP:
            raise ImageReadError("unreadable", "symbolic link loop") from None
        raise ImageReadError("unreadable", f"cannot stat the file ({e.strerror or e})") from None
    if path.is_dir():
        raise ImageReadError("is_directory", "this is a directory, not an image file")
    if not path.is_file():
        raise ImageReadError("unreadable", "not a regular file (device, socket or pipe)")
    if st.st_size == 0:
        raise ImageReadError("empty", "the file is empty (0 bytes)")


def _open(source: Source):
    if isinstance(source, (bytes, bytearray, memoryview)):
        if len(source) == 0:
            raise ImageReadError("empty", "no bytes were given")
        return io.BytesIO(bytes(source)), True
    if isinstance(source, (str, os.PathLike)):
        path = Path(source)
        _check_path(path)
        try:
            return open(path, "rb"), True
        except PermissionError:
            raise ImageReadError("unreadable", "permission denied") from None
        except OSError as e:
            raise ImageReadError("unreadable", f"cannot open the file ({e.strerror or e})") from None
    if hasattr(source, "read"):
        return source, False
    raise ImageReadError("bad_input", f"expected a path, bytes or a binary file object, got {type(source).__name__}")


def read_bytes(source: Source) -> bytes:
    """The encoded bytes of a path, bytes or binary file, with the same ImageReadError a scan of it would
    give before decoding (not_found, empty, is_directory, unreadable...): what a remote scan sends."""
    f, owned = _open(source)
    try:
        data = f.read()
    except OSError as e:
        raise ImageReadError("unreadable", f"cannot read the file ({e.strerror or e})") from None
    finally:
        if owned:
            f.close()
    if not data:
        raise ImageReadError("empty", "no bytes were given")
    return bytes(data)


def draft_request(resize_mode: str, resize_size) -> tuple[int, int] | None:
    """The size to ask JPEG draft decoding for, or None when the recipe needs full-resolution pixels.

    Both sides of the draft are >= the largest resize target (PIL picks the smallest DCT
    scale 1/1, 1/2, 1/4 or 1/8 whose output is at least the requested size), so the later
    resize still downsamples whatever the orientation; `resize: none` recipes crop native
    pixels and get no draft.
    """
    if resize_mode == "none":
        return None
    m = int(max(resize_size))
    return (m, m)


def _unidentified(fh, allowed: tuple[str, ...], names: tuple[str, ...]) -> ImageReadError:
    """Why Pillow, limited to the allowed formats, found none: a known format that is not allowed
    (named from its signature only), or not an image at all."""
    try:
        fh.seek(0)
        prefix = fh.read(16)
    except (OSError, ValueError):
        prefix = b""
    refused = identify_refused(prefix, allowed) if prefix else None
    if refused is not None:
        name = registered_name(refused)
        fix = (f"enable it with --image-formats {','.join(names + (name,))} / image_formats=... if the file is "
               "trusted" if name else "clipscan never decodes it (Pillow would hand it to another program or has "
               "no real decoder for it); convert it to PNG or JPEG")
        return ImageReadError("unsupported_format", f"the file is {refused}, not one of the allowed image formats "
                                                    f"({', '.join(names)}); {fix}")
    return ImageReadError("not_an_image", f"not an image of an allowed format ({', '.join(names)}): not an image, "
                                          "another format, or a damaged header")


def load_image(source: Source, *, max_pixels: int = DEFAULT_MAX_PIXELS, exif_orientation: str = "apply",
               draft_size: tuple[int, int] | None = None,
               image_formats: tuple[str, ...] | str | None = DEFAULT_IMAGE_FORMATS) -> Image.Image:
    """Decode the first frame of an image fully into memory.

    `exif_orientation="apply"` rotates/flips the pixels as the EXIF Orientation tag
    says (what viewers show); "ignore" keeps the stored pixel order.
    `draft_size` (opt-in, None = exact decoding): for JPEG files, decode at the smallest
    DCT scale whose output is still at least this size (PIL's `Image.draft`); other
    formats decode exactly. See `draft_request`.
    `image_formats`: the registry names (runtime/image_formats.py) Pillow may try, default the safe set;
    a file of any other format is an `unsupported_format` error and reaches no other plugin.
    """
    names = parse_image_formats(image_formats)
    allowed = pillow_formats(names)
    fh, owned = _open(source)
    try:
        try:
            im = Image.open(fh, formats=allowed)
        except UnidentifiedImageError:
            raise _unidentified(fh, allowed, names) from None
        except Image.DecompressionBombError as e:
            raise _bomb(e, max_pixels) from None
        with im:
            w, h = im.size
            if w <= 0 or h <= 0:
                raise ImageReadError("corrupt", f"the header gives an empty size {w}x{h}")
            if w * h > max_pixels:
                raise _too_large(w * h, max_pixels, f"{w}x{h} = ")
            fmt = im.format
            if draft_size is not None and fmt == "JPEG":
                im.draft(im.mode, tuple(draft_size))
            try:
                im.load()
            except (OSError, SyntaxError, ValueError, EOFError, IndexError, KeyError, TypeError, ZeroDivisionError) as e:
                msg = str(e) or type(e).__name__
                kind = "truncated" if "truncat" in msg.lower() or isinstance(e, EOFError) else "corrupt"
                raise ImageReadError(kind, f"{fmt or 'image'} data could not be decoded: {msg}") from None
            if exif_orientation == "apply":
                try:
                    out = ImageOps.exif_transpose(im)
                except Exception:  # a broken EXIF block must not lose the image
                    out = im.copy()
            else:
                out = im.copy()
            return out
    except ImageReadError:
        raise
    except MemoryError:
        raise ImageReadError("too_large", "ran out of memory decoding the image") from None
    except Image.DecompressionBombError as e:
        raise _bomb(e, max_pixels) from None
    except Exception as e:  # Pillow plugins raise many types on hostile input
        raise ImageReadError("corrupt", f"{type(e).__name__}: {e}") from None
    finally:
        if owned:
            fh.close()
