"""Only allowed image formats reach a Pillow plugin: an EPS file never starts Ghostscript, whatever its name.

The attack is real: a logging stand-in `gs` first on the PATH records any run, and real `clipscan scan`
subprocesses scan a folder and bytes on standard input.
"""
from __future__ import annotations

import io
import json
import os
import subprocess
import sys

import pytest
from PIL import Image

from clipscan.runtime.decode import load_image
from clipscan.runtime.discover import image_extensions
from clipscan.runtime.errors import ImageReadError, InvalidArgumentError
from clipscan.runtime.image_formats import DEFAULT_IMAGE_FORMATS, FORMATS, format_choices, parse_image_formats

CLI = [sys.executable, "-m", "clipscan"]


@pytest.fixture
def fake_gs(tmp_path):
    """A `gs` that records every run in a log file, first on the PATH of the subprocesses."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    log = tmp_path / "gs-ran.log"
    gs = bin_dir / "gs"
    gs.write_text(f"#!/bin/sh\necho \"$@\" >> '{log}'\nexit 1\n")
    gs.chmod(0o755)
    env = {**os.environ, "PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}"}
    # the stand-in works: Pillow left alone hands an EPS file to it
    eps = tmp_path / "probe.eps"
    Image.new("RGB", (8, 8), "red").save(eps)
    probe = ("from PIL import Image\nim = Image.open(r'%s')\ntry:\n    im.load()\nexcept Exception:\n    pass\n"
             % eps)
    subprocess.run([sys.executable, "-c", probe], env=env, timeout=60, check=True)
    assert log.exists(), "the stand-in gs did not run for plain Pillow: the test would prove nothing"
    log.unlink()
    return env, log


def _eps_bytes(tmp_path) -> bytes:
    p = tmp_path / "body.eps"
    Image.new("RGB", (16, 16), "blue").save(p)
    return p.read_bytes()


def _rows(stdout: str) -> dict[str, dict]:
    return {os.path.basename(r["path"]): r for r in map(json.loads, stdout.splitlines())}


def test_folder_scan_never_runs_ghostscript(tmp_path, fake_gs):
    env, log = fake_gs
    d = tmp_path / "photos"
    d.mkdir()
    eps = _eps_bytes(tmp_path)
    (d / "a.eps").write_bytes(eps)            # EPS by name: not an image extension, skipped
    (d / "b.jpg").write_bytes(eps)            # EPS named like a JPEG: identified by signature only
    (d / "c.ps").write_bytes(eps)
    Image.new("RGB", (40, 30), "green").save(d / "d.png")
    out = subprocess.run(CLI + ["scan", str(d), str(d / "a.eps"), "--all-files", "-q"], env=env,
                         capture_output=True, text=True, timeout=600)
    assert not log.exists(), f"Ghostscript ran: {log.read_text()}"
    rows = _rows(out.stdout)
    assert out.returncode == 1 and "Traceback" not in out.stderr, out.stderr
    assert rows["d.png"]["error"] is None and rows["d.png"]["verdict"] in ("real", "generated")
    for name in ("a.eps", "b.jpg", "c.ps"):
        assert rows[name]["error_kind"] == "unsupported_format", rows[name]
        assert "EPS" in rows[name]["error"] and "never decodes" in rows[name]["error"]
    # without --all-files the walk skips .eps and .ps like any other non-image file
    out = subprocess.run(CLI + ["scan", str(d), "-q"], env=env, capture_output=True, text=True, timeout=600)
    assert sorted(_rows(out.stdout)) == ["b.jpg", "d.png"] and not log.exists()


def test_bytes_never_run_ghostscript(tmp_path, fake_gs):
    """An EPS body where an image is expected (standard input, as an upload is bytes): an error row, no gs."""
    env, log = fake_gs
    png = tmp_path / "ok.png"
    Image.new("RGB", (40, 30), "green").save(png)
    out = subprocess.run(CLI + ["scan", "-", str(png), "-q"], input=_eps_bytes(tmp_path), env=env,
                         capture_output=True, timeout=600)
    assert not log.exists(), f"Ghostscript ran: {log.read_text()}"
    rows = _rows(out.stdout.decode())
    assert rows["<stdin>"]["error_kind"] == "unsupported_format" and rows["ok.png"]["error"] is None, rows


def test_a_disallowed_format_is_an_error_and_the_flag_enables_it(tmp_path):
    tga = tmp_path / "icon.tga"
    Image.new("RGB", (32, 24), "red").save(tga)
    with pytest.raises(ImageReadError) as e:
        load_image(tga)
    assert e.value.kind in ("unsupported_format", "not_an_image")  # TGA has no signature to name it by
    assert load_image(tga, image_formats="default,tga").size == (32, 24)
    psd_like = tmp_path / "x.png"
    Image.new("RGB", (8, 8)).save(psd_like, "PNG")
    with pytest.raises(ImageReadError) as e:
        load_image(psd_like, image_formats=("jpeg",))
    assert e.value.kind == "unsupported_format" and "--image-formats jpeg,png" in str(e.value)
    assert ".tga" in image_extensions() and ".eps" not in image_extensions() and ".pdf" not in image_extensions()
    out = subprocess.run(CLI + ["scan", str(tga), "--image-formats", "tga", "-q"], capture_output=True, text=True,
                         timeout=600)
    assert out.returncode == 0 and json.loads(out.stdout)["error"] is None, out.stderr


def test_the_registry_is_the_one_source():
    assert DEFAULT_IMAGE_FORMATS == ("jpeg", "png", "webp", "gif", "bmp", "tiff", "avif")
    pillow_ids = {pid for f in FORMATS for pid in f.pillow}
    assert not pillow_ids & {"EPS", "PDF", "WMF", "MPEG", "BUFR", "GRIB", "HDF5"}, "formats that shell out or are stubs"
    assert {e for f in FORMATS for e in f.extensions} <= image_extensions()
    for bad in ("eps", "pdf", "nonsense", ""):
        with pytest.raises(InvalidArgumentError):
            parse_image_formats(bad)
    assert parse_image_formats("PNG, default") == ("png", "jpeg", "webp", "gif", "bmp", "tiff", "avif")
    import argparse

    from clipscan.cli import scan

    parser = argparse.ArgumentParser()
    scan.add_arguments(parser)
    help_text = " ".join(parser.format_help().split())
    assert all(f.name in help_text for f in FORMATS)
    assert format_choices().split(", ")[0] == "jpeg*"


def test_an_eps_upload_to_the_service_never_runs_ghostscript(tmp_path, fake_gs, monkeypatch):
    """The issue's attack: an EPS body sent as image/jpeg to a real `clipscan serve` on loopback, raw and in a
    multipart batch beside a good JPEG."""
    from .serve_servers import cli_server, multipart, request

    env, log = fake_gs
    monkeypatch.setenv("PATH", env["PATH"])  # the server subprocess inherits the stand-in gs
    eps = _eps_bytes(tmp_path)
    good = io.BytesIO()
    Image.new("RGB", (40, 30), "green").save(good, "JPEG")
    with cli_server() as (url, _proc):
        status, _, body = request(url + "/v1/scan?name=photo.jpg", eps, {"Content-Type": "image/jpeg"})
        assert status == 422 and json.loads(body)["rows"][0]["error_kind"] == "unsupported_format", (status, body)
        data, ctype = multipart([("a.jpg", eps), ("b.jpg", good.getvalue())])
        status, _, body = request(url + "/v1/scan", data, {"Content-Type": ctype})
        rows = json.loads(body)
        assert status == 200 and rows[0]["error_kind"] == "unsupported_format" and rows[1]["error"] is None, rows
    assert not log.exists(), f"Ghostscript ran: {log.read_text()}"


def test_serve_image_formats_narrows_what_the_service_decodes():
    """`clipscan serve --image-formats jpeg`: a PNG upload is that image's unsupported_format error (its header
    is not even read for the pixel budget), a JPEG beside it is answered."""
    from .serve_servers import cli_server, multipart, request

    png, jpeg = io.BytesIO(), io.BytesIO()
    Image.new("RGB", (40, 30), "blue").save(png, "PNG")
    Image.new("RGB", (40, 30), "green").save(jpeg, "JPEG")
    with cli_server("--image-formats", "jpeg") as (url, _proc):
        data, ctype = multipart([("a.png", png.getvalue()), ("b.jpg", jpeg.getvalue())])
        status, _, body = request(url + "/v1/scan", data, {"Content-Type": ctype})
        rows = json.loads(body)
        assert status == 200, (status, body)
        assert rows[0]["error_kind"] == "unsupported_format" and rows[1]["error"] is None, rows


def test_serve_refuses_an_unknown_image_format_name():
    proc = subprocess.run([sys.executable, "-m", "clipscan", "serve", "--image-formats", "jpeg,eps"],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2 and "eps" in proc.stderr and "Traceback" not in proc.stderr, proc.stderr
