"""`clipscan scan -o` against hostile output files: a symbolic link is replaced, never written through; a
damaged model record or rows file ends a --resume in one sentence with the file exactly as it was; the
report shows such lines as skipped rows instead of crashing."""
from __future__ import annotations

import json
import subprocess
import sys

import pytest
from PIL import Image


def clipscan(*args, cwd, timeout=300):
    return subprocess.run([sys.executable, "-m", "clipscan", *map(str, args)], capture_output=True, text=True,
                          cwd=cwd, timeout=timeout, check=False)


def one_sentence(proc, *said):
    assert proc.returncode == 2, (proc.returncode, proc.stderr)
    assert "Traceback" not in proc.stderr and len(proc.stderr.strip().splitlines()) == 1, proc.stderr
    assert all(s in proc.stderr for s in said), proc.stderr


@pytest.fixture
def scanned(tmp_path):
    """imgs/ with three images, and out.jsonl (+ its model record) holding the row of the first."""
    (tmp_path / "imgs").mkdir()
    for i in range(3):
        Image.new("RGB", (30 + i, 20), (60 * i, 90, 30)).save(tmp_path / "imgs" / f"{i}.png")
    proc = clipscan("scan", "imgs/0.png", "-o", "out.jsonl", "-q", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    return tmp_path, (tmp_path / "out.jsonl").read_bytes(), (tmp_path / "out.jsonl.clipscan.json").read_text()


def test_output_links_are_replaced_never_written_through(scanned):
    d, _, _ = scanned
    (d / "dangling.jsonl").symlink_to(d / "created-by-the-link.txt")
    proc = clipscan("scan", "imgs/0.png", "-o", "dangling.jsonl", "-q", cwd=d)
    assert proc.returncode == 0, proc.stderr
    assert not (d / "created-by-the-link.txt").exists(), "a dangling link created its target"
    assert not (d / "dangling.jsonl").is_symlink() and json.loads((d / "dangling.jsonl").read_text())["path"]

    (d / "precious.txt").write_text("someone else's file\n")
    (d / "link.jsonl").symlink_to("precious.txt")
    one_sentence(clipscan("scan", "imgs/0.png", "-o", "link.jsonl", "-q", cwd=d), "already exists")
    one_sentence(clipscan("scan", "imgs", "-o", "link.jsonl", "--resume", "-q", cwd=d), "is a symbolic link")
    proc = clipscan("scan", "imgs/0.png", "-o", "link.jsonl", "--overwrite", "-q", cwd=d)
    assert proc.returncode == 0, proc.stderr
    assert (d / "precious.txt").read_text() == "someone else's file\n", "--overwrite truncated the link's target"
    assert not (d / "link.jsonl").is_symlink() and (d / "link.jsonl").read_text().count("\n") == 1

    # the report's policy is the same: the page replaces the link
    (d / "r.html").symlink_to("precious.txt")
    assert clipscan("report", "out.jsonl", "-o", "r.html", "--overwrite", cwd=d).returncode == 0
    assert (d / "precious.txt").read_text() == "someone else's file\n" and not (d / "r.html").is_symlink()


DEEP = "[" * 50_000 + "]" * 50_000


@pytest.mark.parametrize("record, said", [
    ({"model": "clipscan-demo"}, "its model is a JSON string, not an object"),
    ({"model": {"name": "m", "sha256": 10 ** 400}}, "its model's sha256 is not text"),
    (True, "it is not a JSON object"),
    ('{"model": ' + DEEP + "}", "JSON nested too deeply"),
    ('{"model": ' + "1" * 5000 + "}", "4300 digits"),
])
def test_a_damaged_model_record_ends_resume_in_one_sentence_and_changes_nothing(scanned, record, said):
    d, rows, _ = scanned
    sidecar = d / "out.jsonl.clipscan.json"
    sidecar.write_text(record if isinstance(record, str) else json.dumps(record))
    torn = rows + b'{"path": "imgs/1.p'  # a half-written last line: it must not be cut before the check
    (d / "out.jsonl").write_bytes(torn)
    before = sidecar.read_bytes()
    one_sentence(clipscan("scan", "imgs", "-o", "out.jsonl", "--resume", "-q", cwd=d), said, "out.jsonl.clipscan.json")
    assert (d / "out.jsonl").read_bytes() == torn and sidecar.read_bytes() == before


@pytest.mark.parametrize("line, said", [
    (DEEP, "line 2 is JSON nested too deeply"),
    ('{"path": "imgs/9.png", "p_generated": ' + "1" * 5000 + "}", "line 2 is not a clipscan JSONL row"),
])
def test_a_hostile_rows_line_ends_resume_in_one_sentence_and_changes_nothing(scanned, line, said):
    d, rows, _ = scanned
    torn = rows + line.encode() + b"\n" + b'{"path": "imgs/1.p'
    (d / "out.jsonl").write_bytes(torn)
    one_sentence(clipscan("scan", "imgs", "-o", "out.jsonl", "--resume", "-q", cwd=d), said, "left as it was")
    assert (d / "out.jsonl").read_bytes() == torn


def test_a_row_with_a_400_digit_score_resumes_and_the_report_skips_it(scanned):
    d, rows, _ = scanned
    (d / "out.jsonl").write_bytes(rows + b'{"path": "imgs/1.png", "p_generated": ' + b"7" * 400 + b"}\n")
    proc = clipscan("scan", "imgs", "-o", "out.jsonl", "--resume", "-q", cwd=d)
    assert proc.returncode == 0, proc.stderr
    lines = (d / "out.jsonl").read_text().splitlines()
    assert [json.loads(x)["path"] for x in lines] == ["imgs/0.png", "imgs/1.png", "imgs/2.png"]

    with open(d / "out.jsonl", "a") as f:  # and every other hostile line, for the report
        f.write(DEEP + "\n")
        f.write('{"path": "imgs/3.png", "p_generated": ' + "1" * 5000 + "}\n")
        f.write('{"path": "imgs/4.png", "verdict": ' + "[" * 900 + "]" * 900 + "}\n")
    proc = clipscan("report", "out.jsonl", "-o", "r.html", cwd=d)
    assert proc.returncode == 1 and "Traceback" not in proc.stderr, proc.stderr
    page = (d / "r.html").read_text()
    for said in ("line 2: p_generated is an integer of 400 digits", "line 4: JSON nested too deeply",
                 "line 5: not JSON (Exceeds the limit (4300 digits)", "line 6: a text field holds a JSON list"):
        assert said in page, said
    assert "4 line(s) of the rows file were not rows" in page and ": 2 rows (" in page


def test_resume_with_other_row_settings_is_refused_naming_each(scanned):
    """The record holds every setting that changes a row; a resume with other settings is one sentence naming
    each (recorded and new value) and leaves rows and record as they were; the same flags resume, and a
    file recorded before settings were kept resumes as it always did."""
    from clipscan.runtime.decode import DEFAULT_MAX_PIXELS

    d, rows, record = scanned
    sidecar = d / "out.jsonl.clipscan.json"
    settings = json.loads(record)["settings"]
    assert settings == {"--format": "jsonl", "--with-embedding": False, "--threshold": None, "--decode": "exact",
                        "--max-pixels": DEFAULT_MAX_PIXELS, "--image-formats": settings["--image-formats"]}
    assert "jpeg" in settings["--image-formats"].split(",")
    for flags, said in (
            (["--threshold", "0.99999999", "--max-pixels", "1000000"],
             ["--threshold was the manifest's, now 0.99999999", f"--max-pixels was {DEFAULT_MAX_PIXELS}, now 1000000"]),
            (["--with-embedding", "--decode", "draft", "--image-formats", "png"],
             ["--with-embedding was off, now on", "--decode was exact, now draft",
              f"--image-formats was {settings['--image-formats']}, now png"])):
        proc = clipscan("scan", "imgs", "-o", "out.jsonl", "--resume", "-q", *flags, cwd=d)
        one_sentence(proc, *said, "repeat the flags", "another -o")
        assert "--format" not in proc.stderr  # only what differs is named
        assert (d / "out.jsonl").read_bytes() == rows and sidecar.read_text() == record

    proc = clipscan("scan", "imgs", "-o", "out.jsonl", "--resume", "-q", "--decode", "exact", cwd=d)
    assert proc.returncode == 0, proc.stderr
    assert [json.loads(x)["path"] for x in (d / "out.jsonl").read_text().splitlines()] == \
        ["imgs/0.png", "imgs/1.png", "imgs/2.png"]

    old = json.loads(record)
    del old["settings"]  # as written before settings were recorded: no settings to hold a resume to
    sidecar.write_text(json.dumps(old))
    (d / "out.jsonl").write_bytes(rows)
    proc = clipscan("scan", "imgs", "-o", "out.jsonl", "--resume", "-q", "--threshold", "0.9", cwd=d)
    assert proc.returncode == 0, proc.stderr
    assert len((d / "out.jsonl").read_text().splitlines()) == 3
