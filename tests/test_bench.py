"""`clipscan bench`: report structure, ratios from the same run, plot, draft decoding, bad files.

Speed is reported, never asserted: every check here is about structure and bookkeeping.
"""
from __future__ import annotations

import json
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import pytest

from clipscan.bench import BenchConfig, format_table, run_benchmark, write_json, write_plot
from clipscan.bench.results import add_ratios
from clipscan.measure.timing import percentiles, time_loop
from clipscan.runtime import Scanner, load_artifact
from clipscan.runtime.decode import draft_request, load_image

from .conftest import REPO, block_torch_env, jpeg_bytes, photo_images

DEMO = REPO / "runtime" / "models" / "demo.onnx"
FAST = dict(warmup=1, min_iters=2, min_seconds=0.0, max_seconds=5.0, e2e_passes=1, settle_seconds=0.0, block_seconds=0.0)


@pytest.fixture(scope="module")
def bench_images(tmp_path_factory) -> Path:
    d = tmp_path_factory.mktemp("bench_images")
    for name, img in photo_images():
        img.save(d / f"{name}.jpg", "JPEG", quality=90)
    return d


@pytest.fixture(scope="module")
def two_artifacts(tmp_path_factory) -> list[str]:
    d = tmp_path_factory.mktemp("bench_models")
    a, b = d / "demo_a.onnx", d / "demo_b.onnx"
    shutil.copy(DEMO, a)
    shutil.copy(DEMO, b)
    return [str(a), str(b)]


@pytest.fixture(scope="module")
def report(two_artifacts, bench_images) -> dict:
    cfg = BenchConfig(models=two_artifacts, batch_sizes=[1, 3], backends=["cpu"], mode="both",
                      images=str(bench_images), cold_start=True, **FAST)
    return run_benchmark(cfg)


def test_percentiles_are_ordered():
    rng = np.random.default_rng(0)
    for n in (1, 2, 5, 37, 200):
        p = percentiles(list(rng.exponential(0.01, n)))
        assert p["min"] <= p["p50"] <= p["p95"] <= p["p99"] <= p["max"]
    assert percentiles([])["p50"] is None


def test_time_loop_counts_and_box():
    calls = []
    samples = time_loop(lambda: calls.append(1), warmup=2, min_iters=5, min_seconds=0.0, max_seconds=10.0)
    assert len(samples) == 5 and len(calls) == 7
    samples = time_loop(lambda: None, warmup=0, min_iters=10**9, min_seconds=0.0, max_seconds=0.05)
    assert len(samples) >= 3  # the time box ends it, never below three runs


def test_report_has_the_fields(report):
    for key in ("machine", "settings", "timed_region", "reference", "results", "fidelity", "cold_start", "errors"):
        assert key in report, key
    assert report["machine"]["cores"] >= 1
    rows = report["results"]
    assert {r["mode"] for r in rows} == {"model", "e2e"}
    # every artifact x backend x batch size x mode
    assert len(rows) == 2 * 1 * 2 * 2
    for r in rows:
        for key in ("runtime", "backend", "artifact", "precision", "batch_size", "iterations", "latency_ms",
                    "images_per_s", "peak_rss_mb", "ratio_vs_reference"):
            assert key in r, key
        lat = r["latency_ms"]
        assert lat["p50"] <= lat["p95"] <= lat["p99"]
        assert r["images_per_s"] > 0 and r["peak_rss_mb"] > 0
    assert report["errors"] == []
    json.dumps(report)  # serialisable as is
    assert "demo_a.onnx" in format_table(report)


def test_ratios_against_the_reference_of_the_same_run(report):
    ref = report["reference"]
    assert ref["kind"] == "fp32_artifact" and ref["artifact"] == "demo_a.onnx"  # no torch reference given
    for r in report["results"]:
        base = next(x for x in report["results"] if x["artifact"] == "demo_a.onnx" and x["mode"] == r["mode"]
                    and x["batch_size"] == r["batch_size"])
        assert r["ratio_vs_reference"] == pytest.approx(r["images_per_s"] / base["images_per_s"])
        if r is base:
            assert r["ratio_vs_reference"] == pytest.approx(1.0)
    fid = report["fidelity"]["demo_b.onnx"]
    assert fid["against"] == "fp32_artifact" and fid["agreement"] == 1.0 and fid["cosine_worst"] > 0.99999
    assert fid["n"] == 4


