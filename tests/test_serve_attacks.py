"""Hostile clients against the real `clipscan serve` on 127.0.0.1 (the CLI in a subprocess), each attack
performed for real and bounded in count and time, while good clients keep asking (a liveness probe and a
small JPEG scan, over and over): every good client is answered within 2 s and never with a 5xx, the
server's RSS stays under 1 GB, and every hostile body ends in a 4xx.

Attacks: hundreds of idle TCP connections and a slow request head; Open Inference Protocol bodies whose
declared shapes hold millions or 2**64 elements; JSON nested 50k deep, an integer of 5,000 digits,
`parameters` that are not objects, NaN and infinite pixels; a browser form's content type, a foreign Host
(DNS rebinding) and a foreign Origin (a cross-site post); 64 legal 64-megapixel PNGs in one request, and a
few of them beside a small JPEG of another client."""
from __future__ import annotations

import contextlib
import io
import json
import random
import socket
import struct
import threading
import time
import urllib.error
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import psutil
import pytest
from PIL import Image

from .serve_servers import cli_server, metric, multipart, request, sample_files

pytestmark = [pytest.mark.slow, pytest.mark.alone]  # answers are timed: nothing runs beside it (tests/workers.py)

HEADER_TIMEOUT_S = 3
BODY_TIMEOUT_S = 3
KEEP_ALIVE_S = 2
MAX_OPEN = 150
GB = 2**30
JPEG = {"Content-Type": "image/jpeg"}
JSON = {"Content-Type": "application/json"}


@pytest.fixture(scope="module")
def server():
    with cli_server("--header-timeout-s", str(HEADER_TIMEOUT_S), "--max-open-connections", str(MAX_OPEN),
                    "--body-timeout-s", str(BODY_TIMEOUT_S), "--keep-alive-s", str(KEEP_ALIVE_S), "--timeout-s", "10",
                    "--name", "detector") as (url, proc):
        yield url, proc


@contextlib.contextmanager
def good_clients(url: str, pid: int):
    """Good clients ask over and over while the block runs; afterwards every answer must have been a
    non-5xx within 2 s (liveness 200, the scan 200) and the server's RSS under 1 GB throughout."""
    image = sample_files()[0].read_bytes()
    stop, answers, rss = threading.Event(), [], []

    def ask(kind: str) -> None:
        while not stop.is_set():
            start = time.monotonic()
            try:
                if kind == "live":
                    status = request(url + "/v2/health/live", timeout=10)[0]
                else:
                    status = request(url + "/v1/scan?name=good.jpg", image, JPEG, timeout=10)[0]
            except (OSError, urllib.error.URLError) as e:
                status = f"{type(e).__name__}: {e}"
            answers.append((kind, status, time.monotonic() - start))
            stop.wait(0.1)

    def watch() -> None:
        process = psutil.Process(pid)
        while not stop.is_set():
            rss.append(process.memory_info().rss)
            stop.wait(0.05)

    threads = [threading.Thread(target=f, args=a, daemon=True)
               for f, a in ((ask, ("live",)), (ask, ("scan",)), (watch, ()))]
    for t in threads:
        t.start()
    try:
        yield answers
    finally:
        stop.set()
        for t in threads:
            t.join(15)
    bad = [a for a in answers if a[1] != 200 or a[2] >= 2.0]
    assert {k for k, _, _ in answers} == {"live", "scan"}, answers
    assert not bad, f"good clients answered late or badly during the attack: {bad[:5]} of {len(answers)}"
    assert max(rss) < GB, f"the server's RSS reached {max(rss) / 2**20:.0f} MiB"


def _closed_by_peer(sock: socket.socket, wait: float) -> bool:
    sock.settimeout(max(wait, 0.05))
    try:
        return sock.recv(1) == b""
    except ConnectionResetError:
        return True
    except socket.timeout:
        return False


def _port(url: str) -> tuple[str, int]:
    host, port = url.removeprefix("http://").split(":")
    return host, int(port)


