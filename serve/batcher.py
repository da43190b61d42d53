"""Dynamic batching across requests: images of concurrent requests are decoded by decode threads (off the
event loop, shared fairly between requests: `fair_decode`), then merged into one inference batch by the inference thread, within a window (`max_delay_ms`)
and up to `max_batch` model-input rows; the window is cut short when no other image is queued or being
decoded, so a lone request does not wait for company that is not coming. The queue is bounded in images: a request that does not fit is
refused at once (QueueFull -> 503); a request that times out cancels its images still waiting and frees
their slots (-> 504). A bad image is an error result of its own and never fails the others."""
from __future__ import annotations

import asyncio
import logging
import queue
import threading
import time
from concurrent.futures import Future
from dataclasses import dataclass, field

import numpy as np

from clipscan.runtime.errors import ClipscanError, ImageReadError
from clipscan.runtime.image_formats import pillow_formats
from clipscan.runtime.results import ScanResult

from .fair_decode import FairDecoder, request_pixels

log = logging.getLogger("clipscan.serve")


class QueueFull(ClipscanError):
    """The batcher's queue has no room for a request's images (HTTP 503 with Retry-After)."""


class RequestTimeout(ClipscanError):
    """A request was not answered within the service's timeout (HTTP 504)."""


class OverPixelBudget(ClipscanError):
    """A request's images would decode to more pixels than one request may (HTTP 413)."""


@dataclass
class _Job:
    name: str
    prepared: np.ndarray
    future: Future
    queued_at: float = field(default_factory=time.perf_counter)


class Batcher:
    """`await batcher.scan([(name, bytes or (1, 3, H, W) array), ...])` -> ScanResults in order."""

    def __init__(self, scanner, limits, metrics=None):
        self.scanner, self.limits, self.metrics = scanner, limits, metrics
        self.decoder = FairDecoder(limits.decode_workers)
        self._jobs: queue.Queue = queue.Queue()
        self._slots = 0
        self._decoding = 0   # admitted images not yet queued for inference (being decoded)
        self._lock = threading.Lock()
        self._thread = threading.Thread(target=self._loop, name="clipscan-serve-inference", daemon=True)
        self._thread.start()

    @property
    def queued(self) -> int:
        return self._slots

    def _admit(self, n: int) -> None:
        with self._lock:
            if self._slots + n > self.limits.max_queue:
                raise QueueFull(f"the queue is full ({self._slots} of {self.limits.max_queue} images waiting); "
                                "retry shortly")
            self._slots += n
            self._decoding += n

    def _decoded(self, n: int) -> None:
        with self._lock:
            self._decoding -= n

    def _release(self, n: int) -> None:
        with self._lock:
            self._slots -= n

    def _prepare(self, source):
        if isinstance(source, np.ndarray):
            return source
        return self.scanner.prepare(source)

    async def scan(self, items: list[tuple[str, object]]) -> list[ScanResult]:
        lim = self.limits
        # the headers are read off the event loop too: a crafted header may take a parser a while
        pixels = await asyncio.get_running_loop().run_in_executor(
            None, request_pixels, [src for _, src in items], lim.max_pixels, pillow_formats(self.scanner.image_formats))
        if pixels > lim.max_request_pixels:
            raise OverPixelBudget(f"the request's images hold {pixels / 1e6:.0f} MP together (from their headers); "
                                  f"one request may decode up to {lim.max_request_pixels / 1e6:.0f} MP: send "
                                  "fewer or smaller images per request")
        self._admit(len(items))
        state = {"held": len(items), "futures": [], "decoding": []}
        try:
            return await asyncio.wait_for(self._scan(items, state), self.limits.timeout_s)
        except asyncio.TimeoutError:
            for f in state["decoding"] + state["futures"]:
                f.cancel()
            raise RequestTimeout(f"no answer within the service's timeout of {self.limits.timeout_s:g} s "
                                 "(the server is overloaded); retry later or send fewer images") from None
        except asyncio.CancelledError:  # the caller went away (a gRPC call cancelled, or past its deadline)
            for f in state["decoding"] + state["futures"]:
                f.cancel()
            raise
        finally:
            self._release(state["held"])

    async def _scan(self, items, state) -> list[ScanResult]:
        key = object()  # this request's own queue in the decoder
        try:
            decoding = [self.decoder.submit(key, self._prepare, src) for _, src in items]
            state["decoding"] = decoding  # a timeout cancels the images not yet decoded
            prepared = await asyncio.gather(*(asyncio.wrap_future(f) for f in decoding))
        except BaseException:  # cancelled (timeout) or failed: these images will not be queued
            self._decoded(len(items))
            raise
        out: list = []
        for (name, _), p in zip(items, prepared):
            if isinstance(p, ImageReadError):
                out.append(ScanResult(path=name, error=str(p), backend=self.scanner.backend_name))
            else:
                fut: Future = Future()
                state["futures"].append(fut)
                self._jobs.put(_Job(name, p, fut))
                out.append(fut)
        self._decoded(len(items))  # after queueing them, so the batcher never sees them in neither place
        failed = len(items) - len(state["futures"])  # images that failed to decode leave the queue now
        self._release(failed)
        state["held"] -= failed
        return [await asyncio.wrap_future(r) if isinstance(r, Future) else r for r in out]

    def _take_batch(self, first: _Job) -> list[_Job]:
        batch, rows = [first], len(first.prepared)
        deadline = time.perf_counter() + self.limits.max_delay_ms / 1000.0
        while rows < self.limits.max_batch:
            remaining = deadline - time.perf_counter()
            if self._decoding == 0 and self._jobs.empty():
                break  # nothing else is on its way: waiting out the window would only add latency
            try:
                job = self._jobs.get(timeout=remaining) if remaining > 0 else self._jobs.get_nowait()
            except queue.Empty:
                break
            if job is None:
                self._jobs.put(None)
                break
            batch.append(job)
            rows += len(job.prepared)
        return batch

    def _loop(self) -> None:
        while True:
            first = self._jobs.get()
            if first is None:
                return
            batch = [j for j in self._take_batch(first) if j.future.set_running_or_notify_cancel()]
            if not batch:
                continue
            start = time.perf_counter()
            try:
                results = self.scanner.scan_prepared([(j.name, j.prepared) for j in batch])
            except Exception as e:  # the Scanner turns backend failures into results; anything else lands here
                log.exception("inference failed for a batch of %d", len(batch))
                results = [ScanResult(path=j.name, error=f"inference_failed: {type(e).__name__}: {e}",
                                      backend=self.scanner.backend_name) for j in batch]
            if self.metrics is not None:
                self.metrics.batch(len(batch), sum(len(j.prepared) for j in batch),
                                   time.perf_counter() - start, [start - j.queued_at for j in batch])
            for j, r in zip(batch, results):
                j.future.set_result(r)

    def close(self) -> None:
        self._jobs.put(None)
        self._thread.join(timeout=30)
        self.decoder.close()