def test_ratio_uses_the_pytorch_row_when_there_is_one():
    rep = {"reference": {"kind": "pytorch"}, "results": [
        {"mode": "model", "runtime": "pytorch", "backend": "eager-cpu", "artifact": "pytorch-fp32", "precision": "fp32",
         "batch_size": 8, "images_per_s": 10.0},
        {"mode": "model", "runtime": "onnxruntime", "backend": "onnxruntime-cpu", "artifact": "m.onnx",
         "precision": "fp32", "batch_size": 8, "images_per_s": 25.0},
        {"mode": "model", "runtime": "onnxruntime", "backend": "onnxruntime-cpu", "artifact": "m.onnx",
         "precision": "fp32", "batch_size": 1, "images_per_s": 5.0}]}
    rep["results"].append({"mode": "model", "runtime": "onnxruntime", "backend": "onnxruntime-cpu",
                           "artifact": "m-int8.onnx", "precision": "int8", "batch_size": 8, "images_per_s": 75.0})
    add_ratios(rep)
    assert rep["results"][1]["ratio_vs_reference"] == pytest.approx(2.5)
    assert rep["results"][2]["ratio_vs_reference"] is None  # no reference at batch 1: no ratio, not a wrong one
    # an INT8 row also gets its ratio to the FP32 artifact of the same mode, backend and batch size
    assert rep["results"][3]["ratio_vs_reference"] == pytest.approx(7.5)
    assert rep["results"][3]["ratio_vs_fp32_artifact"] == pytest.approx(3.0)
    assert rep["results"][1]["ratio_vs_fp32_artifact"] is None


def test_cold_start_measured(report):
    (cs,) = report["cold_start"][:1]
    assert cs["error"] is None and cs["seconds"] > 0 and cs["exit_code"] == 0


def test_json_and_plot_written(report, tmp_path):
    j = write_json(report, tmp_path / "out" / "bench.json")
    assert json.loads(j.read_text())["results"]
    png = write_plot(report, tmp_path / "out" / "bench.png")
    assert png is not None and png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_corrupt_file_does_not_stop_e2e(two_artifacts, bench_images, tmp_path, monkeypatch):
    d = tmp_path / "imgs"
    shutil.copytree(bench_images, d)
    (d / "broken.jpg").write_bytes(jpeg_bytes(photo_images()[0][1])[:300])
    (d / "text.jpg").write_text("not an image")
    cfg = BenchConfig(models=two_artifacts[:1], batch_sizes=[2], backends=["cpu"], mode="e2e", images=str(d),
                      cold_start=False, **FAST)
    scratch = tmp_path / "scratch"
    scratch.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(scratch))
    rep = run_benchmark(cfg)
    assert list(scratch.iterdir()) == [], "the run's scratch folder is removed when it ends"
    (row,) = rep["results"]
    assert row["error_rows"] == 2 and row["images"] == 6
    assert {Path(b["path"]).name for b in rep["settings"]["undecodable_images"]} == {"broken.jpg", "text.jpg"}
    assert rep["errors"] == []


