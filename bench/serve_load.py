"""The load generator of `clipscan bench --serve`, run as its own process (so its CPU use is not the
server's): a bounded closed loop of `concurrency` keep-alive connections to a loopback server posting
uploads to `/v1/scan`, each request's latency, status and answer recorded.

    python -m clipscan.bench.serve_load < job.json > answers.json

The job: {"url", "concurrency", "requests", "max_seconds", "good": [paths], "bad": {kind: path},
"bad_every": k, "max_body_bytes"}; every k-th request is a malformed upload (truncated, garbage, a pixel
bomb, a wrong content type, an oversized body, an empty body), the others cycle through the good images.
"""
from __future__ import annotations

import http.client
import itertools
import json
import sys
import threading
import time
import urllib.parse
from pathlib import Path

BAD_KINDS = ("truncated", "garbage", "bomb", "wrong_type", "oversized", "empty")


def bad_uploads(good_jpeg: bytes, folder: Path) -> dict[str, str]:
    """Malformed uploads written to `folder`: kind -> file (oversized and wrong_type reuse a good file)."""
    import os
    import struct
    import zlib

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
    # a PNG that declares 30000 x 30000 pixels in a few bytes: refused before decoding (a decompression bomb)
    bomb = (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", 30000, 30000, 8, 0, 0, 0, 0))
            + chunk(b"IDAT", zlib.compress(b"\x00" * 1024)) + chunk(b"IEND", b""))
    files = {"truncated": good_jpeg[: len(good_jpeg) // 3], "garbage": os.urandom(4096), "bomb": bomb,
             "empty": b"", "wrong_type": good_jpeg, "oversized": good_jpeg}
    out = {}
    for kind, data in files.items():
        path = folder / f"bad_{kind}.bin"
        path.write_bytes(data)
        out[kind] = str(path)
    return out


def _one(conn_box: list, netloc: tuple, kind: str, name: str, data: bytes, limit: int) -> tuple[int, bytes]:
    if conn_box[0] is None:
        conn_box[0] = http.client.HTTPConnection(*netloc, timeout=120)
    conn = conn_box[0]
    path = "/v1/scan?name=" + urllib.parse.quote(name)
    try:
        if kind == "oversized":  # the headers of a body over the limit: the server answers from them alone
            conn.putrequest("POST", path)
            conn.putheader("Content-Type", "image/jpeg")
            conn.putheader("Content-Length", str(limit + 1))
            conn.endheaders()
        else:
            ctype = "text/plain" if kind == "wrong_type" else "image/jpeg"
            conn.request("POST", path, body=data, headers={"Content-Type": ctype})
        resp = conn.getresponse()
        body = resp.read()
        if resp.getheader("connection", "").lower() == "close" or kind == "oversized":
            conn.close()
            conn_box[0] = None
        return resp.status, body
    except (OSError, http.client.HTTPException):
        conn.close()
        conn_box[0] = None
        raise


def run_load(job: dict) -> dict:
    url = urllib.parse.urlsplit(job["url"])
    netloc = (url.hostname, url.port)
    good = [(Path(p).name, Path(p).read_bytes()) for p in job["good"]]
    bad = {k: Path(p).read_bytes() for k, p in job["bad"].items()}
    every = int(job.get("bad_every") or 0)
    schedule = []
    g, b = itertools.cycle(good), itertools.cycle(BAD_KINDS)
    for i in range(int(job["requests"])):
        if every and i % every == every - 1:
            kind = next(b)
            schedule.append((kind, f"bad_{kind}.jpg", bad[kind]))
        else:
            name, data = next(g)
            schedule.append(("good", name, data))
    answers: list = [None] * len(schedule)
    counter = itertools.count()
    lock = threading.Lock()
    deadline = time.perf_counter() + float(job["max_seconds"])

    def worker():
        box = [None]
        while time.perf_counter() < deadline:
            with lock:
                i = next(counter)
            if i >= len(schedule):
                break
            kind, name, data = schedule[i]
            t0 = time.perf_counter()
            try:
                status, body = _one(box, netloc, kind, name, data, int(job["max_body_bytes"]))
            except (OSError, http.client.HTTPException) as e:
                answers[i] = {"kind": kind, "name": name, "status": 0, "error": f"{type(e).__name__}: {e}",
                              "latency_s": time.perf_counter() - t0}
                continue
            latency = time.perf_counter() - t0
            try:
                parsed = json.loads(body)
            except ValueError:
                parsed = None
            answers[i] = {"kind": kind, "name": name, "status": status, "latency_s": latency, "answer": parsed}

    threads = [threading.Thread(target=worker) for _ in range(int(job["concurrency"]))]
    t0 = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return {"wall_s": time.perf_counter() - t0, "answers": [a for a in answers if a is not None],
            "not_sent": sum(a is None for a in answers)}


def main() -> int:
    job = json.load(sys.stdin)
    json.dump(run_load(job), sys.stdout)
    return 0


if __name__ == "__main__":
    sys.exit(main())
