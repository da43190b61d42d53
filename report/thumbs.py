"""Small JPEG thumbnails, embedded in the page as data: URIs, for the few images a report shows.

A row's path is looked for only inside the images root (`--images-root`, default the current folder) and
the rows file's folder: relative to each, and an absolute path as written when it lies inside one, else its
name under the images root (rows of another machine). A path that leaves them (absolute elsewhere, `..`, a
symbolic link pointing out) is not even looked at: its card says so in the same words whether or not the
file exists. Images are decoded by the runtime's safe decoder (allowed formats only, EXIF orientation
applied, pixel limit, JPEG draft decoding: a thumbnail needs few pixels).
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


OUTSIDE = ("not shown: the path leads outside the images root and the rows file's folder, so it was not read "
           "(pass --images-root DIR, a folder holding the images)")
MAX_LINKS = 40  # symbolic links followed while resolving one path (as the kernel's limit)


def _inside(path: str, roots: list[str]) -> bool:
    return any(path == r or path.startswith(r.rstrip(os.sep) + os.sep) for r in roots)


def _parts(path: str, root: str) -> list[str]:
    return [c for c in os.path.relpath(path, root).split(os.sep) if c not in ("", ".")]


def _resolve_inside(path: str, roots: list[str]) -> str | None:
    """`path` (absolute, normalised) with every symbolic link resolved, or None as soon as the path or a
    link's target leaves `roots`: components are examined one at a time, and nothing outside is touched."""
    root = next((r for r in roots if _inside(path, [r])), None)
    if root is None:
        return None
    done, todo, links = root, _parts(path, root), 0
    while todo:
        step = os.path.join(done, todo.pop(0))
        if not os.path.islink(step):  # an lstat of a name inside a root
            done = step
            continue
        links += 1
        target = os.path.normpath(os.path.join(done, os.readlink(step)))
        root = next((r for r in roots if _inside(target, [r])), None)
        if root is None or links > MAX_LINKS:
            return None
        done, todo = root, _parts(target, root) + todo
    return done


def locate(path: str, images_root: str | None, rows_folder: str | None) -> tuple[str | None, bool]:
    """(where the file of a row's path is, or None; whether it was refused, as leading outside the images
    root (default: the current folder) and the rows file's folder). It is looked for relative to each root,
    or as written when absolute and then by its name under the images root (rows of another machine); a
    path that leads outside in one place and is missing in another counts as outside."""
    roots = [os.path.realpath(r) for r in (images_root or os.curdir, rows_folder) if r]
    if os.path.isabs(path):
        candidates = [path, os.path.join(roots[0], path.lstrip(os.sep))]
    else:
        candidates = [os.path.join(r, path) for r in roots]
    outside = False
    for c in candidates:
        try:
            resolved = _resolve_inside(os.path.normpath(c), roots)
        except OSError:  # a link inside that cannot be read: as good as missing
            continue
        if resolved is None:
            outside = True
        elif os.path.isfile(resolved):
            return resolved, False
    return None, outside


def thumbnail(path: str, images_root: str | None = None, rows_folder: str | None = None,
              size: int = REPORT_THUMB_PX) -> Thumb:
    found, outside = locate(path, images_root, rows_folder)
    if outside:
        return Thumb(None, OUTSIDE)
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