def test_draft_decoding_same_tensor_size_and_opt_in(tmp_path):
    big = photo_images()[0][1].resize((2000, 1500))
    p = tmp_path / "big.jpg"
    big.save(p, "JPEG", quality=90)
    exact, draft = Scanner(DEMO, backend="cpu"), Scanner(DEMO, backend="cpu", decode="draft")
    assert exact.decode == "exact" and exact.draft_size is None  # the default decodes exactly
    assert draft.draft_size == (224, 224)
    full = load_image(p)
    small = load_image(p, draft_size=draft.draft_size)
    assert full.size == (2000, 1500)
    # PIL takes the smallest DCT scale (1/4 here, 1/8 would give 188 < 224) keeping both sides >= 224
    assert small.size == (500, 375)
    xe, xd = exact.prepare(str(p)), draft.prepare(str(p))
    assert xe.shape == xd.shape == (1, 3, 224, 224)
    re, rd = exact.scan_bytes(p.read_bytes()), draft.scan_bytes(p.read_bytes())
    assert re.verdict == rd.verdict
    # non-JPEG files decode exactly even when draft is asked for
    png = tmp_path / "big.png"
    big.save(png)
    assert load_image(png, draft_size=(224, 224)).size == (2000, 1500)
    assert draft_request("none", (224, 224)) is None
    with pytest.raises(ValueError):
        Scanner(DEMO, backend="cpu", decode="fast")


def test_exported_model_against_pytorch(exported, tiny_model_files, bench_images, tmp_path):
    """With the PyTorch original given, ratios and fidelity are against PyTorch eager measured in the same run;
    GFLOP/s comes from the export's FLOP count; the camera section times the plain pipeline at batch 1 and N."""
    t = tiny_model_files
    cfg = BenchConfig(models=[str(exported.path)], batch_sizes=[2], backends=["cpu"], mode="both",
                      images=str(bench_images), torch_arch=str(t["config"]), torch_weights=str(t["weights"]),
                      torch_heads=[str(t["heads"])], cold_start=False, camera=2, camera_size=(900, 600),
                      camera_dir=str(tmp_path / "cam"), **FAST)
    rep = run_benchmark(cfg)
    assert rep["errors"] == []
    gflops = exported.manifest.backbone["gflops_per_image"]
    assert rep["gflops_per_image"] == gflops > 0
    for r in rep["results"]:
        assert r["gflops_per_s"] == pytest.approx(gflops * r["images_per_s"])
    cam = rep["camera"]
    assert sorted(cam["plain"]) == ["1", "2"]
    [art] = cam["artifacts"]
    for b in ("1", "2"):
        assert art[f"ratio_draft_vs_plain_b{b}"] == pytest.approx(
            art["e2e_images_per_s_draft"] / cam["plain"][b]["images_per_s"])
    assert "plain pipeline" in format_table(rep) and "GFLOP/s" in format_table(rep)
    assert rep["reference"]["kind"] == "pytorch"
    by = {(r["mode"], r["runtime"]): r for r in rep["results"]}
    assert set(by) == {("model", "pytorch"), ("model", "onnxruntime"), ("e2e", "pytorch"), ("e2e", "onnxruntime")}
    for mode in ("model", "e2e"):
        ort_row, torch_row = by[(mode, "onnxruntime")], by[(mode, "pytorch")]
        assert ort_row["ratio_vs_reference"] == pytest.approx(ort_row["images_per_s"] / torch_row["images_per_s"])
        assert torch_row["ratio_vs_reference"] == pytest.approx(1.0)
    fid = rep["fidelity"][exported.path.name]
    assert fid["against"] == "pytorch" and fid["cosine_worst"] > 0.9999 and fid["agreement"] == 1.0


def test_cli_bench_without_torch(tmp_path, bench_images):
    """The bench command runs on a base install: torch, open_clip and onnx blocked."""
    out = tmp_path / "b.json"
    cmd = [sys.executable, "-m", "clipscan", "bench", str(DEMO), "--batch-sizes", "1,2", "--mode", "model",
           "--images", str(bench_images), "--min-iters", "2", "--min-seconds", "0", "--warmup", "1",
           "--no-cold-start", "--backends", "cpu", "--json", str(out), "--plot", str(tmp_path / "b.png")]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=block_torch_env(tmp_path), timeout=120)
    assert proc.returncode == 0, proc.stderr
    rep = json.loads(out.read_text())
    assert [r["batch_size"] for r in rep["results"]] == [1, 2]
    assert "torch" not in rep["machine"]["versions"]
    assert (tmp_path / "b.png").is_file()


