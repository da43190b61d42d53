"""Small JPEG thumbnails, embedded in the page as data: URIs, for the few images a report shows.

A row's path is found as written (absolute, or relative to the current folder), else under
`--images-root`, else next to the rows file; images are decoded by the runtime's safe decoder (EXIF
orientation applied, pixel limit, JPEG draft decoding: a thumbnail needs few pixels).
"""
from __future__ import annotations

import base64
import io
import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

from clipscan.runtime.decode import load_image
from clipscan.runtime.defaults import REPORT_THUMB_PX, REPORT_THUMB_QUALITY
from clipscan.runtime.errors import ImageReadError


@dataclass
class Thumb:
    uri: str | None        # data:image/jpeg;base64,...; None when the image could not be shown
    problem: str = ""      # why not (not found, could not be decoded)


def locate(path: str, images_root: str | None, rows_folder: str | None) -> str | None:
    """Where the file of a row's path is, or None."""
    if os.path.isabs(path):  # rows of another machine: the name under the root is tried too
        candidates = [path] + ([os.path.join(images_root, path.lstrip(os.sep))] if images_root else [])
    else:
        candidates = [os.path.join(base, path) for base in (images_root, os.curdir, rows_folder) if base]
    return next((c for c in candidates if os.path.isfile(c)), None)


def thumbnail(path: str, images_root: str | None = None, rows_folder: str | None = None,
              size: int = REPORT_THUMB_PX) -> Thumb:
    found = locate(path, images_root, rows_folder)
    if found is None:
        where = f" under {images_root}" if images_root else " (pass --images-root DIR, the folder the scan ran in)"
        return Thumb(None, f"file not found{where}")
    try:
        image = load_image(found, draft_size=(2 * size, 2 * size))
        image = image.convert("RGB")
        image.thumbnail((size, size))
        buf = io.BytesIO()
        image.save(buf, "JPEG", quality=REPORT_THUMB_QUALITY, optimize=True)
    except ImageReadError as e:
        return Thumb(None, str(e))
    except Exception as e:  # noqa: BLE001 -- a thumbnail that fails must not cost the report
        return Thumb(None, f"{type(e).__name__}: {e}")
    return Thumb("data:image/jpeg;base64," + base64.b64encode(buf.getvalue()).decode("ascii"))


def thumbnails(paths: list[str], images_root: str | None, rows_folder: str | None, workers: int = 4) -> list[Thumb]:
    """A Thumb per path, in order (decoded in a few threads: Pillow releases the GIL while it decodes)."""
    with ThreadPoolExecutor(max(1, workers), thread_name_prefix="clipscan-thumb") as pool:
        return list(pool.map(lambda p: thumbnail(p, images_root, rows_folder), paths))