def test_idle_sockets_and_slow_heads_starve_no_one(server):
    """Twice the open-connection cap of sockets that send nothing (300: past the 264 that took the service
    down before), then one more every 20 ms and a head sent one byte every 0.3 s, for longer than the
    header timeout: the good clients are answered throughout, the longest-idle sockets are closed to make
    room, and every socket that sent no complete head is closed by the server within the header timeout."""
    url, proc = server
    addr = _port(url)
    idle = [socket.create_connection(addr, timeout=5) for _ in range(2 * MAX_OPEN)]
    with good_clients(url, proc.pid) as answers:
        start = time.monotonic()
        slow = socket.create_connection(addr, timeout=5)
        slow.sendall(b"GET /v2/health/live HTTP/1.1\r\nHost: 127.0.0.1\r\n")
        dribbled, last = 0, 0.0
        while time.monotonic() - start < HEADER_TIMEOUT_S + 1.5:
            idle.append(socket.create_connection(addr, timeout=5))
            if time.monotonic() - last > 0.3:  # one header byte every 0.3 s: never a whole head
                last = time.monotonic()
                try:
                    slow.sendall(b"X")
                    dribbled += 1
                except OSError:
                    pass
            time.sleep(0.02)
        deadline = time.monotonic() + HEADER_TIMEOUT_S + 1
        still_open = [s for s in idle + [slow] if not _closed_by_peer(s, deadline - time.monotonic())]
        during = [a for a in answers if a[0] == "scan"]
    for s in idle + [slow]:
        s.close()
    assert not still_open, f"{len(still_open)} of {len(idle) + 1} connections that sent no complete head stayed open"
    assert dribbled < (HEADER_TIMEOUT_S + 1.5) / 0.3, "the slow head was not cut off"
    assert len(during) >= 5, "the good clients were not heard during the attack"


def test_kept_alive_connections_are_closed_when_idle_or_slow(server):
    """After an answer, a kept-alive connection that sends nothing is closed after the keep-alive time; one
    that starts its next request head and never finishes it, after the header timeout."""
    url, _ = server
    head = b"GET /v2/health/live HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n"
    quiet, partial = (socket.create_connection(_port(url), timeout=5) for _ in range(2))
    for s in (quiet, partial):
        s.sendall(head)
        answer = b""
        while not answer.endswith(b'{"live":true}'):  # the head and the body may come in two pieces
            answer += s.recv(65536)
        assert answer.startswith(b"HTTP/1.1 200")
    partial.sendall(b"GET /v2/health/live HTTP/1.1\r\n")
    start = time.monotonic()
    assert _closed_by_peer(quiet, KEEP_ALIVE_S + 2) and time.monotonic() - start >= KEEP_ALIVE_S - 0.5
    assert _closed_by_peer(partial, HEADER_TIMEOUT_S + 2) and time.monotonic() - start >= HEADER_TIMEOUT_S - 0.5
    quiet.close()
    partial.close()


def _binary_body(header: dict, raw: bytes) -> tuple[bytes, dict]:
    head = json.dumps(header).encode()
    return head + raw, {"Content-Type": "application/octet-stream", "Inference-Header-Content-Length": str(len(head))}


def _image_entry(shape, **extra) -> dict:
    return {"name": "image", "datatype": "BYTES", "shape": shape, **extra}


def _pixels_json(value: str) -> bytes:
    data = ",".join([value] + ["0.5"] * (3 * 224 * 224 - 1))
    return ('{"inputs":[{"name":"pixels","datatype":"FP32","shape":[1,3,224,224],"data":[' + data + "]}]}").encode()