def test_camera_section_small(two_artifacts, bench_images, tmp_path):
    """The camera-sized section's bookkeeping on small stand-ins (800x600): decode exact vs draft, overlap
    trace, draft fidelity against exact decoding, with the gates reported."""
    cfg = BenchConfig(models=two_artifacts[:1], batch_sizes=[2], backends=["cpu"], mode="model",
                      images=str(bench_images), cold_start=False, camera=3, camera_size=(800, 600),
                      camera_dir=str(tmp_path / "cam"), **FAST)
    rep = run_benchmark(cfg)
    assert rep["errors"] == []
    cam = rep["camera"]
    assert cam["images"] == 3 and cam["size"] == [800, 600]
    assert cam["decoded_size_exact"] == [800, 600] and cam["decoded_size_draft"] == [400, 300]
    [art] = cam["artifacts"]
    assert art["artifact"] == Path(two_artifacts[0]).name and art["e2e_images_per_s_draft"] > 0
    assert art["draft_fidelity"]["n"] == 3 and "passed" in art["draft_fidelity"]
    trace = art["overlap_trace"]
    assert trace["inference_seconds"] > 0 and 0.0 <= trace["inference_overlapped_fraction"] <= 1.0
    assert "plain" not in cam  # no PyTorch reference given: no plain-pipeline ratio
    assert "camera-sized" in format_table(rep)


@pytest.fixture(scope="module")
def univfd_artifact(tiny_model_files, tmp_path_factory) -> tuple[Path, str]:
    """(the tiny backbone with a UnivFD fc head exported, the --torch-heads argument that made it)."""
    import torch

    from clipscan.export import export_model

    from .conftest import TINY_CONFIG

    d = tmp_path_factory.mktemp("bench_univfd")
    gen = torch.Generator().manual_seed(11)
    fc = d / "fc_weights.pth"
    torch.save({"weight": torch.randn(1, TINY_CONFIG["embed_dim"], generator=gen) * 3,
                "bias": torch.randn(1, generator=gen)}, str(fc))
    t = tiny_model_files
    out = d / "univfd.onnx"
    export_model(str(t["config"]), t["weights"], f"univfd:{fc}", out, name="univfd-test")
    return out, f"univfd:{fc}"


def test_univfd_artifact_against_pytorch(univfd_artifact, tiny_model_files, bench_images, tmp_path):
    """A UnivFD recipe (no resize, centre crop) with the PyTorch reference: the plain pipeline's input comes
    from the verify reference transform (open_clip's own transform has no resize "none"), end to end."""
    model, head = univfd_artifact
    t = tiny_model_files
    cfg = BenchConfig(models=[str(model)], batch_sizes=[1], backends=["cpu"], mode="both", images=str(bench_images),
                      torch_arch=str(t["config"]), torch_weights=str(t["weights"]), torch_heads=[head],
                      cold_start=False, camera=1, camera_size=(800, 600), camera_dir=str(tmp_path / "cam"), **FAST)
    rep = run_benchmark(cfg)
    assert rep["errors"] == []
    assert load_artifact(model).manifest.preprocess.resize_mode == "none"
    by = {(r["mode"], r["runtime"]): r for r in rep["results"]}
    assert set(by) == {("model", "pytorch"), ("model", "onnxruntime"), ("e2e", "pytorch"), ("e2e", "onnxruntime")}
    assert all(r["images_per_s"] > 0 for r in rep["results"])
    assert rep["reference"]["kind"] == "pytorch"
    fid = rep["fidelity"][model.name]
    assert fid["against"] == "pytorch" and fid["n"] == 4
    assert fid["agreement"] == 1.0 and fid["cosine_worst"] > 0.9999
    cam = rep["camera"]
    assert sorted(cam["plain"]) == ["1"] and "errors" not in cam
    assert cam["decoded_size_draft"] == cam["decoded_size_exact"] == [800, 600]  # no resize: drafts never apply


