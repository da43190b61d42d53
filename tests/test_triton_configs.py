"""Every config.pbtxt `clipscan triton` writes, parsed with Triton's own schema (tritonclient's model_config_pb2),
and the ensemble's python steps checked against a local scan (the graph step cannot run on this CPU-only Triton)."""
from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest
from google.protobuf import text_format
from google.protobuf.json_format import MessageToDict

from clipscan.cli import main
from clipscan.runtime import BackendError, Scanner
from clipscan.runtime.artifact import DEMO_MODEL, load_artifact
from clipscan.runtime.contract import output_specs
from clipscan.triton import Plan, RepositoryOptions, write_repository
from clipscan.triton.ensemble_steps import Finisher, Preparer
from clipscan.triton.numpy_check import check_numpy

from .conftest import SAMPLES
from .triton_helpers import free_closed_port, model_config_pb2, parse_config

CONTRACT = ["p_generated", "logit", "verdict", "quality", "embedding", "error", "backend",
            "detector.p_generated", "detector.logit", "detector.verdict", "detector.threshold",
            "quality.score"]   # + every head's answer


def configs(repo) -> dict:
    return {p.parent.name: parse_config(p.read_text()) for p in sorted(repo.rglob("config.pbtxt"))}


def test_the_schema_rejects_wrong_configs():
    """The check can fail: an unknown field, a wrong type and a wrong enum are all refused."""
    good = 'name: "m"\nbackend: "python"\nmax_batch_size: 4\n'
    assert parse_config(good).max_batch_size == 4
    for bad in (good + "max_batch_sizes: 4\n", 'max_batch_size: "four"\n',
                'instance_group [ { kind: KIND_TPU } ]\n', 'dynamic_batching { max_queue_delay: 100 }\n'):
        with pytest.raises(text_format.ParseError):
            parse_config(bad)


def test_python_model_config(tmp_path):
    repo = write_repository(None, tmp_path, RepositoryOptions(max_batch=8, instances=2, queue_delay_us=500))
    (name, cfg), = configs(tmp_path).items()
    pb = model_config_pb2()
    assert name == repo.entry == "clipscan-demo" and cfg.backend == "python" and cfg.max_batch_size == 8
    assert cfg.dynamic_batching.max_queue_delay_microseconds == 500
    assert [(g.kind, g.count) for g in cfg.instance_group] == [(pb.ModelInstanceGroup.KIND_CPU, 2)]
    assert [i.name for i in cfg.input] == ["image"] and cfg.input[0].data_type == pb.TYPE_STRING
    assert [o.name for o in cfg.output] == CONTRACT
    assert {o.name: list(o.dims) for o in cfg.output}["embedding"] == [128]
    warm = cfg.model_warmup[0]
    assert warm.batch_size == 1 and warm.inputs["image"].input_data_file == "image"
    raw = (tmp_path / name / "warmup" / "image").read_bytes()
    assert int.from_bytes(raw[:4], "little") == len(raw) - 4 and raw[4:6] == b"\xff\xd8"  # one BYTES element: a JPEG
    params = {k: v.string_value for k, v in cfg.parameters.items()}
    demo = load_artifact(None)
    assert params["sha256"] == demo.sha256() and params["artifact"] == "demo.onnx" and params["backend"] == "cpu"
    assert (tmp_path / name / "1" / "demo.onnx").read_bytes() == demo.path.read_bytes()
    model_py = (tmp_path / name / "1" / "model.py").read_text()
    assert "import ScanModel as TritonPythonModel" in model_py and "site.addsitedir" in model_py
    compile(model_py, "model.py", "exec")


def test_python_model_on_gpu_instances(tmp_path):
    write_repository(None, tmp_path, RepositoryOptions(kind="gpu", layout="python", instances=3))
    (_, cfg), = configs(tmp_path).items()
    pb = model_config_pb2()
    assert [(g.kind, g.count) for g in cfg.instance_group] == [(pb.ModelInstanceGroup.KIND_GPU, 3)]
    assert cfg.parameters["backend"].string_value == "auto"  # the runtime's chain: TensorRT, its EP, CUDA, CPU


