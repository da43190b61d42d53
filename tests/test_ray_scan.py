"""`clipscan scan --engine ray` on a real local Ray, started by the scan itself on loopback.

Real photos and the corpus's odd and broken files (tests/corpus.py); the rows must be the very bytes a
local scan writes for the same files (order aside: blocks are appended as they finish); Ray's processes
must listen on 127.0.0.1 only; a SIGKILL of the driver midway, then --resume, must end with exactly one
row per file. Ray's usage stats are off and no dashboard is started. Without ray the tests are skipped
with the reason, except in CI (CI=true), where a missing ray is a failure.
"""
from __future__ import annotations

import contextlib
import importlib.util
import json
import os
import re
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import pytest

from . import corpus
from .triton_helpers import free_closed_port

for _needed in ("ray", "psutil"):  # psutil reads the Ray processes' sockets; both are in the [test] extra
    if importlib.util.find_spec(_needed) is None:
        if os.environ.get("CI") == "true":
            raise RuntimeError(f"{_needed} is not installed, and CI must run the Ray scan tests: "
                               "pip install -e '.[export,test]'")
        pytest.skip(f"{_needed} is not installed (pip install -e '.[test]'): the Ray scan tests cannot run",
                    allow_module_level=True)

import psutil

LOOPBACK = {"127.0.0.1", "::ffff:127.0.0.1", "::1"}
# Ray writes a token for the local instances it starts into ~/.ray: the scans run with a HOME of their own
ENV = dict(os.environ, RAY_USAGE_STATS_ENABLED="0")


@pytest.fixture(scope="module", autouse=True)
def own_home(tmp_path_factory):
    ENV["HOME"] = str(tmp_path_factory.mktemp("home_of_the_scans"))
    yield
    ENV["HOME"] = os.environ.get("HOME", "")


def mixed_folder(root: Path, *, fill: int = 0) -> Path:
    """The corpus's JPEG family, odd names, broken files and special paths (a FIFO, a folder named .jpg,
    symlink loops...); with `fill`, every other family of the corpus (PNG, GIF, WebP, TIFF, bitmaps, codecs,
    odd sizes, wrong extensions, decompression bombs) and random valid images up to `fill` entries.
    Hidden files and a .txt are added, which both engines skip."""
    b = corpus._Builder(root, 0)
    corpus._jpeg_family(b)
    corpus._odd_names(b)
    corpus._broken(b)
    corpus._special(b, b.entries[0].path)
    if fill:
        for family in (corpus._png_family, corpus._gif_family, corpus._webp_family, corpus._tiff_family,
                       corpus._bitmap_family, corpus._codec_family, corpus._odd_sizes, corpus._wrong_extensions,
                       corpus._bombs):
            family(b)
        corpus._random_fill(b, fill)
    (root / ".hidden.jpg").write_bytes(b"x")
    (root / "notes.txt").write_text("not an image")
    return root


def scan(args: list[str], **kw) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "clipscan", "scan", *args], check=False, capture_output=True,
                          text=True,
                          env=ENV, timeout=600, **kw)


class Watch:
    """The driver's process tree, sampled while it runs: every descendant and every socket it listens on."""

    def __init__(self, proc: subprocess.Popen):
        self.proc, self.pids, self.listening = proc, set(), set()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                self.pids |= {c.pid for c in psutil.Process(self.proc.pid).children(recursive=True)}
            except psutil.Error:
                pass
            for pid in list(self.pids):
                try:
                    self.listening |= {(c.laddr.ip, c.laddr.port, psutil.Process(pid).name())
                                       for c in psutil.Process(pid).net_connections("tcp")
                                       if c.status == psutil.CONN_LISTEN}
                except psutil.Error:
                    pass
            time.sleep(0.1)

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()

    def reap(self, grace: float = 10.0) -> list[str]:
        """Wait for the Ray processes to end; any still running after `grace` s (Ray's agents outlive a killed
        driver by about a minute) are ended here, by pid: they are this test's. Returns their names."""
        deadline, left = time.monotonic() + grace, []
        while time.monotonic() < deadline:
            left = [p for p in self._alive()]
            if not left:
                return []
            time.sleep(0.25)
        names = []
        for p in self._alive():
            names.append(p.name())
            p.kill()
        return names

    def _alive(self):
        for pid in self.pids:
            try:
                p = psutil.Process(pid)
                if p.status() != psutil.STATUS_ZOMBIE:
                    yield p
            except psutil.Error:
                pass