def _hostile_bodies():
    """(what, body, headers, status) of each hostile request to the inference endpoint."""
    n = 16_700_000
    zeros, zeros_headers = _binary_body({"inputs": [_image_entry([n], parameters={"binary_data_size": 4 * n})]},
                                        bytes(4 * n))
    one, one_headers = _binary_body({"inputs": [_image_entry([1], parameters={"binary_data_size": 4 * n})]},
                                    bytes(4 * n))
    inf = np.full((1, 3, 224, 224), np.inf, np.float32).tobytes()
    inf_body, inf_headers = _binary_body({"inputs": [{"name": "pixels", "datatype": "FP32", "shape": [1, 3, 224, 224],
                                                      "parameters": {"binary_data_size": len(inf)}}]}, inf)
    good_input = _image_entry([1], data=["x"])
    return [
        ("16.7M zero-length BYTES, binary", zeros, zeros_headers, 413),
        ("16.7M zero-length BYTES under shape [1]", one, one_headers, 400),
        ("shape [2**32, 2**32], no data", json.dumps({"inputs": [_image_entry([2**32, 2**32], data=[])]}).encode(),
         JSON, 413),
        ("4M empty strings in JSON", json.dumps({"inputs": [_image_entry([4_000_000], data=[""] * 4_000_000)]}).encode(),
         JSON, 413),
        ("2.5M empty strings declared", json.dumps({"inputs": [_image_entry([2_500_000], data=[""] * 2_500_000)]}).encode(),
         JSON, 413),
        ("a shape of 100 dimensions", json.dumps({"inputs": [_image_entry([0] * 100, data=[])]}).encode(), JSON, 400),
        ("50k-deep JSON", b'{"inputs":' + b"[" * 50_000 + b"]" * 50_000 + b"}", JSON, 400),
        ("5,000-digit integer", b'{"inputs":[], "id": ' + b"9" * 5000 + b"}", JSON, 400),
        ("input parameters a string", json.dumps({"inputs": [{**good_input, "parameters": "x"}]}).encode(), JSON, 400),
        ("request parameters a string", json.dumps({"inputs": [good_input], "parameters": "x"}).encode(), JSON, 400),
        ("datatype an object", json.dumps({"inputs": [{**good_input, "datatype": {}}]}).encode(), JSON, 400),
        ("output parameters a string", json.dumps({"inputs": [good_input],
                                                   "outputs": [{"name": "verdict", "parameters": "x"}]}).encode(),
         JSON, 400),
        ("an output asked for 300k times", json.dumps({"inputs": [good_input],
                                                       "outputs": [{"name": "verdict"}] * 300_000}).encode(), JSON, 400),
        ("an input sent 100k times", json.dumps({"inputs": [good_input] * 100_000}).encode(), JSON, 400),
        ("NaN pixels", _pixels_json("NaN"), JSON, 400),
        ("infinite pixels", _pixels_json("-Infinity"), JSON, 400),
        ("infinite binary pixels", inf_body, inf_headers, 400),
        ("a browser form", b"inputs=1", {"Content-Type": "application/x-www-form-urlencoded"}, 415),
        ("text/plain", b"{}", {"Content-Type": "text/plain"}, 415),
        ("DNS rebinding Host", json.dumps({"inputs": [good_input]}).encode(), {**JSON, "Host": "evil.example:8000"},
         403),
        ("cross-site Origin", json.dumps({"inputs": [good_input]}).encode(), {**JSON, "Origin": "http://evil.example"},
         403),
    ]


def test_hostile_inference_bodies_are_4xx_fast_and_no_one_else_waits(server):
    url, proc = server
    bodies = _hostile_bodies()
    with good_clients(url, proc.pid):
        for what, body, headers, want in bodies:
            start = time.monotonic()
            model = "detector_pixels" if "pixels" in what else "detector"  # pixels have a model of their own
            status, _, answer = request(url + f"/v2/models/{model}/infer", body, headers, timeout=30)
            seconds = time.monotonic() - start
            assert status == want, f"{what}: {status} {answer[:300]!r}"
            assert json.loads(answer)["error"], what
            assert seconds < 3, f"{what}: answered after {seconds:.1f} s"
            time.sleep(0.2)  # the good clients get their turns between attacks
    text = request(url + "/metrics")[2].decode()
    for kind in ("backend_failure", "server_error"):
        assert metric(text, "clipscan_errors_total", f'kind="{kind}"') == 0, kind


def _png(side: int, seed: int) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (side, side), (seed % 256, 40, 200)).save(buf, "PNG")
    return buf.getvalue()


