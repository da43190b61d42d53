"""Image decoding shared fairly between requests: each request's images wait in a queue of their own, and
the decode threads take the next image from the requests in turn (round-robin), never letting one request
decode on every thread at once when there are two or more; so a request of many large images cannot keep
another client's small one waiting behind all of its own. The pixels a request may decode are bounded
before any is decoded (`request_pixels`, from the images' headers)."""
from __future__ import annotations

import io
import threading
from collections import deque
from concurrent.futures import Future

from PIL import Image


def header_pixels(data: bytes, max_pixels: int, formats: tuple[str, ...] | None = None) -> int:
    """An encoded image's pixel count from its header (nothing is decoded); 0 when the header cannot be read,
    is of a format outside `formats` (Pillow format ids: only those plugins look at it), or is over
    `max_pixels` (that image fails on its own with its own error and is never decoded)."""
    try:
        with Image.open(io.BytesIO(data), formats=formats) as im:
            w, h = im.size
    except Exception:  # noqa: BLE001 -- any unreadable header: the decoder reports it for that image
        return 0
    return w * h if 0 < w * h <= max_pixels else 0


def request_pixels(sources, max_pixels: int, formats: tuple[str, ...] | None = None) -> int:
    """Pixels the encoded images among `sources` will decode to (arrays are already decoded: 0)."""
    return sum(header_pixels(s, max_pixels, formats) for s in sources if isinstance(s, (bytes, bytearray)))


class FairDecoder:
    """`submit(request, fn, arg)` -> Future of fn(arg), run on one of `workers` threads; requests are served
    in turn, one image each, and one request runs on at most `workers - 1` threads (1 with one worker)."""

    def __init__(self, workers: int, name: str = "clipscan-serve-decode"):
        self.per_request = max(1, workers - 1)
        self._cv = threading.Condition()
        self._queues: dict[object, deque] = {}
        self._running: dict[object, int] = {}
        self._turn: deque = deque()  # requests with images waiting, in the order they are served
        self._closed = False
        self._threads = [threading.Thread(target=self._work, name=f"{name}-{i}", daemon=True)
                         for i in range(workers)]
        for t in self._threads:
            t.start()

    def submit(self, request, fn, arg) -> Future:
        fut: Future = Future()
        with self._cv:
            if self._closed:
                raise RuntimeError("the decoder is closed")
            if request not in self._queues:
                self._queues[request] = deque()
                self._turn.append(request)
            self._queues[request].append((fn, arg, fut))
            self._cv.notify()
        return fut

    def _next(self):
        """The next (request, task) to run, or None (call with the lock held)."""
        for _ in range(len(self._turn)):
            request = self._turn[0]
            self._turn.rotate(-1)
            if self._running.get(request, 0) >= self.per_request:
                continue
            q = self._queues[request]
            while q:
                task = q.popleft()
                if task[2].set_running_or_notify_cancel():  # skips images of a request that timed out
                    if not q:
                        self._drop(request)
                    self._running[request] = self._running.get(request, 0) + 1
                    return request, task
            self._drop(request)
        return None

    def _drop(self, request) -> None:
        del self._queues[request]
        self._turn.remove(request)

    def _work(self) -> None:
        while True:
            with self._cv:
                while not self._closed and (picked := self._next()) is None:
                    self._cv.wait()
                if self._closed:
                    return
            request, (fn, arg, fut) = picked
            try:
                fut.set_result(fn(arg))
            except BaseException as e:  # noqa: BLE001 -- handed to the request that asked
                fut.set_exception(e)
            with self._cv:
                self._running[request] -= 1
                if not self._running[request]:
                    del self._running[request]
                self._cv.notify_all()

    def close(self) -> None:
        with self._cv:
            self._closed = True
            for q in self._queues.values():
                for _, _, fut in q:
                    fut.cancel()
            self._queues.clear()
            self._turn.clear()
            self._cv.notify_all()

