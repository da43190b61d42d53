#!/usr/bin/env python3
"""Triton's perf_analyzer, unmodified, against `clipscan serve` (HTTP and gRPC) and against the repository
`clipscan triton` writes on the real tritonserver, each next to offline Scanner passes of the same run.

    python tools/serving_bar.py MODEL.onnx --images a.jpg b.jpg ... [--concurrency 16] [--json out.json]

Order: an offline pass, `clipscan serve` (perf_analyzer over HTTP, then gRPC), an offline pass, the Triton
repository on tritonserver (HTTP, then gRPC), an offline pass. Each perf_analyzer level sends one image per
request (BYTES, perf_analyzer's --input-data made from the JPEGs) at the given concurrency, in windows of
8 s until three agree (perf_analyzer's own stability rule, at most 6 trials). Printed: images/s of each,
and each as a ratio to the median offline pass. Needs clipscan[serve,triton] and perf_analyzer
(tools/perf_analyzer.py provisions it). Loopback only; free ports are picked.
"""
from __future__ import annotations

import argparse
import json
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
import perf_analyzer  # tools/perf_analyzer.py


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_ready(url: str, timeout: float) -> None:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        try:
            if urllib.request.urlopen(url, timeout=2).status == 200:
                return
        except OSError:
            time.sleep(0.5)
    raise SystemExit(f"{url} was not ready within {timeout:.0f} s")


def offline_pass(model: str, images: list[bytes], n: int) -> float:
    from clipscan.runtime.scanner import Scanner

    scanner = Scanner(model)
    items = [(f"{i}.jpg", images[i % len(images)]) for i in range(n)]
    list(scanner.scan_many(items[:16]))  # warm-up
    start = time.perf_counter()
    rows = list(scanner.scan_many(items))
    seconds = time.perf_counter() - start
    bad = [r.error for r in rows if r.error]
    if bad:
        raise SystemExit(f"the offline pass failed on an image: {bad[0]}")
    return n / seconds


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("model")
    parser.add_argument("--images", nargs="+", required=True, help="JPEG files (perf_analyzer's input data)")
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--offline-images", type=int, default=96, help="images per offline pass (default 96)")
    parser.add_argument("--json", help="write the results here")
    args = parser.parse_args()
    images = [Path(p).read_bytes() for p in args.images]
    pa = perf_analyzer.provision()
    work = Path(tempfile.mkdtemp(prefix="clipscan-serving-bar-"))
    (work / "input.json").write_text(json.dumps(perf_analyzer.image_input_data(images)))

    def level(url: str, protocol: str) -> float:
        proc = pa.run(["-m", "bar", "-u", url, "-i", protocol, "--input-data", str(work / "input.json"),
                       "--concurrency-range", str(args.concurrency), "--measurement-interval", "8000",
                       "--max-trials", "6", "-f", str(work / "pa.csv")], timeout=600)
        if proc.returncode != 0:
            raise SystemExit(f"perf_analyzer failed on {url} ({protocol}): {proc.stdout[-1500:]}{proc.stderr[-1500:]}")
        return float((work / "pa.csv").read_text().splitlines()[1].split(",")[1])

    cli = [sys.executable, "-m", "clipscan"]
    results: dict = {"offline": [offline_pass(args.model, images, args.offline_images)]}
    http, grpc = free_port(), free_port()
    serve = subprocess.Popen([*cli, "serve", args.model, "--port", str(http), "--grpc-port", str(grpc), "--name", "bar"],
                             stdout=subprocess.DEVNULL, stderr=open(work / "serve.log", "w"))
    try:
        wait_ready(f"http://127.0.0.1:{http}/v2/health/ready", 120)
        results["serve_http"] = level(f"127.0.0.1:{http}", "http")
        results["serve_grpc"] = level(f"127.0.0.1:{grpc}", "grpc")
    finally:
        serve.terminate()
        serve.wait(60)
    results["offline"].append(offline_pass(args.model, images, args.offline_images))
    ports = [free_port() for _ in range(3)]
    triton = subprocess.Popen([*cli, "triton", args.model, "--repo", str(work / "repo"), "--name", "bar", "--start",
                               "--http-port", str(ports[0]), "--grpc-port", str(ports[1]), "--metrics-port",
                               str(ports[2])], stdout=subprocess.DEVNULL, stderr=open(work / "triton.log", "w"))
    try:
        wait_ready(f"http://127.0.0.1:{ports[0]}/v2/health/ready", 240)
        results["triton_http"] = level(f"127.0.0.1:{ports[0]}", "http")
        results["triton_grpc"] = level(f"127.0.0.1:{ports[1]}", "grpc")
    finally:
        triton.terminate()
        triton.wait(60)
    results["offline"].append(offline_pass(args.model, images, args.offline_images))
    offline = statistics.median(results["offline"])
    print(f"offline Scanner passes: {', '.join(f'{x:.1f}' for x in results['offline'])} images/s (median {offline:.1f})")
    for key in ("serve_http", "serve_grpc", "triton_http", "triton_grpc"):
        print(f"{key:12s} {results[key]:7.1f} images/s  {results[key] / offline:.2f}x offline")
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