def run_watched(args: list[str], until=None, timeout: float = 600, env=None) -> tuple[subprocess.Popen, Watch, str]:
    """Run a scan, watching its processes; `until()` true: SIGKILL the driver there. Returns (proc, watch, stderr)."""
    proc = subprocess.Popen([sys.executable, "-m", "clipscan", "scan", *args], stderr=subprocess.PIPE,
                            stdout=subprocess.DEVNULL, text=True, env=env or ENV)
    watch = Watch(proc)
    err = []
    reader = threading.Thread(target=lambda: err.append(proc.stderr.read()), daemon=True)
    reader.start()
    start = time.monotonic()
    try:
        while proc.poll() is None:
            if until is not None and until():
                proc.send_signal(signal.SIGKILL)
                break
            if time.monotonic() - start > timeout:
                proc.kill()
                raise AssertionError(f"the scan ran over {timeout} s")
            time.sleep(0.05)
        proc.wait()
    finally:
        watch.stop()
        reader.join(timeout=30)
    return proc, watch, "".join(err)


def rows_of(path: Path) -> list[bytes]:
    return path.read_bytes().splitlines(keepends=True)


def assert_same_rows(ray_out: Path, local_out: Path, csv: bool) -> None:
    ours, theirs = rows_of(ray_out), rows_of(local_out)
    if csv:
        assert ours[0] == theirs[0], "the same CSV header"
        ours, theirs = ours[1:], theirs[1:]
    assert len(ours) == len(theirs)
    assert sorted(ours) == sorted(theirs), "the very bytes of a local scan's rows"
    paths = [json.loads(r)["path"] for r in ours] if not csv else None
    if paths is not None:
        assert len(set(paths)) == len(paths), "one row per file"


def assert_loopback_only(watch: Watch) -> None:
    names = {name for _, _, name in watch.listening}
    assert {"gcs_server", "raylet"} <= names, f"the Ray processes were seen listening: {watch.listening}"
    wrong = {entry for entry in watch.listening if entry[0] not in LOOPBACK}
    assert not wrong, f"Ray listened beyond loopback: {wrong}"


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    return mixed_folder(tmp_path_factory.mktemp("mixed"))


@pytest.fixture(scope="module")
def local_rows(folder, tmp_path_factory):
    out = {}
    for ext in ("jsonl",):  # the Ray tests compare JSONL rows (CSV: the --ray-address test)
        path = tmp_path_factory.mktemp("local") / f"local.{ext}"
        proc = scan([str(folder), "-o", str(path), "-q"])
        assert proc.returncode == 1, proc.stderr  # some files are broken on purpose
        out[ext] = path
    return out


def test_rows_are_those_of_a_local_scan_and_ray_listens_on_loopback_only(folder, multi_head_model, tmp_path):
    """On a three-head artifact (conftest.multi_head_model): every head's answer in every row, as locally."""
    out, local = tmp_path / "ray.jsonl", tmp_path / "local.jsonl"
    model = ["-m", str(multi_head_model)]
    assert scan([str(folder), *model, "-o", str(local), "-q"]).returncode == 1  # some files are broken on purpose
    # a $TMPDIR of its own, short enough for the Unix sockets Ray makes in it (pytest's tmp_path is too deep)
    scratch = Path(tempfile.mkdtemp(prefix="cs-", dir="/tmp"))
    t = time.monotonic()
    proc, watch, err = run_watched([str(folder), *model, "--engine", "ray", "--actors", "2", "--block-size", "16",
                                    "-o", str(out)], env={**ENV, "TMPDIR": str(scratch)})
    seconds = time.monotonic() - t
    left = watch.reap()
    assert proc.returncode == 1, err  # broken files: error rows, exit 1 as a local scan
    assert "Traceback" not in err and "logging.cc" not in err, err  # Ray's own lines only with -v
    # Ray's session folder went with the scan; ONNX Runtime's telemetry record (.ses, one small file
    # rewritten on every import) is the only thing a run leaves in $TMPDIR
    assert sorted(p.name for p in scratch.iterdir()) in ([], [".ses"]), list(scratch.rglob("*"))[:10]
    shutil.rmtree(scratch)
    assert_same_rows(out, local, csv=False)
    rows = [json.loads(r) for r in rows_of(out)]
    assert all(set(r["heads"]) == {"univfd", "cozzolino", "captions", "quality"} for r in rows if not r["error"])
    kinds = {r["error_kind"] for r in rows if r["error"]}
    assert {"empty", "corrupt", "unreadable"} <= kinds, f"error rows with their kind: {kinds}"
    assert any(not r["path"].isascii() for r in rows), "odd file names went through Ray and back"
    assert_loopback_only(watch)
    assert not left, f"Ray processes outlived a finished scan: {left}"
    assert not (tmp_path / ".ray.jsonl.clipscan-ray").exists(), "the state folder goes when the scan is done"
    sidecar = json.loads((tmp_path / "ray.jsonl.clipscan.json").read_text())
    assert sidecar["model"] == json.loads(Path(str(local) + ".clipscan.json").read_text())["model"]
    print(f"{len(rows)} files on Ray (2 actors) in {seconds:.1f} s, Ray's start included")


