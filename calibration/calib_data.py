"""Calibration images -> model input tensors, preprocessed exactly as the artifact's manifest says.

Images come from folders (walked recursively by the runtime's `iter_files`), are decoded by the
runtime's `load_image` and preprocessed by the runtime's `Preprocessor` built from the manifest.
The tensors are cached in the cache folder ($CLIPSCAN_CACHE_DIR or ~/.cache/clipscan) under a key
made of the model's sha256, the image set's hash (paths, sizes, mtimes) and the settings.
Batches handed to ONNX Runtime all have the same size: its histogram calibrators (Percentile,
Entropy, Distribution) fail on a ragged last batch.

An artifact taking each image at its own size (input.own_size) gets one (3, H, W) array per image, each
at the image's own height and width (within input.own_size; others are listed as failed), and ONNX
Runtime is fed one sample per image (`calibration_batches`). Its MinMax calibrator reduces every
tensor to its range per sample, so samples of different shapes merge; its histogram calibrators
(percentile, entropy) stack the samples' tensors into one array and need one shape
(`HISTOGRAM_METHODS`, refused for such a set by calibration.pipeline).
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from clipscan.runtime.decode import load_image
from clipscan.runtime.discover import iter_files
from clipscan.runtime.errors import CalibrationError, ImageReadError, InputNotFoundError, InvalidArgumentError
from clipscan.runtime.preprocess import Preprocessor
from clipscan.runtime.progress import Progress

log = logging.getLogger("clipscan.calibrate")

CACHE_FORMAT = 1
# calibration methods whose ONNX Runtime calibrator stacks every sample's tensors into one array: one shape only
HISTOGRAM_METHODS = ("percentile", "entropy")


def cache_dir(explicit: str | os.PathLike | None = None) -> Path:
    if explicit:
        return Path(explicit)
    return Path(os.environ.get("CLIPSCAN_CACHE_DIR") or Path.home() / ".cache" / "clipscan")


def list_images(folders) -> list[str]:
    paths = [folders] if isinstance(folders, (str, os.PathLike)) else list(folders)
    for p in paths:
        if not Path(p).exists():
            raise InputNotFoundError(f"image folder/file {p} does not exist; pass an existing folder of images")
    return [os.path.abspath(f) for f in iter_files(paths)]


def image_set_hash(files: list[str], *, contents: bool = False) -> str:
    """sha256 over (path, size, mtime) of every file, or over their bytes with `contents`."""
    h = hashlib.sha256()
    for f in files:
        st = os.stat(f)
        h.update(f"{f}\0{st.st_size}\0{st.st_mtime_ns}\n".encode("utf-8", "surrogateescape"))
        if contents:
            with open(f, "rb") as fh:
                h.update(hashlib.sha256(fh.read()).digest())
    return h.hexdigest()


def content_hash(files: list[str]) -> str:
    """Order-independent hash of the images' bytes (what the manifest records: it survives moving the folder)."""
    digests = sorted(hashlib.sha256(Path(f).read_bytes()).hexdigest() for f in files)
    return hashlib.sha256("\n".join(digests).encode()).hexdigest()


@dataclass
class CalibrationSet:
    tensors: np.ndarray | list   # (N, 3, H, W) in the model's input dtype; own-size: a list of (3, H_i, W_i)
    files: list[str]             # files that made the rows (one row per file; sliding crops: first crop)
    failed: list[dict]
    images_hash: str             # content hash of the files used
    cache_path: Path | None = None
    from_cache: bool = False

    def __len__(self) -> int:
        return len(self.tensors)

    @property
    def own_size(self) -> bool:
        """Each image at its own height and width (a list of arrays), not one stacked tensor."""
        return isinstance(self.tensors, list)

    def sizes(self) -> list[list[int]]:
        """The distinct (height, width) of the rows, in order of first appearance."""
        seen = dict.fromkeys(tuple(t.shape[-2:]) for t in self.tensors)
        return [list(s) for s in seen]


def _pack(tensors) -> dict:
    """npz fields of a calibration set: the stacked tensor, or (own-size) the rows' values and shapes."""
    if isinstance(tensors, list):
        return {"flat": np.concatenate([t.ravel() for t in tensors]),
                "shapes": np.array([t.shape for t in tensors], dtype=np.int64).reshape(-1, 3)}
    return {"tensors": tensors}


def _unpack(z) -> np.ndarray | list:
    if "tensors" in z.files:
        return z["tensors"]
    flat, rows, start = z["flat"], [], 0
    for shape in z["shapes"]:
        size = int(np.prod(shape))
        rows.append(flat[start:start + size].reshape(tuple(int(d) for d in shape)))
        start += size
    return rows


