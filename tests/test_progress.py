"""The progress bar: a real `clipscan scan` under a real pseudo-terminal shows a moving bar (files done of
the total, images/s, ETA, errors, backend) and the summary on stderr; rows on stdout never see it; no bar
when stderr is not a terminal or with -q; the base install (no tqdm) gets the one-line fallback."""
from __future__ import annotations

import fcntl
import json
import os
import re
import select
import struct
import subprocess
import sys
import termios
import time

import pytest
from PIL import Image

from clipscan.runtime.progress import LineBar, Progress

N_GOOD, N_BROKEN = 2000, 3


@pytest.fixture(scope="module")
def many_images(tmp_path_factory):
    """A few thousand small real PNGs in nested folders, plus a few broken files (error rows)."""
    root = tmp_path_factory.mktemp("many")
    for i in range(N_GOOD):
        sub = root / f"part{i % 10}"
        sub.mkdir(exist_ok=True)
        Image.new("RGB", (24, 24), ((i * 7) % 256, (i * 13) % 256, (i * 29) % 256)).save(sub / f"img{i:05d}.png")
    for i in range(N_BROKEN):
        (root / f"broken{i}.jpg").write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    return root


def _env(tmp_path, block_tqdm: bool = False) -> dict:
    env = dict(os.environ)
    if block_tqdm:  # what the base install has: no tqdm
        site = tmp_path / "no_tqdm_site"
        site.mkdir(exist_ok=True)
        (site / "sitecustomize.py").write_text(
            "import sys\n"
            "class _Block:\n"
            "    def find_spec(self, name, path=None, target=None):\n"
            "        if name.split('.')[0] == 'tqdm':\n"
            "            raise ImportError('tqdm is blocked: this process simulates the base install')\n"
            "sys.meta_path.insert(0, _Block())\n")
        env["PYTHONPATH"] = str(site) + os.pathsep + env.get("PYTHONPATH", "")
    return env


def scan_under_pty(args, tmp_path, *, block_tqdm=False, timeout=240, size=(30, 120)) -> tuple[list[tuple[float, str]], str, int]:
    """Run `clipscan scan ARGS` with stderr on a pty (`size`: rows, columns) and stdout to a file:
    ([(seconds since start, chunk read from the terminal)], stdout text, exit code)."""
    master, slave = os.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", *size, 0, 0))
    rows = tmp_path / "stdout.jsonl"
    start = time.monotonic()
    with open(rows, "w") as out:
        proc = subprocess.Popen([sys.executable, "-m", "clipscan", "scan", *args], stdout=out, stderr=slave,
                                stdin=subprocess.DEVNULL, env=_env(tmp_path, block_tqdm))
    os.close(slave)
    chunks = []
    try:
        while time.monotonic() - start < timeout:
            ready, _, _ = select.select([master], [], [], 1.0)
            if not ready:
                if proc.poll() is not None:
                    break
                continue
            try:
                data = os.read(master, 65536)
            except OSError:  # EIO: every writer closed the terminal
                break
            if not data:
                break
            chunks.append((time.monotonic() - start, data.decode("utf-8", "replace")))
        code = proc.wait(timeout=30)
    finally:
        os.close(master)
        if proc.poll() is None:
            proc.kill()
    return chunks, rows.read_text(), code


def frames(chunks) -> list[tuple[float, str]]:
    """The bar's successive states: the terminal text split at carriage returns and newlines."""
    out = []
    for t, text in chunks:
        out += [(t, f) for f in re.split(r"[\r\n]+", text.replace("\x1b[K", "").replace("\x1b[A", "")) if f.strip()]
    return out


def counts(frames_, total) -> list[tuple[float, int]]:
    return [(t, int(m.group(1))) for t, f in frames_ if (m := re.search(rf"(\d+)/{total}\b", f))]


