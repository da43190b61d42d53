"""Hostile rows files against `clipscan report`: paths outside the images root are never read (not even
stat-ed), their cards say nothing about whether the file exists; a file named `x<!--<script>.png` cannot break
the page (checked in a real Chromium); nested JSON and huge integers are skipped lines, not a crash."""
from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
from PIL import Image

from clipscan.report import build_report
from clipscan.report.thumbs import OUTSIDE

from .browser import browser_page
from .test_report import open_report


def clipscan(*args, cwd=None, timeout=300):
    return subprocess.run([sys.executable, "-m", "clipscan", *map(str, args)], capture_output=True, text=True,
                          cwd=cwd, timeout=timeout, check=False)


@pytest.fixture
def layout(tmp_path):
    """root/ (the images root) with rows/rows.jsonl, images inside, links in and out; outside/ next to it."""
    root, outside = tmp_path / "root", tmp_path / "outside"
    (root / "images").mkdir(parents=True)
    (root / "rows").mkdir()
    outside.mkdir()
    Image.new("RGB", (48, 32), (10, 200, 10)).save(root / "images" / "a.png")
    Image.new("RGB", (48, 32), (200, 10, 10)).save(outside / "secret.png")
    (outside / "notes.png").write_text("a text file: not_an_image would tell that it exists")
    os.symlink(outside / "secret.png", root / "images" / "link_out.png")
    os.symlink("a.png", root / "images" / "link_in.png")
    os.symlink("../../outside", root / "images" / "dir_out")
    paths = {
        "images/a.png": "shown", "images/link_in.png": "shown", str(root / "images" / "a.png"): "shown",
        str(outside / "secret.png"): "outside", str(outside / "missing.png"): "outside",
        # outside relative to the images root (and missing relative to the rows' folder): outside
        "../outside/secret.png": "outside", "../outside/missing.png": "outside", "../outside/notes.png": "outside",
        "../../outside/secret.png": "outside", "images/link_out.png": "outside", "images/dir_out/secret.png": "outside",
        "images/dir_out/missing.png": "outside", "/etc/passwd": "outside", "images/nope.png": "missing",
    }
    rows = root / "rows" / "rows.jsonl"
    rows.write_text("".join(json.dumps({"path": p, "p_generated": 0.9 - i * 0.01, "verdict": "generated",
                                        "quality": 2.0, "error": None, "backend": "cpu"}) + "\n"
                            for i, p in enumerate(paths)))
    return root, outside, rows, paths


def test_paths_outside_the_images_root_are_not_read_and_do_not_tell_if_they_exist(layout, tmp_path, monkeypatch):
    root, outside, rows, paths = layout
    # every file-system call the report makes, recorded (threads included): nothing may name outside/
    touched: list[str] = []
    for name in ("stat", "lstat", "readlink", "open", "scandir", "listdir", "access"):
        original = getattr(os, name)

        def spy(path, *a, _original=original, **k):
            touched.append(os.fsdecode(path) if isinstance(path, (str, bytes, os.PathLike)) else str(path))
            return _original(path, *a, **k)

        monkeypatch.setattr(os, name, spy)
    recording = [True]  # an audit hook stays for the session: it records only during this report
    sys.addaudithook(lambda event, args: touched.append(os.fsdecode(args[0])) if recording[0] and event == "open"
                     and isinstance(args[0], (str, bytes, os.PathLike)) else None)
    elsewhere = tmp_path / "cwd"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    result = build_report(rows, tmp_path / "r.html", images_root=str(root), top=len(paths))
    recording[0] = False
    monkeypatch.undo()
    assert any("a.png" in p for p in touched), "the spies saw the files inside the root"
    seen = [p for p in touched if p.startswith((str(outside), "/etc"))]
    assert not seen, f"the report touched files outside the images root: {seen}"
    cards = {r.path: t for r, t in zip(result.summary.top, _thumbs_of(result, root))}
    for path, expect in paths.items():
        thumb = cards[path]
        if expect == "shown":
            assert thumb.uri, (path, thumb.problem)
        elif expect == "outside":
            assert thumb.uri is None and thumb.problem == OUTSIDE, (path, thumb.problem)
        else:
            assert thumb.uri is None and thumb.problem.startswith("file not found under"), (path, thumb.problem)
    assert result.thumbnails == 3 and result.missing_thumbnails == len(paths) - 3

    # the real command: the page holds the same sentence for a file that exists and one that does not
    proc = clipscan("report", rows, "--images-root", root, "-o", tmp_path / "cli.html", "--top", len(paths),
                    cwd=elsewhere)
    assert proc.returncode == 0 and "Traceback" not in proc.stderr, proc.stderr
    page = (tmp_path / "cli.html").read_text()
    assert "3 thumbnail(s)" in proc.stderr
    assert page.count('class="nothumb"') == len(paths) - 3 and "not_an_image" not in page
    assert page.count("outside the images root") == sum(v == "outside" for v in paths.values())


