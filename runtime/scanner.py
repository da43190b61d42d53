"""The Scanner: files, folders, images or bytes in; one ScanResult per input out.

Decoding and preprocessing run in a small thread pool ahead of inference (Pillow
releases the GIL while it decodes), batches go to the backend, and results come
back in input order as soon as their batch is done. A bad input becomes an error
result; it never stops the scan.
"""
from __future__ import annotations

import logging
import os
import time
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from typing import Callable, Container, Iterable, Iterator

import numpy as np
from PIL import Image

from .artifact import Artifact, load_artifact
from .backends import BackendOptions, create_backend
from .decode import DEFAULT_MAX_PIXELS, allow_pixels, draft_request, load_image
from .discover import WalkStats, iter_files
from .errors import ImageReadError, InvalidArgumentError, ModelError, ScannerClosedError
from .image_formats import parse_image_formats
from .postprocess import image_result
from .preprocess import Preprocessor
from .results import ScanResult

log = logging.getLogger("clipscan.scan")

# decode= (and every --decode) -> what it does; "draft" changes pixels, so it is used only when asked for
# or, under "auto", when the artifact records that it passed its gates
DECODE_MODES = {
    "auto": "draft only if the artifact records a passing draft check (clipscan verify --draft-check "
            "--record-draft), else exact",
    "exact": "full-size decoding",
    "draft": "JPEGs decoded at a reduced DCT scale that still covers the resize target (faster on camera images)",
}


def resolve_decode(manifest, decode: str) -> tuple[str, str]:
    """("exact" or "draft", why) for `decode`, one of DECODE_MODES: "auto" is draft only where the artifact
    records a passing draft-vs-exact check on its owner's images (`clipscan verify --draft-check
    --record-draft`). The Scanner and Triton's ensemble preprocess both decide through this."""
    if decode not in DECODE_MODES:
        raise InvalidArgumentError(f"decode must be one of {', '.join(map(repr, DECODE_MODES))}, got {decode!r}")
    if decode != "auto":
        return decode, f"{decode}: asked for"
    record = manifest.draft_decoding_record()
    if record and record.get("passed") is True:
        return "draft", (f"draft: the artifact records draft decoding passing its gates on "
                         f"{record.get('n_affected')} images (agreement {record.get('agreement')})")
    return "exact", ("exact: the artifact records no passing draft-decoding check" if not record
                     else "exact: the artifact's draft-decoding check did not pass")


def path_sources(paths: Iterable[str | os.PathLike] | str | os.PathLike, *, all_files: bool = False,
                 skip: Container[str] = (), stats: WalkStats | None = None) -> Iterator[tuple[str, object]]:
    """(name, path) for every file of `paths`, folders walked recursively into `stats`, in a stable order;
    paths in `skip` (as they would appear in results, or absolute) are left out, which is how a scan
    resumes. Scanner.scan and RemoteScanner.scan both read their inputs through this."""
    if isinstance(paths, (str, os.PathLike)):
        paths = [paths]
    files = iter_files(paths, all_files=all_files, stats=stats)
    if skip:
        files = (p for p in files if not (isinstance(p, str) and (p in skip or os.path.abspath(p) in skip)))
    return ((str(p), p) for p in files)