def test_gpu_ensemble_with_the_tensorrt_accelerator(tmp_path):
    write_repository(None, tmp_path, RepositoryOptions(kind="gpu", precision="fp16", instances=2))
    cfgs = configs(tmp_path)
    assert sorted(cfgs) == ["clipscan-demo", "clipscan-demo_graph", "clipscan-demo_postprocess",
                            "clipscan-demo_preprocess"]
    pb = model_config_pb2()
    graph = cfgs["clipscan-demo_graph"]
    assert graph.platform == "onnxruntime_onnx" and (tmp_path / "clipscan-demo_graph" / "1" / "model.onnx").is_file()
    acc = graph.optimization.execution_accelerators.gpu_execution_accelerator[0]
    # an FP16 graph carries its precision: TensorRT's FP16 lowering stays off, as in the runtime (test_triton_gpu.py)
    assert acc.name == "tensorrt" and acc.parameters["precision_mode"] == "FP32"
    assert [(g.kind, g.count) for g in graph.instance_group] == [(pb.ModelInstanceGroup.KIND_GPU, 2)]
    assert graph.model_warmup[0].inputs["pixels"].zero_data
    ensemble = cfgs["clipscan-demo"]
    assert ensemble.platform == "ensemble" and [o.name for o in ensemble.output] == CONTRACT
    _check_wiring(ensemble, cfgs)


def _check_wiring(ensemble, cfgs):
    """Every step's inputs exist (the ensemble's input or an earlier step's output) with the dims and type the
    step's model declares; every ensemble output is produced, with the dims the ensemble declares."""
    tensors = {i.name: (i.data_type, list(i.dims)) for i in ensemble.input}
    assert len(ensemble.ensemble_scheduling.step) == 3
    for step in ensemble.ensemble_scheduling.step:
        model = cfgs[step.model_name]
        declared_in = {i.name: (i.data_type, list(i.dims)) for i in model.input}
        assert set(step.input_map) == set(declared_in), step.model_name
        for inner, outer in step.input_map.items():
            assert tensors[outer] == declared_in[inner], (step.model_name, inner)
        declared_out = {o.name: (o.data_type, list(o.dims)) for o in model.output}
        assert set(step.output_map) == set(declared_out), step.model_name
        for inner, outer in step.output_map.items():
            tensors[outer] = declared_out[inner]
        assert model.max_batch_size == ensemble.max_batch_size
    for o in ensemble.output:
        assert tensors[o.name] == (o.data_type, list(o.dims)), o.name


def test_cpu_ensemble_runs_its_graph_in_a_python_model(tmp_path):
    write_repository(None, tmp_path, RepositoryOptions(layout="ensemble", instances=2))
    cfgs = configs(tmp_path)
    graph = cfgs["clipscan-demo_graph"]
    assert graph.backend == "python" and graph.parameters["backend"].string_value == "cpu"
    assert "GraphModel" in (tmp_path / "clipscan-demo_graph" / "1" / "model.py").read_text()
    _check_wiring(cfgs["clipscan-demo"], cfgs)


def test_tensorrt_plan_ensemble_names_a_plan_per_gpu_generation(tmp_path):
    demo = load_artifact(None)
    plans = []
    for cc in ("8.9", "9.0"):
        plan = tmp_path / f"demo-{cc}.plan"
        plan.write_bytes(b"not really a plan")
        key = {"onnx_sha256": demo.sha256(), "precision": "fp16", "profile": {"min": 1, "opt": 8, "max": 16},
               "tensorrt_version": "10.9", "gpu_name": "x", "compute_capability": cc, "cuda_version": "12.8"}
        plan.with_suffix(".json").write_text(json.dumps({"key": key}))
        plans.append(Plan.from_file(plan))
    write_repository(None, tmp_path / "repo", RepositoryOptions(kind="gpu", graph="plan", plans=plans))
    cfgs = configs(tmp_path / "repo")
    graph = cfgs["clipscan-demo_graph"]
    assert graph.platform == "tensorrt_plan" and not graph.HasField("optimization")
    assert dict(graph.cc_model_filenames) == {"8.9": "model_sm89.plan", "9.0": "model_sm90.plan"}
    assert (tmp_path / "repo" / "clipscan-demo_graph" / "1" / "model_sm90.plan").read_bytes() == b"not really a plan"
    _check_wiring(cfgs["clipscan-demo"], cfgs)
    # a plan of another ONNX file, or with a smaller batch profile, is refused
    key["onnx_sha256"] = "0" * 64
    plans[1].path.with_suffix(".json").write_text(json.dumps({"key": key}))
    with pytest.raises(ValueError, match="another ONNX file"):
        write_repository(None, tmp_path / "repo2", RepositoryOptions(kind="gpu", graph="plan",
                                                                     plans=[Plan.from_file(plans[1].path)]))
    assert not (tmp_path / "repo2" / "clipscan-demo").exists()  # nothing half-written
    # two plans for one GPU generation: Triton would load one of them, so the writer refuses both
    key.update(onnx_sha256=demo.sha256(), compute_capability="8.9")
    plans[1].path.with_suffix(".json").write_text(json.dumps({"key": key}))
    with pytest.raises(ValueError, match="two --plan files for compute capability 8.9"):
        write_repository(None, tmp_path / "repo3", RepositoryOptions(kind="gpu", graph="plan",
                                                                     plans=[plans[0], Plan.from_file(plans[1].path)]))
    assert not (tmp_path / "repo3").exists() or not any((tmp_path / "repo3").iterdir())