def test_huge_images_do_not_monopolise_the_decoders(server):
    """64 legal 64-megapixel PNGs in one request are refused from their headers (over the per-request
    pixel budget) before any is decoded; four of them, within the budget, decode on at most one of the
    two decode threads while a small JPEG of another client is answered at once."""
    url, proc = server
    pngs = [_png(8000, 0)] * 64  # one file sent 64 times: the server decodes (or refuses) each
    body, ctype = multipart([(f"huge{i}.png", p) for i, p in enumerate(pngs)])
    with good_clients(url, proc.pid):
        start = time.monotonic()
        status, _, answer = request(url + "/v1/scan", body, {"Content-Type": ctype}, timeout=30)
        assert status == 413 and "MP together" in json.loads(answer)["error"], answer[:300]
        assert time.monotonic() - start < 3
        few, few_type = multipart([(f"huge{i}.png", p) for i, p in enumerate(pngs[:4])])
        heavy = []
        worker = threading.Thread(target=lambda: heavy.append(request(url + "/v1/scan", few, {"Content-Type": few_type},
                                                                      timeout=60)), daemon=True)
        worker.start()
        worker.join(25)
    assert heavy and heavy[0][0] in (200, 504), heavy[:1]


def test_wrong_content_type_and_hosts_on_the_rest_endpoint(server):
    url, _ = server
    image = sample_files()[0].read_bytes()
    body, ctype = multipart([("a.jpg", image)])
    assert request(url + "/v1/scan", body, {"Content-Type": ctype, "Origin": "https://evil.example"})[0] == 403
    assert request(url + "/v1/scan", body, {"Content-Type": ctype, "Origin": "null"})[0] == 403
    assert request(url + "/v1/scan", image, {**JPEG, "Host": "rebound.example"})[0] == 403
    assert request(url + "/v1/scan", image, {**JPEG, "Host": "localhost"})[0] == 200
    same = "http://" + url.removeprefix("http://")
    assert request(url + "/v1/scan", body, {"Content-Type": ctype, "Origin": same})[0] == 200


def test_allow_host_admits_a_name():
    with cli_server("--allow-host", "scanner.internal") as (url, _):
        image = sample_files()[0].read_bytes()
        assert request(url + "/v1/scan", image, {**JPEG, "Host": "scanner.internal:8000"})[0] == 200
        assert request(url + "/v1/scan", image, {**JPEG, "Host": "other.internal"})[0] == 403


def test_binary_bytes_element_lengths_are_read_no_further_than_the_shape():
    """The decoder stops at the first element past the declared count (no 16.7M-entry list is built)."""
    from clipscan.runtime.v2_wire import WireError, decode_bytes_elements

    data = struct.pack("<I", 1) + b"a" + bytes(4 * 1_000_000)
    start = time.perf_counter()
    with pytest.raises(WireError, match="more than the 1 elements"):
        decode_bytes_elements(data, "tensor 'image'", 1)
    assert time.perf_counter() - start < 0.1


def _raw_answer(sock: socket.socket, wait: float) -> bytes:
    sock.settimeout(wait)
    out = b""
    try:
        while chunk := sock.recv(65536):
            out += chunk
    except (socket.timeout, ConnectionResetError):
        pass
    return out


def test_slow_bodies_are_cut_off_and_no_one_else_waits(server):
    """Forty clients send a request head and ten bytes of a 1 MB body, then nothing: each is answered 408
    after the body timeout and closed, and the in-flight slots they held are free again."""
    url, proc = server
    addr = _port(url)
    with good_clients(url, proc.pid):
        socks = []
        for _ in range(40):
            s = socket.create_connection(addr, timeout=5)
            s.sendall(b"POST /v1/scan HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: image/jpeg\r\n"
                      b"Content-Length: 1000000\r\n\r\n" + b"\xff" * 10)
            socks.append(s)
        answers = [_raw_answer(s, BODY_TIMEOUT_S + 3) for s in socks]
        for s in socks:
            s.close()
    assert all(a.startswith(b"HTTP/1.1 408") and b"did not arrive within" in a for a in answers), answers[:2]


