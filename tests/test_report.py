"""`clipscan report`: a real scan's rows become one self-contained page, checked in a real headless Chromium
(thumbnails decoded, histogram bars drawn, the error table, sorting and filtering, a screenshot that is
not blank); rows without a model record, CSV rows and service-style rows; malformed lines counted and
skipped; user mistakes in one sentence; 50,000 rows stay under 10 MB and open fast."""
from __future__ import annotations

import json
import random
import subprocess
import sys
import time

import numpy as np
import pytest
from PIL import Image

from clipscan.report import build_report, read_rows
from clipscan.runtime.defaults import REPORT_MAX_BYTES

from .browser import browser_page


def clipscan(*args, cwd=None, timeout=180):
    return subprocess.run([sys.executable, "-m", "clipscan", *map(str, args)], capture_output=True, text=True,
                          cwd=cwd, timeout=timeout, check=False)


@pytest.fixture
def scanned(image_dir, tmp_path):
    """A real `clipscan scan -o rows.jsonl` (paths relative to tmp_path) of photos plus three broken files."""
    (image_dir / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 cut short")
    (image_dir / "notes.png").write_text("not an image at all")
    Image.new("RGB", (64, 64), (200, 30, 30)).save(image_dir / "truncated.png")
    data = (image_dir / "truncated.png").read_bytes()
    (image_dir / "truncated.png").write_bytes(data[: len(data) // 2])
    proc = clipscan("scan", "images", "-o", "rows.jsonl", cwd=tmp_path)
    assert proc.returncode == 1, proc.stderr  # the broken files fail their rows
    rows = [json.loads(line) for line in (tmp_path / "rows.jsonl").read_text().splitlines()]
    return tmp_path / "rows.jsonl", rows


def open_report(page, path):
    requests = []
    errors = []
    page.on("request", lambda r: requests.append(r.url))
    page.on("pageerror", lambda e: errors.append(str(e)))
    start = time.perf_counter()
    page.goto(path.as_uri())
    page.wait_for_selector("body[data-ready='1']", timeout=30_000)
    seconds = time.perf_counter() - start
    assert not errors, errors
    assert all(u.startswith(("file:", "data:")) for u in requests), f"external assets: {requests}"
    return seconds


def region_std(shot: Image.Image, box: dict) -> float:
    x, y, w, h = (int(box[k]) for k in ("x", "y", "width", "height"))
    return float(np.asarray(shot.crop((x, y, x + w, y + h)).convert("L"), np.float64).std())


def test_a_real_scan_becomes_a_page_with_thumbnails_histograms_and_the_error_table(scanned, tmp_path):
    rows_file, rows = scanned
    ok = [r for r in rows if not r["error"]]
    failed = [r for r in rows if r["error"]]
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    proc = clipscan("report", rows_file, "--images-root", tmp_path, "-o", "report.html", cwd=elsewhere)
    assert proc.returncode == 0, proc.stderr
    assert f"{len(rows)} rows ({len(ok)} scanned, {len(failed)} failed), {len(ok)} thumbnail(s)" in proc.stderr
    out = elsewhere / "report.html"
    text = out.read_text()
    assert out.stat().st_size < REPORT_MAX_BYTES
    assert "<link" not in text and 'src="http' not in text and "@import" not in text, "self-contained"
    assert not [p for p in elsewhere.iterdir() if p.name != "report.html"], "nothing but the page is left"

    with browser_page(viewport=(1280, 900)) as page:
        open_report(page, out)
        facts = page.evaluate("""() => ({
            thumbs: [...document.querySelectorAll('img.thumb')].map(i => [i.naturalWidth, i.naturalHeight]),
            bars: Object.fromEntries([...document.querySelectorAll('figure.histogram')].map(f => [f.id,
                  [...f.querySelectorAll('rect.bar')].map(r => [+r.dataset.count, r.getBBox().height])])),
            failures: [...document.querySelectorAll('#failures-table tbody tr')].map(tr => tr.cells[1].textContent),
            model: document.querySelector('#model').textContent,
            rows: document.querySelectorAll('#rows-table tbody tr').length,
            verdicts: [...document.querySelectorAll('#by-verdict tbody tr')].map(tr => tr.cells[0].textContent),
        })""")
        assert len(facts["thumbs"]) == len(ok) and all(0 < max(w, h) <= 160 for w, h in facts["thumbs"])
        for name, values in (("hist-p_generated", "p_generated"), ("hist-quality", "quality")):
            bars = facts["bars"][name]
            assert sum(c for c, _ in bars) == len([r for r in ok if r[values] is not None])
            assert all((h > 0) == (c > 0) for c, h in bars), "a bar is drawn exactly where there are images"
        assert sorted(facts["failures"]) == sorted(r["error_kind"] for r in failed)
        assert "clipscan-demo" in facts["model"] and "onnxruntime-cpu" in facts["model"]
        assert facts["rows"] == len(rows) and "failed" in facts["verdicts"]

        shot_path = tmp_path / "report.png"
        page.screenshot(path=str(shot_path), full_page=True)
        shot = Image.open(shot_path).convert("RGB")
        assert shot.size[0] == 1280 and shot.size[1] > 900
        first_thumb = page.evaluate("(() => { const r = document.querySelector('img.thumb').getBoundingClientRect();"
                                    " return {x: r.x + scrollX, y: r.y + scrollY, width: r.width, height: r.height}; })()")
        hist = page.evaluate("(() => { const r = document.querySelector('svg.hist').getBoundingClientRect();"
                             " return {x: r.x + scrollX, y: r.y + scrollY, width: r.width, height: r.height}; })()")
        assert region_std(shot, first_thumb) > 10, "the thumbnail shows a photo, not a blank box"
        bar_blue = np.all(np.abs(np.asarray(shot.crop((int(hist["x"]), int(hist["y"]), int(hist["x"] + hist["width"]),
                                                        int(hist["y"] + hist["height"]))), int) - (44, 93, 158)) < 12, -1)
        assert bar_blue.sum() > 100, "the histogram's bars are painted"

        # sortable and filterable
        column = "[...document.querySelectorAll('#rows-table tbody tr')].map(tr => tr.cells[1].textContent)"
        first = [float(v) for v in page.evaluate(column) if v]
        assert first == sorted(first, reverse=True) and len(first) == len(ok), "opens most likely generated first"
        page.click("#rows-table th:nth-child(2)")  # p_generated again: ascending
        values = [float(v) for v in page.evaluate(column) if v]
        assert values == sorted(values) and len(values) == len(ok)
        page.select_option("#rows-verdict", "failed")
        assert page.evaluate("document.querySelectorAll('#rows-table tbody tr').length") == len(failed)
        page.select_option("#failures-kind", failed[0]["error_kind"])
        n_kind = sum(r["error_kind"] == failed[0]["error_kind"] for r in failed)
        assert page.evaluate("document.querySelectorAll('#failures-table tbody tr:not([hidden])').length") == n_kind
        page.fill("#top-filter", "tall")
        assert page.evaluate("document.querySelectorAll('#top-grid figure.card:not([hidden])').length") == 1
        page.select_option("#top-sort", "p:asc")
        ps = page.evaluate("[...document.querySelectorAll('#top-grid figure.card')].map(c => +c.dataset.p)")
        assert ps == sorted(ps)


def test_rows_of_a_service_without_a_model_record_and_csv_rows(tmp_path):
    Image.new("RGB", (50, 40), (10, 120, 200)).save(tmp_path / "up1.png")
    service = tmp_path / "service.jsonl"
    service.write_text("\n".join(json.dumps(r) for r in [
        {"path": "up1.png", "p_generated": 0.97, "verdict": "generated", "generator": "sdxl", "quality": 3.2,
         "error_kind": None, "error": None, "backend": "triton", "request_id": "a1"},
        {"path": "upload-2", "p_generated": 0.1, "verdict": "real", "quality": None, "backend": "ray"},
        {"path": "upload-3", "error": "truncated: image data ends early", "backend": "triton"},
    ]) + "\n")
    result = build_report(service, tmp_path / "s.html")
    text = (tmp_path / "s.html").read_text()
    assert result.summary.by_backend == {"triton": 2, "ray": 1} and result.summary.by_error_kind == {"truncated": 1}
    assert "model</dt><dd>not recorded" in text and "no model record" in text
    assert result.thumbnails == 1 and result.missing_thumbnails == 1 and "file not found" in text
    assert result.summary.by_generator == {"sdxl": 1}

    # the service's /v1/scan answer saved as it came (one JSON list), and two answers appended, one per line
    rows = [{"path": "up1.png", "p_generated": 0.9, "verdict": "generated", "backend": "onnxruntime-cpu"},
            {"path": "x.jpg", "error": "not_an_image: cannot identify image file", "backend": "onnxruntime-cpu"}]
    (tmp_path / "answer.json").write_text(json.dumps(rows))
    (tmp_path / "answers.jsonl").write_text(json.dumps(rows[:1]) + "\n" + json.dumps(rows[1:]) + "\n")
    (tmp_path / "indented.json").write_text(json.dumps(rows, indent=2))
    for name in ("answer.json", "answers.jsonl", "indented.json"):
        data = read_rows(tmp_path / name)
        assert [(r.path, r.error_kind) for r in data.rows] == [("up1.png", None), ("x.jpg", "not_an_image")], name
        assert data.skipped == 0

    csv_rows = tmp_path / "rows.csv"
    csv_rows.write_text("path,p_generated,verdict,quality,error_kind,error,backend\n"
                        "a.jpg,0.5,generated,4.1,,,onnxruntime-cpu\n"
                        "b.jpg,,,,not_found,not_found: no such file,onnxruntime-cpu\n")
    data = read_rows(csv_rows)
    assert [(r.path, r.p_generated, r.error_kind) for r in data.rows] == [("a.jpg", 0.5, None),
                                                                         ("b.jpg", None, "not_found")]


def test_malformed_lines_are_counted_and_skipped_and_mistakes_are_one_sentence(tmp_path):
    rows = tmp_path / "rows.jsonl"
    good = {"path": "x.jpg", "p_generated": 0.4, "verdict": "real", "quality": 2.0, "backend": "cpu"}
    rows.write_text("\n".join([json.dumps(good), "{not json", "[1, 2]", json.dumps({"p_generated": 0.3}),
                               json.dumps({**good, "p_generated": "high"}), "", json.dumps({**good, "path": "y.jpg"})])
                    + "\n")
    proc = clipscan("report", rows, "-o", tmp_path / "r.html")
    assert proc.returncode == 1 and "skipped 4 line(s) that are not rows (line 2: not JSON" in proc.stderr
    assert "Traceback" not in proc.stderr
    page = (tmp_path / "r.html").read_text()
    assert "4 line(s) of the rows file were not rows" in page and "line 5: p_generated &#x27;high&#x27;" in page

    again = clipscan("report", rows, "-o", tmp_path / "r.html")
    assert again.returncode == 2 and "already exists; pass --overwrite" in again.stderr
    assert clipscan("report", rows, "-o", tmp_path / "r.html", "--overwrite").returncode == 1

    (tmp_path / "empty.jsonl").write_text("\n\n")
    for args, said in [(["nope.jsonl"], "does not exist"), ([tmp_path / "empty.jsonl"], "holds no clipscan rows"),
                       ([tmp_path], "is a folder"), ([rows, "--images-root", tmp_path / "none"], "is not a folder"),
                       ([rows, "-o", tmp_path / "r.pdf"], "name it *.html"),
                       ([rows, "-o", tmp_path / "no" / "r.html"], "does not exist; create it first")]:
        if "-o" not in args:
            args = [*args, "-o", tmp_path / "x.html"]
        proc = clipscan("report", *args, cwd=tmp_path)
        assert proc.returncode == 2 and said in proc.stderr and "Traceback" not in proc.stderr, proc.stderr
        assert len(proc.stderr.strip().splitlines()) == 1, proc.stderr
    assert not (tmp_path / "x.html").exists()
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".tmp")], "no temporary file left"


def synthetic_rows(folder, n: int, top_images: int) -> tuple:
    """n service-like rows (2% failures, long upload paths); the top_images most likely generated point
    at real small images."""
    rng = random.Random(5)
    images = folder / "imgs"
    images.mkdir()
    for i in range(top_images):
        Image.fromarray(np.random.default_rng(i).integers(0, 255, (96, 128, 3), dtype=np.uint8)).save(
            images / f"top{i:03d}.jpg", quality=85)
    lines = []
    for i in range(n):
        path = f"uploads/2026/11/{i % 30 + 1:02d}/user{rng.randrange(10**6):06d}_{i:06d}.jpg"
        if i % 50 == 7:
            lines.append({"path": path, "p_generated": None, "verdict": None, "generator": None, "quality": None,
                          "error_kind": "truncated", "error": "truncated: image data ends early (JPEG, 40% of file)",
                          "backend": "onnxruntime-cpu"})
            continue
        p = rng.random() * 0.98
        lines.append({"path": path, "p_generated": round(p, 7), "verdict": "generated" if p >= 0.5 else "real",
                      "generator": rng.choice(["sdxl", "midjourney", "dalle3"]) if p >= 0.5 else None,
                      "quality": round(rng.uniform(1, 5), 6), "error_kind": None, "error": None,
                      "backend": "onnxruntime-cpu"})
    for i in range(top_images):  # the most likely generated of all
        lines[i * 97]["path"], lines[i * 97]["p_generated"] = f"imgs/top{i:03d}.jpg", 0.999 - i * 1e-4
        lines[i * 97].update(verdict="generated", error=None, error_kind=None, quality=3.0)
    rows = folder / "rows.jsonl"
    rows.write_text("".join(json.dumps(r) + "\n" for r in lines))
    return rows, lines


@pytest.mark.slow
@pytest.mark.alone  # the build and the opening are timed
def test_fifty_thousand_rows_stay_small_and_open_fast(tmp_path):
    rows, lines = synthetic_rows(tmp_path, 50_000, 60)
    start = time.perf_counter()
    result = build_report(rows, tmp_path / "big.html", images_root=str(tmp_path))
    build_seconds = time.perf_counter() - start
    size = (tmp_path / "big.html").stat().st_size
    print(f"\n50,000 rows: built in {build_seconds:.2f} s, {size / 1e6:.2f} MB")
    assert size < REPORT_MAX_BYTES and result.thumbnails == 60 and result.summary.table_complete
    assert build_seconds < 30
    with browser_page() as page:
        seconds = open_report(page, tmp_path / "big.html")
        print(f"opened in Chromium in {seconds:.2f} s")
        assert seconds < 15
        assert page.evaluate("document.querySelectorAll('#rows-table tbody tr').length") == 100, "one page of rows"
        assert page.evaluate("document.querySelectorAll('img.thumb').length") == 60
        assert "of 50000" in page.text_content("#rows-range")
        start = time.perf_counter()
        page.select_option("#rows-verdict", "failed")
        assert page.text_content("#rows-range").endswith(f"of {sum(1 for r in lines if r['error'])}")
        assert time.perf_counter() - start < 5


def test_report_runs_in_a_base_install_without_torch(tmp_path):
    from .conftest import block_torch_env

    Image.new("RGB", (30, 30), (1, 2, 3)).save(tmp_path / "a.png")
    rows = tmp_path / "rows.jsonl"
    rows.write_text(json.dumps({"path": "a.png", "p_generated": 0.8, "verdict": "generated", "quality": 3.0,
                                "error_kind": None, "error": None, "backend": "onnxruntime-cpu"}) + "\n")
    proc = subprocess.run([sys.executable, "-m", "clipscan", "report", str(rows), "-o", str(tmp_path / "r.html")],
                          capture_output=True, text=True, cwd=tmp_path, env=block_torch_env(tmp_path), timeout=120,
                          check=False)
    assert proc.returncode == 0, proc.stderr
    assert "1 thumbnail(s)" in proc.stderr and (tmp_path / "r.html").stat().st_size > 1000


def test_the_table_keeps_the_most_likely_generated_rows_beyond_its_budget_and_histograms_of_equal_values():
    from clipscan.report.rows import Row
    from clipscan.report.summary import histogram, table_rows

    rows = [Row(path=f"f{i:04d}.jpg", p_generated=i / 1000, verdict="real", quality=2.0) for i in range(1000)]
    rows.append(Row(path="bad.jpg", error="corrupt: broken", error_kind="corrupt"))
    table, complete = table_rows(rows, budget=10**6)
    assert complete and len(table) == 1001 and table[0][0] == "f0000.jpg", "all rows, in file order"
    table, complete = table_rows(rows, budget=2000)
    assert not complete and 0 < len(table) < 1000
    assert [r[1] for r in table] == sorted((r[1] for r in table), reverse=True) and table[0][0] == "f0999.jpg"
    assert len(json.dumps(table, separators=(",", ":"))) <= 2000
    h = histogram("quality", [2.0] * 5)
    assert sum(h.counts) == 5 and h.edges[0] < 2.0 < h.edges[-1]
    assert histogram("quality", []) is None
