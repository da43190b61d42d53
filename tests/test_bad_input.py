"""Bad files get an error row each; every other file still gets its result."""
from __future__ import annotations

import csv
import io
import json
import os

import numpy as np
import pytest
from PIL import Image

from clipscan.cli import main
from clipscan.runtime import Scanner

from .conftest import SAMPLES, jpeg_bytes, photo_images


@pytest.fixture
def mixed_dir(tmp_path):
    d = tmp_path / "mixed"
    d.mkdir()
    photos = photo_images()
    good = jpeg_bytes(photos[0][1], quality=90)
    (d / "a_good.jpg").write_bytes(good)
    (d / "b_corrupt.jpg").write_bytes(os.urandom(4096))
    (d / "c_truncated.jpg").write_bytes(good[: len(good) // 3])
    (d / "d_empty.png").write_bytes(b"")
    (d / "e_text_named_like_image.png").write_text("this is not a picture\n")
    photos[2][1].save(d / "f_good.png")
    (d / "g_notes.txt").write_text("a text file in a photo folder")
    bad_png = io.BytesIO()
    photos[3][1].save(bad_png, "PNG")
    data = bytearray(bad_png.getvalue())
    data[len(data) // 2: len(data) // 2 + 64] = b"\x00" * 64  # damaged IDAT payload
    (d / "h_damaged.png").write_bytes(bytes(data))
    return d


def rows_by_name(results):
    return {os.path.basename(r.path): r for r in results}


def test_each_bad_file_gets_its_own_error_and_the_rest_complete(mixed_dir):
    with Scanner(batch_size=2) as scanner:
        rows = rows_by_name(scanner.scan([mixed_dir]))
    assert "g_notes.txt" not in rows, "non-image extensions are skipped inside folders"
    assert scanner.walk_stats.skipped_non_image == 1
    assert rows["a_good.jpg"].ok and rows["f_good.png"].ok
    assert rows["a_good.jpg"].verdict in ("real", "generated") and 0 <= rows["a_good.jpg"].p_generated <= 1
    expect = {"b_corrupt.jpg": "not_an_image", "c_truncated.jpg": "truncated", "d_empty.png": "empty",
              "e_text_named_like_image.png": "not_an_image", "h_damaged.png": None}
    for name, kind in expect.items():
        r = rows[name]
        assert not r.ok and r.p_generated is None and r.verdict is None, name
        if kind:
            assert r.error.startswith(kind + ":"), (name, r.error)
    assert rows["d_empty.png"].error == "empty: the file is empty (0 bytes)"


def test_cli_streams_one_row_per_input_and_exit_code_says_failure(mixed_dir, tmp_path, capsys):
    missing = tmp_path / "does_not_exist.jpg"
    text_file = mixed_dir / "g_notes.txt"
    code = main(["scan", str(mixed_dir), str(missing), str(text_file), "--batch-size", "3"])
    lines = capsys.readouterr().out.splitlines()
    rows = [json.loads(line) for line in lines]
    assert code == 1
    assert len(rows) == 7 + 2
    assert [set(r) for r in rows] == [{"path", "p_generated", "logit", "verdict", "quality", "error_kind", "error",
                                       "backend", "heads"}] * len(rows)
    assert {r["backend"] for r in rows} == {"onnxruntime-cpu"}, "every row names the backend that ran"
    by_name = {os.path.basename(r["path"]): r for r in rows}
    assert by_name["does_not_exist.jpg"]["error"] == "not_found: no such file"
    assert by_name["does_not_exist.jpg"]["error_kind"] == "not_found" and by_name["g_notes.txt"]["error_kind"] == "not_an_image"
    assert by_name["g_notes.txt"]["error"].startswith("not_an_image:"), "explicit files are always scanned"
    assert sum(r["error"] is None for r in rows) == 2


def test_all_good_exits_zero_and_csv_output_file(image_dir, tmp_path):
    out = tmp_path / "results.csv"
    assert main(["scan", str(image_dir), "-f", "csv", "-o", str(out)]) == 0
    rows = list(csv.DictReader(out.open()))
    assert len(rows) == 6 and all(r["error"] == "" for r in rows)
    assert all(r["verdict"] in ("real", "generated") for r in rows)
    float(rows[0]["p_generated"]), float(rows[0]["quality"])


def test_empty_folder_is_reported(tmp_path, caplog):
    (tmp_path / "empty").mkdir()
    assert main(["scan", str(tmp_path / "empty")]) == 1
    assert "nothing to scan" in caplog.text


def test_symlink_loop_and_odd_entries_do_not_hang(tmp_path, image_dir):
    os.symlink(image_dir, image_dir / "nested" / "loop")  # directory cycle
    os.symlink(tmp_path / "nowhere.jpg", image_dir / "dangling.jpg")
    os.symlink(image_dir / "self.jpg", image_dir / "self.jpg")  # a link to itself
    (image_dir / "folder.jpg").mkdir()  # a directory named like an image
    with Scanner() as scanner:
        rows = rows_by_name(scanner.scan([image_dir]))
    assert sum(r.ok for r in rows.values()) == 6, "every real image once, despite the loop"
    assert rows["dangling.jpg"].error.startswith("unreadable: broken symbolic link")
    assert rows["self.jpg"].error.startswith("unreadable: symbolic link loop")


def test_api_inputs_bytes_images_and_wrong_types():
    photo = photo_images()[1][1]
    with Scanner() as scanner:
        by_image = scanner.scan_image(photo, name="upload-1")
        by_bytes = scanner.scan_bytes(jpeg_bytes(photo, quality=100), name="upload-2")
        assert by_image.ok and by_bytes.ok and by_image.path == "upload-1"
        assert scanner.scan_bytes(b"").error.startswith("empty:")
        assert scanner.scan_bytes(b"GIF89a garbage").error.startswith(("not_an_image:", "corrupt:", "truncated:"))
        weird = list(scanner.scan_many([("n", 12345), ("ok", photo), ("none", None)]))
    assert [r.ok for r in weird] == [False, True, False]
    assert weird[0].error.startswith("bad_input:") and "int" in weird[0].error


def test_huge_dimensions_are_refused_before_decoding(tmp_path):
    path = tmp_path / "huge.png"
    Image.new("L", (20000, 20000)).save(path, optimize=False)  # small file, 400 MP when decoded
    small = tmp_path / "small.png"
    photo_images()[0][1].save(small)
    medium = tmp_path / "medium.png"
    Image.new("L", (8000, 8000)).save(medium)  # 64 MP: under Pillow's own limit, over ours
    with Scanner(max_pixels=50_000_000) as scanner:
        rows = rows_by_name(scanner.scan([path, small, medium]))
    assert rows["huge.png"].error.startswith("too_large: 400 MP exceeds the limit of 50 MP")
    assert rows["medium.png"].error.startswith("too_large: 8000x8000 = 64 MP exceeds the limit of 50 MP")
    assert rows["small.png"].ok


def test_directory_named_like_an_image_is_reported_not_entered(image_dir):
    odd = image_dir / "upload.jpg"
    odd.mkdir()
    photo_images()[0][1].save(odd / "inside.png")
    with Scanner() as scanner:
        rows = rows_by_name(scanner.scan([image_dir]))
    assert rows["upload.jpg"].error == "is_directory: this is a directory, not an image file"
    assert "inside.png" not in rows
    with Scanner() as scanner:  # given explicitly, a folder is always walked
        assert [os.path.basename(r.path) for r in scanner.scan([odd])] == ["inside.png"]


def test_fifo_named_like_an_image_does_not_hang(tmp_path):
    fifo = tmp_path / "pipe.jpg"
    os.mkfifo(fifo)
    with Scanner() as scanner:
        (row,) = scanner.scan([tmp_path])
    assert row.error == "unreadable: not a regular file (device, socket or pipe)"


def test_existing_output_is_never_overwritten_silently(image_dir, tmp_path, capsys):
    out = tmp_path / "r.jsonl"
    out.write_text('{"path": "precious", "p_generated": 0.1, "verdict": "real", "quality": 3, "error": null}\n')
    assert main(["scan", str(image_dir), "-o", str(out)]) == 2
    assert "--resume" in capsys.readouterr().err
    assert out.read_text().startswith('{"path": "precious"')
    assert main(["scan", str(image_dir), "-o", str(out), "--overwrite"]) == 0
    assert len(out.read_text().splitlines()) == 6


@pytest.mark.parametrize("fmt", ["jsonl", "csv"])
def test_resume_skips_finished_files_and_repairs_a_torn_last_line(image_dir, tmp_path, fmt):
    out = tmp_path / f"r.{fmt}"
    assert main(["scan", str(image_dir), "-o", str(out), "-f", fmt]) == 0
    full = out.read_text().splitlines()
    # simulate a scan killed after three rows, in the middle of writing the fourth
    header = 1 if fmt == "csv" else 0
    out.write_text("\n".join(full[: header + 3]) + "\n" + full[header + 3][:17])
    assert main(["scan", str(image_dir), "-o", str(out), "-f", fmt, "--resume"]) == 0
    lines = out.read_text().splitlines()
    assert lines == full, "same rows, in the same order, each once, the torn line replaced"
    # a second resume has nothing left to do and writes nothing
    assert main(["scan", str(image_dir), "-o", str(out), "-f", fmt, "--resume"]) == 0
    assert out.read_text().splitlines() == full


def test_scanner_api_misuse_raises_clipscan_errors(tmp_path):
    """Wrong types and use after close() raise ClipscanError subclasses (also ValueError where Python expects it)."""
    from clipscan.runtime import ClipscanError, InvalidArgumentError, Scanner, ScannerClosedError

    scanner = Scanner()
    with pytest.raises(InvalidArgumentError, match="takes the encoded file as bytes, got str"):
        scanner.scan_bytes("samples/photo_chelsea.jpg")
    with pytest.raises(InvalidArgumentError, match="takes a PIL image"):
        scanner.scan_image(b"not an image object")
    assert scanner.scan_bytes(bytearray((SAMPLES / "photo_chelsea.jpg").read_bytes())).ok
    scanner.close()
    scanner.close()  # twice is harmless
    for call in (lambda: scanner.scan([SAMPLES]), lambda: scanner.scan_bytes(b"x"),
                 lambda: scanner.predict(np.zeros((1, 3, 224, 224), np.float32))):
        with pytest.raises(ScannerClosedError, match="was closed; create a new Scanner"):
            call()
    for bad in (0, -3, 2.5):
        with pytest.raises(InvalidArgumentError) as info:
            Scanner(batch_size=bad)
        assert isinstance(info.value, ValueError) and isinstance(info.value, ClipscanError)


@pytest.mark.parametrize("argv, flag", [
    (["scan", "--max-pixels", "0", "samples"], "--max-pixels"),
    (["scan", "--max-pixels", "-5", "samples"], "--max-pixels"),
    (["scan", "--workers", "-2", "samples"], "--workers"),
    (["scan", "--threads", "-1", "samples"], "--threads"),
    (["scan", "--max-batch", "0", "samples"], "--max-batch"),
    (["scan", "--device", "-1", "samples"], "--device"),
    (["scan", "-b", "two", "samples"], "--batch-size"),
    (["scan", "--threshold", "nan", "samples"], "--threshold"),
    (["calibrate", "m.onnx", "--images", "d", "-o", "o.onnx", "--smooth-alpha", "5"], "--smooth-alpha"),
    (["calibrate", "m.onnx", "--images", "d", "-o", "o.onnx", "--max-images", "-1"], "--max-images"),
    (["verify", "m.onnx", "--arch", "a", "--weights", "w", "--images", "d", "--margin", "-1"], "--margin"),
    (["bench", "m.onnx", "--min-iters", "0"], "--min-iters"),
])
def test_numeric_flags_are_checked_when_parsed(argv, flag, capsys):
    with pytest.raises(SystemExit) as info:
        main(argv)
    err = capsys.readouterr().err
    assert info.value.code == 2 and flag in err and "Traceback" not in err, err


def test_output_format_follows_the_file_extension(tmp_path, capsys):
    out = tmp_path / "rows.csv"
    assert main(["scan", str(SAMPLES), "-o", str(out)]) == 0
    rows = list(csv.DictReader(out.open()))
    assert len(rows) == 4 and rows[0]["verdict"] in ("real", "generated")
    assert main(["scan", str(SAMPLES), "-o", str(out), "--resume"]) == 0  # reads its own CSV back
    assert len(list(csv.DictReader(out.open()))) == 4
    assert main(["scan", str(SAMPLES), "-o", str(tmp_path / "rows2.csv"), "-f", "jsonl"]) == 2
    assert "named like a csv file" in capsys.readouterr().err
    assert not (tmp_path / "rows2.csv").exists()


def test_export_and_calibrate_keep_an_existing_output(tmp_path, capsys):
    """One policy with scan: an existing -o is replaced only with --overwrite; a folder or a missing folder is refused."""
    existing = tmp_path / "keep.onnx"
    existing.write_bytes(b"precious")
    base = ["--arch", "ViT-B-32", "--weights", str(tmp_path / "w.pt"), "--heads", str(tmp_path / "h.pt")]
    for argv in (["export", *base, "-o", str(existing)],
                 ["calibrate", str(tmp_path / "m.onnx"), "--images", str(tmp_path), "-o", str(existing)]):
        assert main(argv) == 2
        assert "already exists; pass --overwrite" in capsys.readouterr().err
        assert existing.read_bytes() == b"precious"
    assert main(["export", *base, "-o", str(tmp_path)]) == 2
    assert "is a folder" in capsys.readouterr().err
    assert main(["export", *base, "-o", str(tmp_path / "missing" / "x.onnx")]) == 2
    assert "does not exist; create it first" in capsys.readouterr().err


def test_resume_refuses_rows_of_another_model(tmp_path, capsys):
    """The results file records its model once (a sidecar, rows stay plain); --resume with another model is refused."""
    from clipscan.runtime.artifact import DEMO_MODEL
    from clipscan.runtime.results import read_sidecar

    out = tmp_path / "rows.jsonl"
    assert main(["scan", str(SAMPLES / "photo_chelsea.jpg"), "-o", str(out)]) == 0
    record = read_sidecar(out)
    assert record["model"]["name"] == "clipscan-demo" and len(record["model"]["sha256"]) == 64
    assert all("path" in json.loads(line) for line in out.read_text().splitlines())
    other = tmp_path / "other.onnx"
    other.write_bytes(DEMO_MODEL.read_bytes() + b"")  # same graph, another file: same sha256, so allowed
    assert main(["scan", str(SAMPLES), "-o", str(out), "--resume", "--model", str(other)]) == 0
    assert len(out.read_text().splitlines()) == 4
    # a different model (its manifest renamed, so another sha256) may not append
    import onnx

    m = onnx.load(str(DEMO_MODEL))
    for p in m.metadata_props:
        if p.key == "clipscan.manifest":
            p.value = p.value.replace('"clipscan-demo"', '"another-model"')
    onnx.save(m, str(other))
    before = out.read_bytes()
    assert main(["scan", str(SAMPLES / "render_001.png"), "-o", str(out), "--resume", "--model", str(other)]) == 2
    err = capsys.readouterr().err
    assert "holds rows of model 'clipscan-demo'" in err and "'another-model'" in err and "another -o" in err
    assert out.read_bytes() == before


def test_scan_output_that_is_a_folder_or_in_a_missing_folder(tmp_path, capsys):
    for target, says in ((tmp_path, "is a folder"), (tmp_path / "missing" / "x.jsonl", "does not exist")):
        for extra in ([], ["--overwrite"], ["--resume"]):
            assert main(["scan", str(SAMPLES), "-o", str(target), *extra]) == 2
            err = capsys.readouterr().err
            assert says in err and "Traceback" not in err


def test_stdin_image_and_path_list(tmp_path):
    """`-` scans one image piped on standard input; --from-list reads paths (from a file, or - for stdin)."""
    import subprocess
    import sys

    photo = (SAMPLES / "photo_chelsea.jpg").read_bytes()
    proc = subprocess.run([sys.executable, "-m", "clipscan", "scan", "-", str(SAMPLES / "render_001.png")],
                          input=photo, capture_output=True, timeout=120)
    rows = [json.loads(line) for line in proc.stdout.decode().splitlines()]
    assert proc.returncode == 0 and [r["path"] for r in rows] == ["<stdin>", str(SAMPLES / "render_001.png")]
    assert rows[0]["verdict"] == "real" and rows[1]["verdict"] == "generated"
    listing = "\n".join([str(SAMPLES / "render_002.png"), str(tmp_path / "gone.jpg"), ""])
    proc = subprocess.run([sys.executable, "-m", "clipscan", "scan", "--from-list", "-"], input=listing.encode(),
                          capture_output=True, timeout=120)
    rows = [json.loads(line) for line in proc.stdout.decode().splitlines()]
    assert proc.returncode == 1 and len(rows) == 2 and rows[1]["error_kind"] == "not_found"
    proc = subprocess.run([sys.executable, "-m", "clipscan", "scan"], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2 and "nothing to scan" in proc.stderr and "backend" not in proc.stderr


@pytest.mark.skipif(not os.path.exists("/dev/full"), reason="no /dev/full on this system")
def test_a_full_disk_is_a_message_not_a_traceback(tmp_path):
    import subprocess
    import sys

    for argv, stdout in ((["-o", "/dev/full", "--overwrite"], subprocess.PIPE), ([], open("/dev/full", "w"))):
        proc = subprocess.run([sys.executable, "-m", "clipscan", "scan", str(SAMPLES), *argv], stdout=stdout,
                              stderr=subprocess.PIPE, text=True, timeout=120)
        assert proc.returncode == 2, proc.stderr
        assert "No space left on device" in proc.stderr and "Traceback" not in proc.stderr, proc.stderr


def test_log_levels_default_verbose_quiet():
    """By default the one-line summary (no backend-skip lines); -v says what was skipped and why; -q errors only."""
    import subprocess
    import sys

    def stderr(*flags):
        proc = subprocess.run([sys.executable, "-m", "clipscan", "scan", *flags, str(SAMPLES)], capture_output=True,
                              text=True, timeout=120)
        assert proc.returncode == 0 and len(proc.stdout.splitlines()) == 4
        return proc.stderr

    default, verbose, quiet = stderr(), stderr("-v"), stderr("-q")
    assert "scanned 4 input(s)" in default and "skipped" not in default
    assert "backend tensorrt skipped" in verbose and "scanned 4 input(s)" in verbose
    assert quiet == ""