def load_calibration_set(manifest, model_sha256: str, folders, *, max_images: int | None = None,
                         cache: str | os.PathLike | None | bool = None, progress: bool = True) -> CalibrationSet:
    """Preprocess every image under `folders` as the manifest says; cached (pass cache=False to skip)."""
    files = list_images(folders)
    if max_images:
        files = files[:max_images]
    if not files:
        raise CalibrationError(f"no image files found under {folders}; pass folders that hold JPEG/PNG/WebP images")
    key_src = json.dumps({"format": CACHE_FORMAT, "model": model_sha256, "images": image_set_hash(files),
                          "preprocess": manifest.preprocess.to_dict(), "input": manifest.input.to_dict(),
                          "max_images": max_images}, sort_keys=True)
    key = hashlib.sha256(key_src.encode()).hexdigest()[:32]
    path = None
    if cache is not False:
        path = cache_dir(cache if cache not in (None, True) else None) / "calibration" / f"{key}.npz"
        if path.is_file():
            try:
                with np.load(path, allow_pickle=False) as z:
                    meta = json.loads(str(z["meta"]))
                    log.info("calibration tensors from cache %s", path)
                    return CalibrationSet(_unpack(z), meta["files"], meta["failed"], meta["images_hash"],
                                          path, True)
            except Exception as e:  # a broken cache entry is rebuilt, never fatal
                log.warning("ignoring unreadable calibration cache %s (%s)", path, e)
    pre = Preprocessor(manifest.preprocess, manifest.input)
    rows, used, failed = [], [], []
    with Progress("preprocessing", len(files), unit="img", enabled=progress) as bar:
        for f in files:
            try:
                img = load_image(f, exif_orientation=manifest.preprocess.exif_orientation)
                rows.append(pre.batch(img)[0])
                used.append(f)
                bar.update()
            except (ImageReadError, ValueError, OSError) as e:
                failed.append({"path": f, "error": f"{type(e).__name__}: {e}"})
                bar.update(errors=1)
    if not rows:
        raise CalibrationError(f"none of the {len(files)} file(s) under {folders} could be read: {failed[:3]}")
    tensors = rows if manifest.input.own_size is not None else np.stack(rows)
    cset = CalibrationSet(tensors, used, failed, content_hash(used), path, False)
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp.npz")
        meta = json.dumps({"files": used, "failed": failed, "images_hash": cset.images_hash})
        np.savez(tmp, **_pack(tensors), meta=np.array(meta))
        os.replace(tmp, path)
    return cset


def equal_batches(tensors: np.ndarray, batch_size: int) -> list[np.ndarray]:
    """Split into batches of exactly `batch_size` rows; a short last batch is filled from the start
    (cycling), so every row is seen and the histogram calibrators get homogeneous shapes."""
    n = len(tensors)
    if batch_size < 1:
        raise InvalidArgumentError(f"batch_size must be >= 1, got {batch_size}")
    batch_size = min(batch_size, n)
    out = []
    for start in range(0, n, batch_size):
        idx = [(start + i) % n for i in range(batch_size)]
        out.append(np.ascontiguousarray(tensors[idx]))
    return out


def calibration_batches(tensors, batch_size: int) -> list[np.ndarray]:
    """What ONNX Runtime is fed: `equal_batches`, or for an own-size set (a list) one (1, 3, H, W) sample per
    image at its own size."""
    if isinstance(tensors, list):
        return [np.ascontiguousarray(t[None]) for t in tensors]
    return equal_batches(tensors, batch_size)


from onnxruntime.quantization import CalibrationDataReader  # noqa: E402


class BatchReader(CalibrationDataReader):
    """An onnxruntime.quantization CalibrationDataReader over equal batches, with a progress bar."""

    def __init__(self, input_name: str, batches: list[np.ndarray], progress: bool = True, label: str = "calibrating"):
        self.input_name, self.batches = input_name, batches
        self.progress, self.label = progress, label
        self.rewind()

    def rewind(self) -> None:
        self._it = iter(self.batches)
        self._bar = None

    def get_next(self):
        if self._bar is None:
            self._bar = Progress(self.label, len(self.batches), unit="batch", enabled=self.progress)
        batch = next(self._it, None)
        if batch is None:
            self._bar.close()
            return None
        self._bar.update()
        return {self.input_name: batch}

    def __len__(self) -> int:
        return len(self.batches)


def overlap(calib_folders, val_folders) -> list[str]:
    """Validation files whose bytes equal a calibration file's (same file or a copy)."""
    calib = {hashlib.sha256(Path(f).read_bytes()).hexdigest() for f in list_images(calib_folders)}
    return [f for f in list_images(val_folders) if hashlib.sha256(Path(f).read_bytes()).hexdigest() in calib]