def test_each_artifact_gets_its_own_input_dtype(exported, tiny_model_files, bench_images, tmp_path):
    """A uint8-input artifact next to a float one: each is fed the images as it takes them (raw pixels vs
    normalised floats), in the timed calls and in the fidelity check."""
    from clipscan.export import export_model

    u8 = export_model(str(tiny_model_files["config"]), tiny_model_files["weights"], tiny_model_files["heads"],
                      tmp_path / "u8.onnx", uint8_input=True).path
    cfg = BenchConfig(models=[str(exported.path), str(u8)], batch_sizes=[2], backends=["cpu"], mode="model",
                      images=str(bench_images), cold_start=False, **FAST)
    rep = run_benchmark(cfg)
    assert rep["errors"] == [], rep["errors"]
    assert {r["artifact"] for r in rep["results"]} == {exported.path.name, "u8.onnx"}
    fid = rep["fidelity"]["u8.onnx"]
    assert fid["against"] == "fp32_artifact" and fid["agreement"] == 1.0 and fid["cosine_worst"] > 0.99999, fid


def test_an_asked_for_reference_that_cannot_run_is_an_error(tmp_path, bench_images):
    """--torch-* without torch installed: exit 2 saying what to install, unless --skip-unavailable."""
    cmd = [sys.executable, "-m", "clipscan", "bench", str(DEMO), "--batch-sizes", "1", "--mode", "model",
           "--images", str(bench_images), "--min-iters", "2", "--min-seconds", "0", "--warmup", "1",
           "--no-cold-start", "--torch-arch", "ViT-B-32", "--torch-weights", "w.pt", "--torch-heads", "h.pt"]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=block_torch_env(tmp_path), timeout=120)
    assert proc.returncode == 2 and "pip install 'clipscan[export]'" in proc.stderr, proc.stderr
    assert "Traceback" not in proc.stderr
    proc = subprocess.run(cmd + ["--skip-unavailable"], capture_output=True, text=True, env=block_torch_env(tmp_path),
                          timeout=120)
    assert proc.returncode == 0 and "PyTorch reference skipped" in proc.stdout, proc.stderr


def test_cli_bench_defaults_to_the_demo_and_labels_each_runtime(tmp_path, bench_images, capsys, caplog):
    """`clipscan bench` with no MODEL runs the demo model (as its help says); an OpenVINO row is labelled
    openvino, not onnxruntime, in the table and the plot; the load average is three numbers; a ratio to
    the FP32 artifact names its backend."""
    from clipscan.bench.plot import _series
    from clipscan.bench.table import format_table as table
    from clipscan.cli import main

    caplog.set_level("INFO", logger="clipscan.bench")
    out = tmp_path / "b.json"
    code = main(["bench", "--batch-sizes", "1", "--mode", "model", "--images", str(bench_images), "--min-iters", "2",
                 "--min-seconds", "0", "--warmup", "1", "--settle", "0", "--block", "0", "--no-cold-start",
                 "--backends", "cpu,openvino", "--json", str(out)])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    assert "no MODEL given: benchmarking the bundled demo model" in caplog.text
    rows = {line.split()[2]: line.split() for line in captured.out.splitlines() if line.startswith("model ")}
    assert rows["onnxruntime-cpu"][1] == "onnxruntime" and rows["openvino-cpu"][1] == "openvino"
    assert rows["openvino-cpu"][3] == "demo.onnx"
    heading = captured.out.splitlines()[0]
    assert "[" not in heading and "load average 1/5/15 min at start " in heading
    load = heading.split("at start ")[1].split(",")[0]
    assert [float(x) for x in load.split(" / ")] and len(load.split(" / ")) == 3
    rep = json.loads(out.read_text())
    assert sorted(_series(rep, "model")) == ["onnxruntime-cpu fp32 (demo.onnx)", "openvino-cpu fp32 (demo.onnx)"]
    # an FP16 artifact next to it on both backends: two ratios, told apart by their backend
    rep["results"] += [{**r, "artifact": "demo-fp16.onnx", "precision": "fp16"} for r in rep["results"]]
    add_ratios(rep)
    line = next(x for x in table(rep).splitlines() if x.startswith("against the FP32 artifact"))
    assert "model demo-fp16.onnx on onnxruntime-cpu b1 1.00x" in line and "on openvino-cpu b1 1.00x" in line