def test_concurrent_large_bodies_stay_within_the_buffered_budget(server):
    """Eight clients send 60 MB bodies at once (480 MB, past the 128 MB budget of bodies held at once):
    those that fit are read (and refused as the malformed tensors they are), the others are 503 with
    Retry-After at once, and the server's RSS stays under 1 GB."""
    url, proc = server
    addr = _port(url)
    size = 60 * 2**20
    chunk = b"\0" * 2**20

    def send() -> bytes:
        with socket.create_connection(addr, timeout=30) as s:
            s.sendall(b"POST /v2/models/detector/infer HTTP/1.1\r\nHost: 127.0.0.1\r\n"
                      b"Content-Type: application/octet-stream\r\nInference-Header-Content-Length: 2\r\n"
                      b"Content-Length: %d\r\n\r\n{}" % size)
            try:
                for _ in range(60):
                    s.sendall(chunk)
            except OSError:  # refused: the server answered and closed before the body was sent
                pass
            return _raw_answer(s, 20)

    with good_clients(url, proc.pid):
        with ThreadPoolExecutor(8) as pool:
            answers = list(pool.map(lambda _: send(), range(8)))
    codes = sorted(a[9:12] for a in answers)
    assert codes.count(b"503") >= 4 and set(codes) <= {b"400", b"408", b"503"}, codes  # 408: slower than 3 s
    assert all(b"retry-after: 1" in a.lower() for a in answers if a[9:12] == b"503")


_ODD_VALUES = [None, True, 0, -1, 1.5, "x", [], {}, [1], {"a": 1}, 2**70, 2**32, [2**31, 3, 224, 224],
               "BYTES", "FP32", "image", "pixels"]


def _mutated(o, rng):
    """`o` with one value somewhere in it replaced by an odd one, or removed."""
    if isinstance(o, dict) and o and rng.random() < 0.75:
        k, o = rng.choice(sorted(o)), dict(o)
        r = rng.random()
        if r < 0.3:
            o[k] = rng.choice(_ODD_VALUES)
        elif r < 0.4:
            del o[k]
        else:
            o[k] = _mutated(o[k], rng)
        return o
    if isinstance(o, list) and o and rng.random() < 0.75:
        o, i = list(o), rng.randrange(len(o))
        o[i] = _mutated(o[i], rng) if rng.random() < 0.6 else rng.choice(_ODD_VALUES)
        return o
    return rng.choice(_ODD_VALUES)


def test_mutated_inference_requests_are_never_a_5xx(server):
    """600 seeded mutations of valid JSON and binary inference requests: each is answered 200 or a 4xx
    with a JSON error, never a 5xx."""
    url, _ = server
    rng = random.Random(29)
    image = sample_files()[0].read_bytes()
    pixels = np.zeros((1, 3, 224, 224), np.float32).tobytes()
    json_request = {"id": "r", "parameters": {"binary_data_output": False},
                    "inputs": [_image_entry([1], data=[image.decode("latin-1")])],
                    "outputs": [{"name": "verdict", "parameters": {"binary_data": False}}]}
    binary_requests = [
        ({"inputs": [_image_entry([1], parameters={"binary_data_size": len(image) + 4})],
          "outputs": [{"name": "p_generated", "parameters": {"binary_data": True}}]},
         struct.pack("<I", len(image)) + image),
        ({"inputs": [{"name": "pixels", "datatype": "FP32", "shape": [1, 3, 224, 224],
                      "parameters": {"binary_data_size": len(pixels)}}], "parameters": {"binary_data_output": True}},
         pixels)]
    answers = {}
    for i in range(600):
        if i % 2:
            body, headers = json.dumps(_mutated(json_request, rng)).encode(), JSON
        else:
            header, raw = binary_requests[i % 4 // 2]
            body, headers = _binary_body(_mutated(header, rng), raw)
        model = "detector_pixels" if i % 4 == 2 else "detector"  # the pixels request goes to the pixels model
        status, _, answer = request(url + f"/v2/models/{model}/infer", body, headers)
        answers[status] = answers.get(status, 0) + 1
        assert status == 200 or (400 <= status < 500 and json.loads(answer)["error"]), (status, body[:300], answer)
    assert answers.get(200, 0) > 20 and sum(n for s, n in answers.items() if s != 200) > 300, answers