def check_rows(stdout: str) -> None:
    lines = stdout.splitlines()
    assert len(lines) == N_GOOD + N_BROKEN
    assert all(json.loads(line)["path"] for line in lines), "stdout holds rows only"
    assert "\r" not in stdout and "img/s" not in stdout and "ETA" not in stdout


@pytest.mark.slow
@pytest.mark.parametrize("block_tqdm", [False, True], ids=["tqdm", "base-install"])
def test_a_scan_under_a_terminal_shows_a_moving_bar_and_its_summary(many_images, tmp_path, block_tqdm):
    chunks, stdout, code = scan_under_pty([str(many_images), "-b", "32"], tmp_path, block_tqdm=block_tqdm)
    text = "".join(c for _, c in chunks)
    fr = frames(chunks)
    total = N_GOOD + N_BROKEN
    seen = counts(fr, total)
    assert code == 1, text[-2000:]  # the broken files fail their rows
    assert len({n for _, n in seen}) >= 5, f"the bar should move; frames: {fr[:10]}"
    assert [n for _, n in seen] == sorted(n for _, n in seen), "done only grows"
    assert seen[-1][1] == total, "the last state is every file done"
    assert seen[-1][0] - seen[0][0] > 0.5, "states drawn over time, not all at the end"
    assert re.search(r"\d+(\.\d+)? ?img/s", text), "images per second"
    assert "ETA" in text or "<" in text, "an ETA"  # tqdm writes [elapsed<remaining]
    assert f"errors {N_BROKEN}" in text and "cpu" in text, "errors so far and the backend"
    assert f"scanned {total} input(s): {N_GOOD} ok, {N_BROKEN} failed" in text, "the final summary"
    if block_tqdm:
        assert re.search(rf"\d+/{total} \[#+-*\]", text), "the base install's own one-line bar"
    else:
        assert "|" in text and "█" in text, "tqdm's bar"
    check_rows(stdout)
    if not block_tqdm:
        report_of_the_rows(tmp_path, stdout, many_images)


def report_of_the_rows(tmp_path, stdout: str, images_root) -> None:
    """The issue's bar, second half: `clipscan report` on these rows opens with thumbnails, histograms and
    the error table, in a file under 10 MB (the rows name absolute paths: --images-root lets it read them)."""
    from clipscan.runtime.defaults import REPORT_MAX_BYTES, REPORT_TOP_N

    from .browser import browser_page

    out = tmp_path / "report.html"
    proc = subprocess.run([sys.executable, "-m", "clipscan", "report", str(tmp_path / "stdout.jsonl"), "-o", str(out),
                           "--images-root", str(images_root)],
                          capture_output=True, text=True, timeout=120, check=False)
    assert proc.returncode == 0, proc.stderr
    assert out.stat().st_size < REPORT_MAX_BYTES
    with browser_page() as page:
        page.goto(out.as_uri())
        page.wait_for_selector("body[data-ready='1']", timeout=30_000)
        seen = page.evaluate("""() => ({
            thumbs: [...document.querySelectorAll('img.thumb')].filter(i => i.naturalWidth > 0).length,
            bars: document.querySelectorAll('svg.hist rect.bar[height]:not([height="0.0"])').length,
            failures: document.querySelectorAll('#failures-table tbody tr').length })""")
    assert seen == {"thumbs": REPORT_TOP_N, "bars": seen["bars"], "failures": N_BROKEN} and seen["bars"] >= 2


def test_no_bar_when_stderr_is_not_a_terminal_or_with_quiet(tmp_path):
    folder = tmp_path / "few"
    folder.mkdir()
    for i in range(40):
        Image.new("RGB", (20, 20), (i, 3 * i, 5 * i)).save(folder / f"{i}.png")
    piped = subprocess.run([sys.executable, "-m", "clipscan", "scan", str(folder)], capture_output=True, text=True,
                           timeout=120, check=False)
    assert piped.returncode == 0, piped.stderr
    assert "\r" not in piped.stderr and "img/s" not in piped.stderr.replace("images/s", "")
    assert "scanned 40 input(s)" in piped.stderr
    assert "\r" not in piped.stdout and len(piped.stdout.splitlines()) == 40

    chunks, stdout, code = scan_under_pty([str(folder), "-q"], tmp_path)
    assert code == 0 and "".join(c for _, c in chunks).strip() == "", "-q: nothing on the terminal"
    assert len(stdout.splitlines()) == 40


