"""`clipscan bench --serve`: the service under load next to the offline Scanner, in one run.

Starts `clipscan serve` on 127.0.0.1 (a subprocess), once with dynamic batching and once with batch-1
serving, and, with the `triton` mode (`--triton`), the real tritonserver on the repository `clipscan
triton` writes (serve_triton); for each concurrency of the sweep runs a bounded closed-loop load from a second process
(`serve_load`), with malformed uploads mixed in. It reports served throughput (good images answered per
second of the level's wall time) and latency p50/p95/p99 of the good requests, next to the offline
Scanner's throughput on the same model and images measured in the same run (median of passes before and
after the served sweep, and one pass right before and after each level, as the machine's load drifts),
plus the ratios; and checks every answer: each good request answered once with
the offline row (p_generated within 1e-5, same verdict), each bad one a 4xx JSON error (over Triton: the
image's `error` element), no 5xx; the server's resident memory after warm-up and after each level, and for
Triton where each request's time went (queue, compute) by the server's own statistics. Everything is
timed with decoding inside.
"""
from __future__ import annotations

import json
import re
import statistics
import subprocess
import sys
import tempfile
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from clipscan.measure.machine import describe_cpu
from clipscan.runtime.discover import iter_files
from clipscan.runtime.errors import InvalidArgumentError, ServerError
from clipscan.runtime.scanner import Scanner

from .images import synthetic_images
from .serve_load import bad_uploads

READY = re.compile(r"ready: .* at http://([\d.]+):(\d+)")
MAX_BODY_MB = 8
# --serve-modes (and --triton) -> what each serves
SERVE_MODES = {
    "batching": "clipscan serve with dynamic batching (--serve-max-batch, --serve-delay-ms)",
    "batch-1": "clipscan serve, one image per inference",
    "triton": "the real tritonserver (nvidia-pytriton's) on the repository `clipscan triton` writes for this "
              "machine, one image per v2 infer request",
}


@dataclass
class ServeBenchConfig:
    model: str | None = None
    images: str | None = None
    concurrency: tuple[int, ...] = (1, 4, 16, 64)
    requests: int = 200                 # per level
    max_seconds: float = 60.0           # per level
    bad_every: int = 10                 # every 10th request malformed (10%)
    max_batch: int = 32
    max_delay_ms: float = 5.0
    offline_passes: int = 2             # before and after the sweep each
    offline_images: int = 192           # per offline pass (the passes next to each level: a third)
    modes: tuple[str, ...] = ("batching", "batch-1")
    workers: int = 2
    spin: bool = True                   # ONNX Runtime's spinning threads, offline and in the server alike
    extra_server_args: list = field(default_factory=list)
    triton_knobs: dict = field(default_factory=dict)  # RepositoryOptions knobs for the triton mode (None: tuned)


def _images(cfg: ServeBenchConfig, tmp: Path) -> tuple[list[Path], str]:
    if cfg.images:
        paths = [Path(p) for p in iter_files([cfg.images])]
        if not paths:
            raise InvalidArgumentError(f"no image files found in {cfg.images}; pass a folder of images (or no "
                                       "--images for synthetic ones)")
        return paths, f"{cfg.images} ({len(paths)} files)"
    return synthetic_images(tmp / "images", 16), "16 synthetic 640x480 JPEGs"


def offline_throughput(scanner: Scanner, items: list[tuple[str, bytes]], passes: int) -> list[float]:
    """Images per second of `scanner.scan_many` over `items` (bytes in memory, decoding included), per pass."""
    list(scanner.scan_many(items[:4]))  # warm
    rates = []
    for _ in range(passes):
        t0 = time.perf_counter()
        n = sum(1 for _ in scanner.scan_many(items))
        rates.append(n / (time.perf_counter() - t0))
    return rates


def _start_server(cfg: ServeBenchConfig, batching: bool) -> tuple[subprocess.Popen, str]:
    args = [sys.executable, "-c", "import sys; from clipscan.cli import main; sys.exit(main())", "serve",
            *([cfg.model] if cfg.model else []), "--host", "127.0.0.1", "--port", "0",
            "--max-batch", str(cfg.max_batch if batching else 1),
            "--max-delay-ms", str(cfg.max_delay_ms if batching else 0), "--max-body-bytes", str(MAX_BODY_MB * 2**20),
            "--max-queue", "4096", "--max-in-flight", "512", "--decode-workers", str(cfg.workers),
            *([] if cfg.spin else ["--no-spin"]), *cfg.extra_server_args]
    proc = subprocess.Popen(args, stderr=subprocess.PIPE, text=True)
    lines = []
    for line in proc.stderr:
        lines.append(line)
        m = READY.search(line)
        if m:
            return proc, f"http://{m.group(1)}:{m.group(2)}"
    proc.wait()
    raise ServerError("the server did not start (its output follows); check the model and the port:\n"
                      + "".join(lines))