class Scanner:
    """Scan images with an exported clipscan model.

    >>> scanner = Scanner()                      # the demo model, best backend available
    >>> for r in scanner.scan(["photos/"]):      # files and folders, recursive
    ...     print(r.path, r.p_generated, r.verdict, r.quality, r.error)
    >>> scanner.scan_image(pil_image).verdict
    >>> scanner.scan_bytes(upload_bytes, name="upload.jpg")
    """

    def __init__(self, model: str | os.PathLike | None = None, *, backend: str = "auto",
                 fallback: bool = True, batch_size: int = 16, threads: int | None = None,
                 workers: int | None = None, max_pixels: int = DEFAULT_MAX_PIXELS,
                 threshold: float | None = None, max_batch: int | None = None, cache_dir: str | None = None,
                 device_id: int = 0, decode: str = "auto", spin: bool = True,
                 image_formats: str | tuple[str, ...] | None = None,
                 observer: Callable[[str, float, float], None] | None = None):
        if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
            raise InvalidArgumentError(f"batch_size must be an integer >= 1, got {batch_size!r}")
        self.image_formats = parse_image_formats(image_formats)  # registry names; None = the safe default set
        self.artifact: Artifact = load_artifact(model)
        self.manifest = self.artifact.manifest
        self.preprocessor = Preprocessor(self.manifest.preprocess, self.manifest.input)
        # "draft": JPEGs are decoded at a reduced DCT scale that still keeps both sides >= the resize target;
        # it changes pixels, so it is used only when asked for or when the artifact records that it passed
        self.decode_requested = decode
        self.decode, self.decode_reason = resolve_decode(self.manifest, decode)
        self._draft_size = (draft_request(self.manifest.preprocess.resize_mode, self.manifest.preprocess.resize_size)
                            if self.decode == "draft" else None)
        self.batch_size = batch_size
        self.workers = workers or min(4, os.cpu_count() or 1)
        self.max_pixels = max_pixels
        allow_pixels(max_pixels)
        self.detector = self.manifest.decision_head()
        self.quality = self.manifest.head("quality")
        self.threshold_override = threshold
        self.threshold = threshold if threshold is not None else (self.detector.threshold if self.detector else None)
        if self.threshold is not None and not 0.0 <= self.threshold <= 1.0:
            raise InvalidArgumentError(f"threshold is a probability in [0, 1], got {self.threshold}")
        options = BackendOptions(threads=threads, batch_size=batch_size, max_batch=max_batch, device_id=device_id,
                                 cache_dir=cache_dir or "", spin=spin)
        self.backend = create_backend(self.artifact.path, backend, fallback=fallback, options=options,
                                      manifest=self.manifest)
        self._check_graph()
        self.walk_stats = WalkStats()
        # observer(stage, start, end), perf_counter seconds, for every "prepare" (decode + preprocess of one
        # source, in the worker threads) and "inference" (one batch's predict) a scan runs; may be set or
        # cleared between scans; it must be thread-safe and quick, and an exception in it is logged, not raised
        self.observer = observer
        self._closed = False

    # -- setup -------------------------------------------------------------
    def _check_graph(self) -> None:
        want_in = self.manifest.input.name
        if want_in not in self.backend.input_names:
            raise ModelError(f"{self.artifact.path}: the manifest names input {want_in!r}, "
                             f"the graph has {self.backend.input_names}; re-export the model")
        missing = [n for n in self.manifest.output_names() if n not in self.backend.output_names]
        if missing:
            raise ModelError(f"{self.artifact.path}: the manifest names outputs {missing} that the graph lacks "
                             f"(graph outputs: {self.backend.output_names}); re-export the model")

    @property
    def backend_name(self) -> str:
        return self.backend.name

    @property
    def draft_size(self) -> tuple[int, int] | None:
        """The size JPEGs are draft-decoded towards (`decode == "draft"`), None when decoding is exact."""
        return self._draft_size

    @property
    def closed(self) -> bool:
        return self._closed

    def close(self) -> None:
        """Release the backend (sessions, engines, GPU memory); the Scanner cannot scan afterwards."""
        if not self._closed:
            self._closed = True
            self.backend.close()

    def _check_open(self) -> None:
        if self._closed:
            raise ScannerClosedError(f"this Scanner ({self.artifact.path.name}) was closed; create a new "
                                     "Scanner, or scan inside its `with` block")

    def __enter__(self) -> "Scanner":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # -- public API ----------------------------------------------------------
    def scan(self, paths: Iterable[str | os.PathLike] | str | os.PathLike, *,
             all_files: bool = False, skip: Container[str] = ()) -> Iterator[ScanResult]:
        """Scan files and folders (recursively); yields results in input order.

        Paths in `skip` (as they would appear in results, or absolute) are left out:
        that is how a scan resumes.
        """
        self._check_open()
        self.walk_stats = WalkStats()
        return self._scan_sources(path_sources(paths, all_files=all_files, skip=skip, stats=self.walk_stats))

    def scan_image(self, image: Image.Image, name: str = "<image>") -> ScanResult:
        """Scan one already decoded PIL image."""
        self._check_open()
        if not isinstance(image, Image.Image):
            raise InvalidArgumentError(f"scan_image takes a PIL image, got {type(image).__name__}; "
                                       "use scan_bytes for encoded data or scan for paths")
        return next(self._scan_sources([(name, image)]))

    def scan_bytes(self, data: bytes, name: str = "<bytes>") -> ScanResult:
        """Scan one encoded image held in memory (an upload, say)."""
        self._check_open()
        if not isinstance(data, (bytes, bytearray, memoryview)):
            raise InvalidArgumentError(f"scan_bytes takes the encoded file as bytes, got {type(data).__name__}; "
                                       "use scan([path]) for a path")
        return next(self._scan_sources([(name, bytes(data))]))

    def scan_many(self, items: Iterable[tuple[str, object]]) -> Iterator[ScanResult]:
        """Scan (name, source) pairs; a source is a path, bytes, a binary file or a PIL image."""
        self._check_open()
        return self._scan_sources(items)

    def scan_prepared(self, items: Iterable[tuple[str, object]]) -> list[ScanResult]:
        """One inference batch of (name, prepared) pairs, `prepared` being what `prepare()` returned (an
        (K, 3, H, W) array or an ImageReadError): the results in order, errors as error results. This is how
        a server merges images of several requests into one batch after decoding them itself."""
        self._check_open()
        return list(self._run_batch(list(items)))

    def predict(self, pixels: np.ndarray) -> dict[str, np.ndarray]:
        """Run the graph on a preprocessed batch (N, 3, H, W); returns every output."""
        self._check_open()
        return self.backend.run({self.manifest.input.name: pixels})

    def preprocess(self, image: Image.Image) -> np.ndarray:
        """Model input for one decoded image: (K, 3, H, W), K > 1 only for sliding-crop recipes."""
        return self.preprocessor.batch(image)

    def prepare(self, source) -> np.ndarray | ImageReadError:
        """(K, 3, H, W) model input for one source (path, bytes, file or PIL image) decoded as a scan
        decodes it, or the ImageReadError that stops it (returned, not raised)."""
        try:
            if isinstance(source, Image.Image):
                image = source
            else:
                image = load_image(source, max_pixels=self.max_pixels,
                                   exif_orientation=self.manifest.preprocess.exif_orientation,
                                   draft_size=self._draft_size, image_formats=self.image_formats)
            return self.preprocessor.batch(image)
        except ImageReadError as e:
            return e
        except MemoryError:
            return ImageReadError("too_large", "ran out of memory preprocessing the image")
        except Exception as e:  # never let one input end the scan
            return ImageReadError("preprocess_failed", f"{type(e).__name__}: {e}")

    # -- pipeline --------------------------------------------------------------
    def _observed(self, stage: str, fn, arg):
        """fn(arg), its interval reported to `observer` when one is set."""
        observer = self.observer
        if observer is None:
            return fn(arg)
        start = time.perf_counter()
        try:
            return fn(arg)
        finally:
            try:
                observer(stage, start, time.perf_counter())
            except Exception:  # an observer never ends a scan
                log.exception("scan observer failed")

    def _prepared(self, items: Iterable[tuple[str, object]]) -> Iterator[tuple[str, object]]:
        lookahead = max(2 * self.batch_size, self.workers)
        with ThreadPoolExecutor(self.workers, thread_name_prefix="clipscan-decode") as pool:
            window: deque = deque()
            for name, source in items:
                window.append((name, pool.submit(self._observed, "prepare", self.prepare, source)))
                if len(window) >= lookahead:
                    name0, fut = window.popleft()
                    yield name0, fut.result()
            while window:
                name0, fut = window.popleft()
                yield name0, fut.result()

    def _scan_sources(self, items: Iterable[tuple[str, object]]) -> Iterator[ScanResult]:
        pending: list[tuple[str, object]] = []
        rows = 0  # model-input rows waiting (an image with sliding crops brings several)
        for name, prepared in self._prepared(items):
            if isinstance(prepared, ImageReadError) and rows == 0:
                yield self._error(name, prepared)  # nothing waits before it: emit now
                continue
            pending.append((name, prepared))
            if not isinstance(prepared, ImageReadError):
                rows += len(prepared)
            if rows >= self.batch_size:
                yield from self._run_batch(pending)
                pending, rows = [], 0
        if pending:
            yield from self._run_batch(pending)

    def _error(self, name: str, error: Exception) -> ScanResult:
        return ScanResult(path=name, error=str(error), backend=self.backend.name)

    def _run_batch(self, pending: list[tuple[str, object]]) -> Iterator[ScanResult]:
        """One predict per input shape among `pending` (one for a fixed-size model; an artifact taking images at
        their own size runs images of one size together and every other size apart), results in input order."""
        groups: dict[tuple, list[int]] = {}
        for k, (_, p) in enumerate(pending):
            if isinstance(p, np.ndarray):
                groups.setdefault(p.shape[1:], []).append(k)
        answer: dict[int, tuple] = {}    # index in pending -> (outputs, rows) or (None, error)
        for members in groups.values():
            arrays = [pending[k][1] for k in members]
            try:
                outputs = self._observed("inference", self.predict, np.concatenate(arrays))
            except Exception as e:  # a backend failure fails these images, not the scan
                failure = ImageReadError("inference_failed", f"{type(e).__name__}: {e}")
                log.error("inference failed for a batch of %d: %s", len(arrays), e)
                answer.update({k: (None, failure) for k in members})
                continue
            i = 0
            for k, a in zip(members, arrays):
                answer[k] = (outputs, slice(i, i + len(a)))
                i += len(a)
        for k, (name, prepared) in enumerate(pending):
            if not isinstance(prepared, np.ndarray):
                yield self._error(name, prepared)
            elif answer[k][0] is None:
                yield self._error(name, answer[k][1])
            else:
                yield self._result(name, *answer[k])

    def _result(self, name: str, outputs: dict[str, np.ndarray], rows: slice) -> ScanResult:
        """One image's result from its rows of the batch (see `postprocess.image_result`)."""
        return image_result(self.manifest, outputs, rows, name=name, threshold=self.threshold_override,
                            backend=self.backend.name)