def test_resume_with_another_model_is_refused_as_a_local_scan_refuses_it(folder, tmp_path):
    out = tmp_path / "rows.jsonl"
    assert scan([str(corpus.Path(__file__).parent.parent / "samples"), "-o", str(out), "-q"]).returncode == 0
    sidecar = Path(str(out) + ".clipscan.json")
    record = json.loads(sidecar.read_text())
    record["model"].update(name="another-model", sha256="0" * 64, file="another.onnx")
    sidecar.write_text(json.dumps(record))
    before = out.read_bytes()
    local = scan([str(folder), "-o", str(out), "--resume"])
    ray = scan([str(folder), "-o", str(out), "--resume", "--engine", "ray"])
    assert local.returncode == ray.returncode == 2
    message = [line for line in local.stderr.splitlines() if "error:" in line]
    assert message and message == [line for line in ray.stderr.splitlines() if "error:" in line]
    assert "rows of two models must not mix" in message[0]
    assert out.read_bytes() == before


def test_resume_with_other_settings_is_refused_as_a_local_scan_refuses_it(folder, tmp_path):
    """Ray records and checks the same row settings as a local scan: another --threshold is the same
    sentence; the same settings resume on Ray what a local scan began."""
    out = tmp_path / "rows.jsonl"
    assert scan([str(corpus.Path(__file__).parent.parent / "samples"), "-o", str(out), "-q"]).returncode == 0
    before = out.read_bytes()
    local = scan([str(folder), "-o", str(out), "--resume", "--threshold", "0.9"])
    ray = scan([str(folder), "-o", str(out), "--resume", "--threshold", "0.9", "--engine", "ray"])
    assert local.returncode == ray.returncode == 2, (local.stderr, ray.stderr)
    message = [line for line in local.stderr.splitlines() if "error:" in line]
    assert message and message == [line for line in ray.stderr.splitlines() if "error:" in line]
    assert "--threshold was the manifest's, now 0.9" in message[0]
    assert out.read_bytes() == before
    resumed = scan([str(folder), "-o", str(out), "--resume", "--engine", "ray", "-q"])
    assert resumed.returncode == 1, resumed.stderr  # some files of the folder are broken on purpose
    assert len(out.read_bytes()) > len(before)


def test_an_output_is_not_replaced_without_resume_or_overwrite(folder, local_rows, tmp_path):
    out = tmp_path / "rows.jsonl"
    out.write_bytes(local_rows["jsonl"].read_bytes())
    proc = scan([str(folder), "--engine", "ray", "-o", str(out)])
    assert proc.returncode == 2 and "pass --resume to continue" in proc.stderr
    assert out.read_bytes() == local_rows["jsonl"].read_bytes()


