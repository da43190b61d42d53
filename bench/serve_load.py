"""The load generator of `clipscan bench --serve`, run as its own process (so its CPU use is not the
server's): a bounded closed loop of `concurrency` keep-alive connections to a loopback server posting
uploads to `/v1/scan` (protocol "upload", `clipscan serve`), or one image per Open Inference Protocol
request to `/v2/models/{model}/infer` (protocol "v2", what Triton's own clients send: the `image` BYTES
tensor through the binary extension, the answer as JSON tensors), each request's latency, status and
answer recorded.

    python -m clipscan.bench.serve_load < job.json > answers.json

The job: {"url", "concurrency", "requests", "max_seconds", "good": [paths], "bad": {kind: path},
"bad_every": k, "max_body_bytes", "protocol": "upload" | "v2", "model", "image_shape"}; every k-th
request is a malformed upload (truncated, garbage, a pixel bomb, a wrong content type, an oversized
body, an empty body; over v2 the ones with a body of their own: truncated, garbage, bomb, empty), the
others cycle through the good images.
"""
from __future__ import annotations

import http.client
import itertools
import json
import struct
import sys
import threading
import time
import urllib.parse
from pathlib import Path

BAD_KINDS = ("truncated", "garbage", "bomb", "wrong_type", "oversized", "empty")
# a v2 request has no content type of its own and the image is one tensor element among the body's bytes
V2_BAD_KINDS = ("truncated", "garbage", "bomb", "empty")
V2_OUTPUTS = ("p_generated", "verdict", "error")


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


def _v2_body(data: bytes, shape: list[int]) -> tuple[bytes, int]:
    """An infer request of one image: the BYTES element after the JSON header, outputs asked for as JSON."""
    raw = struct.pack("<I", len(data)) + data
    head = json.dumps({"inputs": [{"name": "image", "datatype": "BYTES", "shape": shape,
                                   "parameters": {"binary_data_size": len(raw)}}],
                       "outputs": [{"name": n, "parameters": {"binary_data": False}} for n in V2_OUTPUTS]},
                      separators=(",", ":")).encode()
    return head + raw, len(head)


def _v2_row(answer) -> dict | None:
    """The answer's one image as the row fields the bench checks (NaN and "" mean none, as the contract says)."""
    try:
        out = {o["name"]: o["data"][0] for o in answer["outputs"]}
        p = out["p_generated"]
        return {"p_generated": None if p is None or p != p else float(p), "verdict": out["verdict"] or None,
                "error": out["error"] or None}
    except (KeyError, IndexError, TypeError):
        return None


def _one_v2(conn_box: list, netloc: tuple, path: str, body: tuple[bytes, int]) -> tuple[int, bytes]:
    if conn_box[0] is None:
        conn_box[0] = http.client.HTTPConnection(*netloc, timeout=120)
    conn = conn_box[0]
    try:
        conn.request("POST", path, body=body[0], headers={"Content-Type": "application/octet-stream",
                                                          "Inference-Header-Content-Length": str(body[1])})
        resp = conn.getresponse()
        return resp.status, resp.read()
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
    v2 = job.get("protocol", "upload") == "v2"
    if v2:
        shape = list(job.get("image_shape") or [1, 1])
        path = "/v2/models/" + urllib.parse.quote(job["model"], safe="") + "/infer"
        bodies = {d: _v2_body(d, shape) for d in {*[d for _, d in good], *bad.values()}}
    schedule = []
    g, b = itertools.cycle(good), itertools.cycle(V2_BAD_KINDS if v2 else BAD_KINDS)
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
                status, body = (_one_v2(box, netloc, path, bodies[data]) if v2 else
                                _one(box, netloc, kind, name, data, int(job["max_body_bytes"])))
            except (OSError, http.client.HTTPException) as e:
                answers[i] = {"kind": kind, "name": name, "status": 0, "error": f"{type(e).__name__}: {e}",
                              "latency_s": time.perf_counter() - t0}
                continue
            latency = time.perf_counter() - t0
            try:
                parsed = json.loads(body)
            except ValueError:
                parsed = None
            if v2 and status == 200:
                parsed = [_v2_row(parsed)]
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