def test_every_config_roundtrips_through_the_schema(tmp_path):
    """What the writer meant is what Triton reads: no field is lost or renamed on the way."""
    write_repository(None, tmp_path / "a", RepositoryOptions())
    write_repository(None, tmp_path / "b", RepositoryOptions(kind="gpu"))
    for path in sorted(tmp_path.rglob("config.pbtxt")):
        cfg = parse_config(path.read_text())
        again = parse_config(text_format.MessageToString(cfg))
        assert MessageToDict(cfg) == MessageToDict(again) and cfg.name == path.parent.name


def test_ensemble_steps_give_a_local_scans_results():
    """Preprocess -> the graph (ONNX Runtime here, as Triton's onnxruntime backend would run it) -> postprocess
    gives the Scanner's values, and broken files keep their error text."""
    import onnxruntime as ort

    demo = load_artifact(None)
    files = sorted(SAMPLES.iterdir())
    data = [f.read_bytes() for f in files] + [b"not an image", files[0].read_bytes()[:200]]
    prepared = Preparer(demo.manifest).prepare(data)
    session = ort.InferenceSession(str(demo.path), providers=["CPUExecutionProvider"])
    names = [o.name for o in session.get_outputs()]
    graph = dict(zip(names, session.run(None, {demo.manifest.input.name: prepared["pixels"]})))
    out = Finisher(demo.manifest, backend="triton-onnxruntime_onnx").finish(graph, list(prepared["error"]))
    assert set(out) == {s.name for s in output_specs(demo.manifest)}
    with Scanner(backend="cpu") as s:
        local = [s.scan_bytes(d) for d in data]
    for i, r in enumerate(local):
        assert out["error"][i].decode() == (r.error or "")
        if r.ok:
            assert abs(float(out["p_generated"][i]) - r.p_generated) < 1e-5 and out["verdict"][i].decode() == r.verdict
            assert np.allclose(out["embedding"][i], r.embedding, atol=1e-5)
        else:
            assert np.isnan(out["p_generated"][i])
    assert local[-1].error.startswith(("truncated", "corrupt")) and local[-2].error.startswith("not_an_image")


def test_numpy_2_is_refused_unless_allowed(monkeypatch):
    import clipscan.triton.numpy_check as nc

    monkeypatch.setattr(nc.np, "__version__", "2.4.6")
    with pytest.raises(BackendError, match="pybind11 < 2.12"):
        check_numpy(False)
    check_numpy(True)


def test_cli_writes_the_repository_and_refuses_mistakes(tmp_path, capsys):
    assert main(["triton", "--repo", str(tmp_path), "--name", "det", "--max-batch", "4"]) == 0
    assert parse_config((tmp_path / "det" / "config.pbtxt").read_text()).max_batch_size == 4
    cases = [(["--repo", str(tmp_path), "--name", "det"], "already exists for this model with other settings"),
             (["--repo", str(tmp_path), "--layout", "ensemble", "--graph", "onnx"], "use --kind gpu"),
             (["--repo", str(tmp_path), "--name", "a/b"], "is not a model name clipscan can serve"),
             (["--repo", str(tmp_path), "--kind", "gpu", "--graph", "plan", "--name", "p"], "needs at least one --plan"),
             (["--repo", str(tmp_path), "--plan", str(tmp_path / "none.plan")], "does not exist"),
             (["--repo", str(tmp_path / "det" / "config.pbtxt")], "is a file")]
    for args, words in cases:
        capsys.readouterr()
        assert main(["triton", *args]) == 2, args
        err = capsys.readouterr().err
        assert words in err and "Traceback" not in err and len(err.strip().splitlines()) == 1, err
    assert main(["triton", "--repo", str(tmp_path), "--name", "det", "--max-batch", "2", "--overwrite"]) == 0
    assert parse_config((tmp_path / "det" / "config.pbtxt").read_text()).max_batch_size == 2
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temporary folder left