@pytest.mark.parametrize("block_tqdm", [False, True], ids=["tqdm", "base-install"])
def test_a_terminal_of_0_columns_gets_a_usable_bar(tmp_path, block_tqdm):
    """`script` and some `docker exec -t` give a terminal that reports 0x0: the bar is still drawn (at
    $COLUMNS or 100 columns), with its counts, never as blank lines."""
    folder = tmp_path / "few"
    folder.mkdir()
    for i in range(30):
        Image.new("RGB", (20, 20), (i, 3 * i, 5 * i)).save(folder / f"{i}.png")
    env_columns = os.environ.pop("COLUMNS", None)
    try:
        chunks, stdout, code = scan_under_pty([str(folder)], tmp_path, block_tqdm=block_tqdm, size=(0, 0))
    finally:
        if env_columns is not None:
            os.environ["COLUMNS"] = env_columns
    assert code == 0 and len(stdout.splitlines()) == 30
    shown = frames(chunks)
    assert counts(shown, 30) and counts(shown, 30)[-1][1] == 30, shown
    bars = [f for _, f in shown if "30/30" in f]
    assert all(40 <= len(f) <= 100 for f in bars), bars


class FakeTerminal:
    def __init__(self):
        self.text = ""

    def write(self, s):
        self.text += s

    def flush(self):
        pass

    def isatty(self):
        return True


def test_the_fallback_bar_and_log_records_above_it():
    import logging

    term = FakeTerminal()
    handler = logging.StreamHandler(term)
    logger = logging.getLogger("clipscan")
    logger.addHandler(handler)
    try:
        bar = LineBar("scan", None, "img", term)
        assert "counting" in bar.line()
        bar.total, bar.n = 200, 50
        assert re.search(r"50/200 \[#####-+\]  25%", bar.line()) and "img/s" in bar.line()
        p = Progress("scan", unit="img", note="cpu", stream=term)
        p.set_total(10)
        for i in range(10):
            p.update(errors=1 if i == 3 else 0)
        logger.warning("a warning while the bar runs")
        p.close()
    finally:
        logger.removeHandler(handler)
    assert "a warning while the bar runs\n" in term.text
    assert "10/10" in term.text and "errors 1" in term.text and "cpu" in term.text
    assert handler.stream is term, "the log stream is given back"
    assert not Progress("x", stream=FakeTerminal(), enabled=False).enabled


def test_calibration_preprocessing_shows_the_shared_bar_on_a_terminal(tmp_path, monkeypatch):
    """calibrate's preprocessing bar is the runtime's Progress (no bar of its own): shown on a terminal,
    with its errors, and absent with progress=False."""
    from clipscan.calibration.calib_data import load_calibration_set
    from clipscan.runtime import load_artifact

    for i in range(6):
        Image.new("RGB", (40, 30), (30 * i, 10, 90)).save(tmp_path / f"c{i}.png")
    (tmp_path / "bad.png").write_bytes(b"not a png")
    art = load_artifact(None)
    term = FakeTerminal()
    monkeypatch.setattr(sys, "stderr", term)
    cset = load_calibration_set(art.manifest, art.sha256(), [tmp_path], cache=False, progress=True)
    assert len(cset) == 6 and len(cset.failed) == 1
    assert "preprocessing" in term.text and "7/7" in term.text and "errors 1" in term.text
    quiet = FakeTerminal()
    monkeypatch.setattr(sys, "stderr", quiet)
    load_calibration_set(art.manifest, art.sha256(), [tmp_path], cache=False, progress=False)
    assert quiet.text == ""