def test_a_killed_actor_is_replaced_and_its_block_scanned_once(folder, local_rows, tmp_path):
    out = tmp_path / "ray.jsonl"
    state = tmp_path / ".ray.jsonl.clipscan-ray" / "state.json"
    killed = []

    def kill_an_actor() -> bool:  # once the first blocks are in: SIGKILL one actor (never the driver)
        try:
            if json.loads(state.read_text())["last"] < 2:
                return False
        except (OSError, ValueError):
            return False
        for p in psutil.process_iter(["pid", "name", "cmdline"]):
            if p.info["pid"] in watch_ref[0].pids and "ScanBlock" in " ".join(p.info["cmdline"] or [p.info["name"]]):
                p.kill()
                killed.append(p.info["pid"])
                return True
        return False

    watch_ref = []
    proc = subprocess.Popen([sys.executable, "-m", "clipscan", "scan", str(folder), "--engine", "ray", "--actors", "2",
                             "--block-size", "8", "-o", str(out)], stderr=subprocess.PIPE, text=True, env=ENV)
    watch_ref.append(Watch(proc))
    try:
        while proc.poll() is None and not killed:
            kill_an_actor()
            time.sleep(0.05)
        err = proc.communicate(timeout=600)[1]
    finally:
        watch_ref[0].stop()
    watch_ref[0].reap()
    assert killed, "no actor was found to kill before the scan ended"
    assert proc.returncode == 1, err
    assert_same_rows(out, local_rows["jsonl"], csv=False)


@pytest.mark.slow
def test_the_bar_2000_files_straight_and_killed_then_resumed(tmp_path):
    """Issue 16's bar: 2,000 valid, odd and broken files on local Ray, once straight through and once with a
    SIGKILL of the driver midway then --resume: both outputs hold exactly one row per file, as a local scan
    (the resume finds every row the killed run wrote and scans only the rest; Ray listened on loopback only)."""
    root = mixed_folder(tmp_path / "bar", fill=2000)
    files = [p for p in root.rglob("*") if not p.name.startswith(".") and p.suffix != ".txt"]
    local = tmp_path / "local.jsonl"
    t = time.monotonic()
    assert scan([str(root), "--all-files", "-o", str(local), "-q"]).returncode == 1
    t_local = time.monotonic() - t
    total = len(rows_of(local))
    assert total >= 2000, f"{total} rows for {len(files)} paths"

    straight = tmp_path / "straight.jsonl"
    t = time.monotonic()
    proc, watch, err = run_watched([str(root), "--all-files", "--engine", "ray", "--actors", "2", "-o", str(straight)])
    t_ray = time.monotonic() - t
    assert proc.returncode == 1 and "Traceback" not in err, err
    assert not watch.reap()
    assert_loopback_only(watch)
    assert_same_rows(straight, local, csv=False)

    killed = tmp_path / "killed.jsonl"
    state = tmp_path / ".killed.jsonl.clipscan-ray" / "state.json"
    args = [str(root), "--all-files", "--engine", "ray", "--actors", "2", "--block-size", "64", "-o", str(killed)]

    def midway() -> bool:
        try:
            return json.loads(state.read_text())["size"] > straight.stat().st_size // 2
        except (OSError, ValueError):
            return False

    proc, watch, err = run_watched(args, until=midway)
    assert proc.returncode == -signal.SIGKILL, f"the scan ended before it could be killed: {err}"
    watch.reap(grace=1)  # Ray's agents outlive a killed driver by about a minute: end them here
    assert_loopback_only(watch)
    before = len(rows_of(killed))
    assert 0 < before < total, (before, total)
    again = scan([*args, "--resume"])
    assert again.returncode == 1 and "Traceback" not in again.stderr, again.stderr
    resumed = int(re.search(r"resuming: (\d+) input", again.stderr).group(1))
    scanned = int(re.search(r"scanned (\d+) input\(s\) on Ray", again.stderr).group(1))
    assert resumed >= before and resumed + scanned == total
    assert_same_rows(killed, local, csv=False)
    print(f"bar: {total} files; local {t_local:.1f} s, Ray 2 actors {t_ray:.1f} s; killed after {before} rows, "
          f"--resume found {resumed} and scanned {scanned}")