@contextmanager
def _server(cfg: ServeBenchConfig, mode: str, report: dict):
    """(job fields, pid, stats reader) of the server of `mode`, stopped on exit (its exit code into `report`)."""
    if mode == "triton":
        from clipscan.triton.repository import RepositoryOptions

        from .serve_triton import image_shape, model_stats, triton_server

        with triton_server(cfg.model, RepositoryOptions(**cfg.triton_knobs)) as (server, model, knobs):
            report["triton_knobs"] = knobs
            yield ({"url": server.url, "protocol": "v2", "model": model, "image_shape": image_shape(server.url, model)},
                   server.process.pid, lambda: model_stats(server.url, model))
        report.setdefault("server_exit_codes", []).append(server.process.returncode)
        return
    proc, url = _start_server(cfg, mode == "batching")
    try:
        yield {"url": url}, proc.pid, None
    finally:
        proc.terminate()
        report.setdefault("server_exit_codes", []).append(proc.wait(60))


def _children(pid: int) -> list[int]:
    try:
        return [int(c) for t in Path(f"/proc/{pid}/task").iterdir()
                for c in (t / "children").read_text().split()]
    except OSError:
        return []


def _rss_mb(pid: int) -> float | None:
    """Resident memory of `pid` and its descendants (tritonserver's python-backend stubs are its children)."""
    total, found, todo = 0.0, False, [pid]
    while todo:
        p = todo.pop()
        try:
            for line in Path(f"/proc/{p}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    total, found = total + int(line.split()[1]) / 1024, True
        except OSError:
            continue
        todo += _children(p)
    return total if found else None


def _load(job: dict) -> dict:
    out = subprocess.run([sys.executable, "-m", "clipscan.bench.serve_load"], input=json.dumps(job),
                         capture_output=True, text=True, check=True, timeout=job["max_seconds"] + 120)
    return json.loads(out.stdout)


def _pct(values: list[float], q: float) -> float | None:
    if not values:
        return None
    values = sorted(values)
    return values[min(len(values) - 1, round(q / 100 * (len(values) - 1)))]


def check_level(result: dict, expected: dict, requests: int) -> dict:
    """Counts and latencies of one level's answers, each checked against the offline rows."""
    good_lat, wrong, bad_ok, bad_wrong, s5xx, failed = [], [], 0, [], 0, 0
    for a in result["answers"]:
        status = a["status"]
        s5xx += status >= 500
        failed += status == 0
        if a["kind"] == "good":
            row = (a.get("answer") or [None])[0] if status == 200 and isinstance(a.get("answer"), list) else None
            want = expected[a["name"]]
            if row is None or row["verdict"] != want["verdict"] or row["error"] != want["error"] or (
                    want["p_generated"] is not None and abs(row["p_generated"] - want["p_generated"]) > 1e-5):
                wrong.append((a["name"], status, row))
            else:
                good_lat.append(a["latency_s"])
        elif 400 <= status < 500 and isinstance(a.get("answer"), dict) and isinstance(a["answer"].get("error"), str):
            bad_ok += 1
        elif status == 200 and isinstance(a.get("answer"), list) and (a["answer"][0] or {}).get("error"):
            bad_ok += 1  # over v2 a bad image is an answered request whose `error` element says why
        else:
            bad_wrong.append((a["kind"], status))
    n_good = len(good_lat)
    return {"sent": len(result["answers"]), "planned": requests, "not_sent": result["not_sent"],
            "good_ok": n_good, "good_wrong": len(wrong), "bad_4xx": bad_ok, "bad_wrong": len(bad_wrong),
            "status_5xx": s5xx, "connection_errors": failed, "wall_s": result["wall_s"],
            "images_per_s": n_good / result["wall_s"] if result["wall_s"] else 0.0,
            "p50_ms": 1e3 * (_pct(good_lat, 50) or 0), "p95_ms": 1e3 * (_pct(good_lat, 95) or 0),
            "p99_ms": 1e3 * (_pct(good_lat, 99) or 0), "examples_wrong": (wrong[:3] + bad_wrong[:3])}


def run_serve_bench(cfg: ServeBenchConfig, progress=print) -> dict:
    with tempfile.TemporaryDirectory(prefix="clipscan-serve-bench-") as tmp:
        tmp = Path(tmp)
        paths, described = _images(cfg, tmp)
        items = [(p.name, p.read_bytes()) for p in paths]
        jpeg = next((d for n, d in items if n.lower().endswith((".jpg", ".jpeg"))), items[0][1])
        bad = bad_uploads(jpeg, tmp)
        with Scanner(cfg.model, batch_size=cfg.max_batch, spin=cfg.spin) as scanner:
            model_desc = f"{scanner.artifact.path.name} ({scanner.manifest.precision}, {scanner.manifest.name})"
            backend = scanner.backend_name
            expected = {r.path: r.to_row() for r in scanner.scan_many(items)}
            # long enough for the Scanner's decode/inference pipeline to reach its steady state
            reps = items * max(1, -(-cfg.offline_images // len(items)))
            near_reps = items * max(1, -(-(cfg.offline_images // 3) // len(items)))
            first = offline_throughput(scanner, reps, cfg.offline_passes)
            report = {"cpu": describe_cpu(), "model": model_desc, "backend": backend, "images": described,
                      "requests_per_level": cfg.requests, "bad_every": cfg.bad_every, "levels": []}
            for mode in cfg.modes:
                with _server(cfg, mode, report) as (where, pid, stats):
                    job = {**where, "good": [str(p) for p in paths], "bad": bad, "bad_every": cfg.bad_every,
                           "max_body_bytes": MAX_BODY_MB * 2**20, "max_seconds": cfg.max_seconds}
                    _load({**job, "concurrency": max(cfg.concurrency), "requests": 2 * max(cfg.concurrency)})
                    rss0 = _rss_mb(pid)
                    for c in cfg.concurrency:
                        # the machine's load drifts: an offline pass right before and right after each level
                        near = offline_throughput(scanner, near_reps, 1)
                        before = stats() if stats else None
                        res = check_level(_load({**job, "concurrency": c, "requests": cfg.requests}), expected,
                                          cfg.requests)
                        if stats:
                            from .serve_triton import stats_delta

                            res["triton_stats"] = stats_delta(before, stats())
                        near += offline_throughput(scanner, near_reps, 1)
                        res.update(mode=mode, concurrency=c, rss_after_warmup_mb=rss0, rss_mb=_rss_mb(pid),
                                   offline_near=near, ratio_vs_offline_near=res["images_per_s"] / statistics.mean(near))
                        report["levels"].append(res)
                        progress(f"  {mode:>8} c={c:<3} {res['images_per_s']:6.1f} img/s  p50 {res['p50_ms']:.0f} ms"
                                 f"  5xx {res['status_5xx']}  wrong {res['good_wrong'] + res['bad_wrong']}")
            after = offline_throughput(scanner, reps, cfg.offline_passes)
        report["offline_images_per_s"] = statistics.median(first + after)
        report["offline_passes"] = first + after
    off = report["offline_images_per_s"]
    for lv in report["levels"]:
        lv["ratio_vs_offline"] = lv["images_per_s"] / off if off else None
    return report


def format_serve_table(report: dict) -> str:
    off = report["offline_images_per_s"]
    lines = [(f"clipscan bench --serve: {report['model']} on {report['backend']}; {report['images']}; "
             f"{report['requests_per_level']} requests per level, every {report['bad_every']}th malformed"),
             f"CPU: {report['cpu']}",
             (f"offline Scanner (same run, median of {len(report['offline_passes'])} passes): {off:.1f} images/s "
             f"(passes: {', '.join(f'{v:.1f}' for v in report['offline_passes'])})"),
             (f"{'mode':<9} {'conc':>4} {'img/s':>7} {'x offline':>9} {'x near':>6} {'p50 ms':>7} {'p95 ms':>7} {'p99 ms':>7} "
             f"{'good ok':>7} {'wrong':>5} {'bad 4xx':>7} {'5xx':>4} {'conn err':>8} {'RSS MB':>7}")]
    for lv in report["levels"]:
        lines.append(f"{lv['mode']:<9} {lv['concurrency']:>4} {lv['images_per_s']:7.1f} {lv['ratio_vs_offline']:9.2f} "
                     f"{lv['ratio_vs_offline_near']:6.2f} "
                     f"{lv['p50_ms']:7.0f} {lv['p95_ms']:7.0f} {lv['p99_ms']:7.0f} {lv['good_ok']:>7} "
                     f"{lv['good_wrong'] + lv['bad_wrong']:>5} {lv['bad_4xx']:>7} {lv['status_5xx']:>4} "
                     f"{lv['connection_errors']:>8} {lv['rss_mb'] or 0:7.0f}")
    lines.append("x offline: against the run's median offline rate; x near: against the mean of the offline passes "
                 "right before and after that level (the machine's load drifts); RSS: the server's processes "
                 "(tritonserver's python-backend stubs included)")
    triton = [lv for lv in report["levels"] if lv.get("triton_stats")]
    if triton:
        lines.append(f"triton repository: {report.get('triton_knobs')}; tritonserver's statistics per level "
                     "(ms per request, and per execution):")
        lines.append(f"{'conc':>4} {'queue':>7} {'input':>7} {'infer':>7} {'output':>7} {'compute/exec':>12} "
                     f"{'images/exec':>11}")
        for lv in triton:
            t = lv["triton_stats"]
            lines.append(f"{lv['concurrency']:>4} {t['queue_ms_per_request']:7.1f} "
                         f"{t['compute_input_ms_per_request']:7.2f} "
                         f"{t['compute_infer_ms_per_request']:7.1f} {t['compute_output_ms_per_request']:7.2f} "
                         f"{t['compute_ms_per_execution']:12.1f} {t['images_per_execution']:11.1f}")
    lines.append(f"server exit codes after SIGTERM: {report.get('server_exit_codes')}")
    return "\n".join(lines)
