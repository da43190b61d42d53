"""Real `clipscan serve` servers on 127.0.0.1 for the service's tests: the CLI in a subprocess (`cli_server`),
or the app under uvicorn in a thread of the test process (`thread_server`), where a test may slow down or
break the backend deterministically."""
from __future__ import annotations

import contextlib
import io
import os
import re
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request

import numpy as np
from PIL import Image

from .conftest import REPO, SAMPLES

READY = re.compile(r"ready: .* at http://([\d.]+):(\d+)")
GRPC_READY = re.compile(r"ready: .*, gRPC at ([\d.]+:\d+)")


def sample_files() -> list:
    return sorted(SAMPLES.glob("*.*"))


def bad_images() -> dict[str, bytes]:
    """Uploads that must each become an error of their own: truncated, garbage, empty, a pixel bomb
    (a 3000x3000 PNG of a few KB: over the test servers' 4 MP limit)."""
    jpeg = (SAMPLES / "photo_chelsea.jpg").read_bytes()
    buf = io.BytesIO()
    Image.new("L", (3000, 3000)).save(buf, "PNG")
    return {"truncated.jpg": jpeg[: len(jpeg) // 3], "garbage.jpg": os.urandom(2000),
            "bomb.png": buf.getvalue(), "text.png": b"this is not an image\n"}


BOMB_PIXELS = 4_000_000


@contextlib.contextmanager
def cli_server(*args: str, timeout: float = 60.0):
    """`clipscan serve --port 0 ARGS` in a subprocess: yields (base URL, Popen); stopped with SIGTERM after."""
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    proc = subprocess.Popen([sys.executable, "-c", "import sys; from clipscan.cli import main; sys.exit(main())",
                             "serve", "--port", "0", *args], cwd=REPO, env=env, stderr=subprocess.PIPE, text=True)
    lines = []
    try:
        deadline = time.monotonic() + timeout
        url = None
        while time.monotonic() < deadline:
            line = proc.stderr.readline()
            if not line:
                break
            lines.append(line)
            m = READY.search(line)
            if m:
                url = f"http://{m.group(1)}:{m.group(2)}"
                break
        assert url, f"the server did not say it was ready:\n{''.join(lines)}"
        threading.Thread(target=lambda: [lines.append(x) for x in proc.stderr], daemon=True).start()
        proc.log = lines
        yield url, proc
    finally:
        if proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                proc.kill()


@contextlib.contextmanager
def thread_server(state, grpc: bool = False):
    """The app of `state` (warmed up here) under uvicorn in a thread; yields the base URL, or with `grpc` (the
    gRPC endpoint on the same event loop, as `clipscan serve --grpc-port` runs it) (base URL, gRPC address)."""
    from clipscan.serve import create_app
    from clipscan.serve.connections import uvicorn_config
    from clipscan.serve.server import ServiceServer

    state.warm_up()
    config = uvicorn_config(create_app(state), state.limits)
    ports = []
    server = ServiceServer(config, lambda h, p, gp: ports.append(gp), state, 0 if grpc else None, 5.0)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not ports and time.monotonic() < deadline:
        time.sleep(0.02)
    assert server.started and ports, "uvicorn did not start"
    port = server.servers[0].sockets[0].getsockname()[1]
    try:
        yield (f"http://127.0.0.1:{port}", f"127.0.0.1:{ports[0]}") if grpc else f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(30)


def grpc_address(proc) -> str:
    """The gRPC address (host:port) a `cli_server(..., "--grpc-port", "0")` said it listens on."""
    for line in proc.log:
        m = GRPC_READY.search(line)
        if m:
            return m.group(1)
    raise AssertionError("the server did not say where gRPC listens:\n" + "".join(proc.log))


def request(url: str, data: bytes | None = None, headers: dict | None = None, method: str | None = None,
            timeout: float = 60):
    """(status, headers, body) of one HTTP request; 4xx/5xx are answers too."""
    req = urllib.request.Request(url, data=data, headers=headers or {}, method=method)
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            return resp.status, dict(resp.headers), resp.read()
    except urllib.error.HTTPError as e:
        return e.code, dict(e.headers), e.read()


def multipart(files: list[tuple[str, bytes]], field: str = "file") -> tuple[bytes, str]:
    boundary = "clipscanTestBoundary7d1f"
    parts = []
    for name, data in files:
        parts += [f"--{boundary}\r\nContent-Disposition: form-data; name=\"{field}\"; filename=\"{name}\"\r\n"
                  "Content-Type: application/octet-stream\r\n\r\n".encode(), data, b"\r\n"]
    parts.append(f"--{boundary}--\r\n".encode())
    return b"".join(parts), f"multipart/form-data; boundary={boundary}"


def metric(text: str, name: str, labels: str = "") -> float:
    """A sample's value from Prometheus text (0 when absent)."""
    for line in text.splitlines():
        if line.startswith(name + (("{" + labels) if labels else "")) and not line.startswith("#"):
            head, _, value = line.rpartition(" ")
            if labels or head == name or head.startswith(name + "{"):
                return float(value)
    return 0.0


def noisy_pixels(seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 255, (96, 128, 3), dtype=np.uint8)