def test_bench_ray_reports_files_per_second_for_local_and_each_actor_count(tmp_path):
    out = tmp_path / "bench.json"
    proc = subprocess.run([sys.executable, "-m", "clipscan", "bench", "--ray", "--ray-files", "24", "--ray-actors", "1,2",
                           "--json", str(out)], check=False, capture_output=True, text=True, env=ENV, timeout=600)
    assert proc.returncode == 0, proc.stderr
    report = json.loads(out.read_text())
    assert [(r["engine"], r["actors"]) for r in report["rows"]] == [("local", None), ("ray", 1), ("ray", 2)]
    assert all(r["files"] == 24 and r["files_per_s"] > 0 for r in report["rows"])
    assert report["same_row_count"] and report["cpu"] in proc.stdout and "files/s" in proc.stdout


@pytest.fixture(scope="module")
def ray_head(tmp_path_factory):
    """A Ray cluster head started the way an operator starts one (`ray start --head --block`), on loopback,
    no dashboard, usage stats off, token authentication on (Ray's default), its own HOME and temp folder;
    stopped at teardown by killing its process group, then any process left by pid (the processes are this
    test's own; Ray's orderly stop takes seconds and proves nothing here)."""
    home, temp = tmp_path_factory.mktemp("head_home"), Path(tempfile.mkdtemp(prefix="rh", dir="/tmp"))  # short
    env = dict(ENV, HOME=str(home), RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER="0", RAY_AUTH_MODE="token",
               RAY_AUTH_TOKEN=secrets.token_hex(32))
    port = free_closed_port()
    ray_cli = Path(sys.executable).with_name("ray")
    head = subprocess.Popen([str(ray_cli), "start", "--head", "--block", "--node-ip-address=127.0.0.1",
                             f"--port={port}", "--num-cpus=2", "--include-dashboard=false", "--disable-usage-stats",
                             f"--temp-dir={temp}"], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                            start_new_session=True)
    watch = Watch(head)
    try:
        deadline = time.monotonic() + 120
        while not any(name == "raylet" for _, _, name in watch.listening):
            assert head.poll() is None and time.monotonic() < deadline, head.stderr.read().decode()[-2000:]
            time.sleep(0.2)
        time.sleep(1.0)
        yield {"address": f"127.0.0.1:{port}", "env": env, "watch": watch}
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(head.pid, signal.SIGKILL)
        head.wait(timeout=30)
        watch.stop()
        watch.reap(grace=1)
        shutil.rmtree(temp, ignore_errors=True)


def test_ray_address_joins_a_running_cluster_and_relative_paths_still_name_the_rows(folder, tmp_path, ray_head):
    """--ray-address to a head the test started: the actors run in the cluster's worker folders, not the
    driver's, yet relative PATHs are read (by their absolute path) and named as given, as a local scan does."""
    cwd, rel = folder.parent, folder.name
    local, out = tmp_path / "local.csv", tmp_path / "ray.csv"
    assert scan([rel, "-o", str(local), "-q"], cwd=cwd).returncode == 1
    proc = subprocess.run([sys.executable, "-m", "clipscan", "scan", rel, "--engine", "ray", "--ray-address",
                           ray_head["address"], "--block-size", "32", "-o", str(out)], check=False, cwd=cwd,
                          capture_output=True, text=True, env=ray_head["env"], timeout=600)
    assert proc.returncode == 1 and "Traceback" not in proc.stderr, proc.stderr
    assert_same_rows(out, local, csv=True)
    assert rows_of(out)[1].startswith(rel.encode() + b"/"), "rows name the files as given (relative)"
    assert_loopback_only(ray_head["watch"])


@pytest.mark.slow
def test_a_cluster_that_refuses_the_driver_is_one_sentence(folder, tmp_path, ray_head):
    # a wrong token: the head refuses the driver (Ray asks 20 times, a second apart, unless told fewer)
    env = dict(ray_head["env"], RAY_AUTH_TOKEN=secrets.token_hex(32), RAY_NUM_REDIS_GET_RETRIES="3")
    out = tmp_path / "o.jsonl"
    proc = subprocess.run([sys.executable, "-m", "clipscan", "scan", str(folder), "--engine", "ray", "--ray-address",
                           ray_head["address"], "-o", str(out)], check=False, capture_output=True, text=True, env=env,
                          timeout=600)
    assert proc.returncode == 2, proc.stderr
    assert "Ray could not join the cluster there" in proc.stderr and "RAY_AUTH_MODE=token" in proc.stderr
    assert "Traceback" not in proc.stderr and not out.exists()