def _thumbs_of(result, root):
    from clipscan.report.thumbs import thumbnails

    return thumbnails([r.path for r in result.summary.top], str(root), os.path.dirname(result.rows.path))


def test_without_images_root_the_current_folder_and_the_rows_folder_are_the_roots(layout, monkeypatch):
    root, outside, rows, paths = layout
    from clipscan.report.thumbs import thumbnail

    monkeypatch.chdir(root)
    assert thumbnail("images/a.png", None, str(rows.parent)).uri
    assert thumbnail("../outside/secret.png", None, str(rows.parent)).problem == OUTSIDE
    (rows.parent / "b.png").symlink_to(root / "images" / "a.png")  # a link from one root into the other
    monkeypatch.chdir(outside.parent)  # the current folder is now above both: the images root is too
    assert thumbnail("root/images/a.png", None, str(rows.parent)).uri
    assert thumbnail("b.png", str(root / "images"), str(rows.parent)).uri


def test_a_file_named_like_markup_cannot_break_the_page(image_dir, tmp_path):
    """A real scan of a folder holding `x<!--<script>.png`; the page's table, filters and sort still work
    in Chromium and no script from a row runs."""
    names = ["x<!--<script>.png", "y</script><script>window.pwned=1</script>.png", "z<img src=x onerror=pwned=2>.png"]
    for i, name in enumerate(names):
        Image.new("RGB", (40 + i, 30), (30 * i, 90, 150)).save(image_dir / name.replace("/", "_"), "PNG")
    proc = clipscan("scan", "images", "-o", "rows.jsonl", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    rows = [json.loads(line) for line in (tmp_path / "rows.jsonl").read_text().splitlines()]
    proc = clipscan("report", "rows.jsonl", "-o", "r.html", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    text = (tmp_path / "r.html").read_text()
    data = text.split('id="rows-data">', 1)[1].split("</script>", 1)[0]
    assert "<" not in data and "\\u003c!--\\u003cscript>" in data
    with browser_page() as page:
        dialogs: list[str] = []
        page.on("dialog", lambda d: (dialogs.append(d.message), d.dismiss()))
        open_report(page, tmp_path / "r.html")  # no page error, body[data-ready]
        cell = "[...document.querySelectorAll('#rows-table tbody tr')].map(tr => tr.cells[0].textContent)"
        shown = page.evaluate(cell)
        assert len(shown) == len(rows) and {r["path"] for r in rows} == set(shown)
        assert any(p.endswith("x<!--<script>.png") for p in shown)
        assert page.evaluate("typeof window.pwned") == "undefined" and not dialogs
        assert page.evaluate("document.scripts.length") == 2, "only the data and the page's own script"
        page.fill("#rows-filter", "<!--")
        assert page.evaluate(cell) == [p for p in shown if "<!--" in p]
        page.fill("#rows-filter", "")
        page.click("#rows-table th:nth-child(1)")  # sort by path, ascending, then descending
        ascending = page.evaluate("(a) => [...a].sort((x, y) => x.localeCompare(y))", shown)
        assert page.evaluate(cell) == ascending
        page.click("#rows-table th:nth-child(1)")
        assert page.evaluate(cell) == ascending[::-1]
        page.select_option("#rows-verdict", rows[0]["verdict"])
        assert len(page.evaluate(cell)) == sum(r["verdict"] == rows[0]["verdict"] for r in rows)
        page.fill("#top-filter", "<!--")
        assert page.evaluate("document.querySelectorAll('#top-grid figure.card:not([hidden])').length") == 1
        assert page.evaluate("typeof window.pwned") == "undefined" and not dialogs