def test_the_same_model_and_options_again_reuse_the_repository(tmp_path, caplog):
    """`clipscan triton` then the same command again (as `--start` on it does): reused, nothing copied, no
    --overwrite needed; another model in that folder still needs --overwrite."""
    import shutil

    from clipscan.export.onnx_writer import rewrite_manifest

    caplog.set_level("INFO", logger="clipscan")
    args = ["triton", "--repo", str(tmp_path / "repo"), "--name", "det"]
    assert main(args) == 0
    onnx = tmp_path / "repo" / "det" / "1" / DEMO_MODEL.name
    before = (onnx.stat().st_ino, onnx.stat().st_mtime_ns)
    caplog.clear()
    assert main(args) == 0
    assert "reused (already written for this model with these settings, nothing copied)" in caplog.text
    assert (onnx.stat().st_ino, onnx.stat().st_mtime_ns) == before  # the same file: not copied again
    assert not [p for p in (tmp_path / "repo").iterdir() if p.name.startswith(".")]
    other = tmp_path / "other.onnx"
    shutil.copy(DEMO_MODEL, other)
    rewrite_manifest(other, dataclasses.replace(load_artifact(other).manifest, name="other"))
    caplog.clear()
    assert main(["triton", str(other), *args[1:]]) == 2
    assert (onnx.stat().st_ino, onnx.stat().st_mtime_ns) == before
    assert main(["triton", str(other), *args[1:], "--overwrite"]) == 0
    assert not onnx.exists() and (tmp_path / "repo" / "det" / "1" / "other.onnx").is_file()


BAD_NAMES = ["abc\n", "a/b", "..", "a b", "", "-x", "x" * 129, "caf\u00e9", "a\x00b", "..\\x"]


@pytest.mark.parametrize("name", BAD_NAMES)
def test_every_command_that_takes_a_model_name_refuses_a_bad_one(tmp_path, capsys, name):
    """triton --name, serve --name and scan --server-model share one rule (Triton's), before anything is
    written, listened on or connected to."""
    from clipscan.runtime.model_name import MODEL_NAME_RULE

    image = tmp_path / "x.png"
    image.write_bytes(b"")
    runs = {"triton": ["triton", "--repo", str(tmp_path / "repo"), f"--name={name}"],
            "serve": ["serve", f"--name={name}", "--port", str(free_closed_port())],
            "scan": ["scan", "--server", "http://127.0.0.1:9", f"--server-model={name}", str(image)]}
    for command, argv in runs.items():
        capsys.readouterr()
        assert main(argv) == 2, (command, name)
        err = capsys.readouterr().err.strip()
        assert err.startswith(f"clipscan {command}: error: ") and f"{name!r} is not a model name" in err, err
        assert MODEL_NAME_RULE in err and len(err.splitlines()) == 1, err
    assert not (tmp_path / "repo").exists()


def test_a_manifest_name_outside_the_rule_is_made_to_fit(tmp_path):
    from clipscan.runtime.model_name import check_model_name, model_name_for

    assert model_name_for("clipscan-demo") == "clipscan-demo"
    assert model_name_for("my model/v2\n") == "my_model_v2_"
    assert model_name_for("_private") == "m_private" and model_name_for("") == "m"
    assert check_model_name("ViT-B.32_det") == "ViT-B.32_det"


@pytest.mark.parametrize("argv, want", [
    (["--cores", "2"], (2, "1", "1", 16, 2000)),                 # one single-threaded instance per core
    (["--cores", "32"], (8, "4", "4", 16, 2000)),                # at most 8 instances; the cores become threads
    (["--cores", "4", "--instances", "1", "--threads", "4", "--workers", "2", "--max-batch", "8",
      "--queue-delay-us", "0"], (1, "4", "2", 8, 0)),            # every knob overridable
    (["--cores", "2", "--instances", "1"], (1, "2", "2", 16, 2000)),  # the cores shared by fewer instances
    (["--kind", "gpu", "--layout", "python", "--cores", "16"], (1, None, None, 16, 2000)),
])
def test_performance_knobs_are_tuned_for_the_host_and_overridable(tmp_path, argv, want):
    assert main(["triton", "--repo", str(tmp_path), *argv]) == 0
    (_, cfg), = configs(tmp_path).items()
    params = {k: v.string_value for k, v in cfg.parameters.items()}
    got = (cfg.instance_group[0].count, params.get("threads"), params.get("workers"), cfg.max_batch_size,
           cfg.dynamic_batching.max_queue_delay_microseconds)
    assert got == want
