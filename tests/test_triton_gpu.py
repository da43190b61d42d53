"""Triton's GPU graph configs, parsed with Triton's own schema: the TensorRT accelerator of onnxruntime_onnx
(precision as the runtime's, an explicit batch profile, a persistent engine cache) and tensorrt_plan models
(every graph output declared, a default model file, plans of one TensorRT version)."""
from __future__ import annotations

import json

import pytest

from clipscan.runtime.artifact import load_artifact
from clipscan.runtime.backends.ort_gpu import tensorrt_ep_precision
from clipscan.triton import Plan, RepositoryOptions, write_repository
from clipscan.triton.configs import TRT_CACHE_ROOT

from .triton_helpers import parse_config


def graph_config(repo):
    return parse_config((repo / "clipscan-demo_graph" / "config.pbtxt").read_text())


@pytest.mark.parametrize("precision,mode", [("fp32", "FP32"), ("fp16", "FP32"), ("int8", "INT8")])
def test_the_tensorrt_accelerator_follows_the_runtimes_precision_policy(precision, mode, tmp_path):
    write_repository(None, tmp_path, RepositoryOptions(kind="gpu", precision=precision, max_batch=32))
    graph = graph_config(tmp_path)
    acc = graph.optimization.execution_accelerators.gpu_execution_accelerator[0]
    params = dict(acc.parameters)
    # the runtime never switches TensorRT's FP16 on (an FP16 graph keeps some layers in FP32); neither does Triton
    assert params["precision_mode"] == mode
    assert (mode == "FP16") == tensorrt_ep_precision(precision)["trt_fp16_enable"]
    assert (mode == "INT8") == tensorrt_ep_precision(precision)["trt_int8_enable"]
    assert params["trt_profile_min_shapes"] == "pixels:1x3x224x224"
    assert params["trt_profile_opt_shapes"] == params["trt_profile_max_shapes"] == "pixels:32x3x224x224"
    assert params["trt_engine_cache_enable"] == "true" == params["trt_timing_cache_enable"]
    assert params["trt_engine_cache_path"] == f"{TRT_CACHE_ROOT}/clipscan-demo_graph" == params["trt_timing_cache_path"]
    assert graph.default_model_filename == "model.onnx"
    assert (tmp_path / "clipscan-demo_graph" / "1" / graph.default_model_filename).is_file()


def _with_an_extra_output(tmp_path):
    """The demo artifact with one more graph output that its manifest does not name."""
    import onnx

    model = onnx.load(str(load_artifact(None).path))
    model.graph.node.append(onnx.helper.make_node("Identity", ["embedding"], ["embedding_raw"]))
    embedding = next(o for o in model.graph.output if o.name == "embedding")
    extra = onnx.ValueInfoProto()
    extra.CopyFrom(embedding)
    extra.name = "embedding_raw"
    model.graph.output.append(extra)
    path = tmp_path / "demo_extra.onnx"
    onnx.save(model, str(path))
    return load_artifact(path)


def _plans(tmp_path, artifact, versions):
    plans = []
    for cc, version in zip(("8.9", "9.0"), versions):
        plan = tmp_path / f"demo-{cc}.plan"
        plan.write_bytes(b"a plan")
        key = {"onnx_sha256": artifact.sha256(), "precision": "fp32", "profile": {"min": 1, "opt": 8, "max": 16},
               "tensorrt_version": version, "gpu_name": "x", "compute_capability": cc, "cuda_version": "13"}
        plan.with_suffix(".json").write_text(json.dumps({"key": key}))
        plans.append(Plan.from_file(plan))
    return plans


def test_a_plan_config_declares_every_graph_output(tmp_path):
    artifact = _with_an_extra_output(tmp_path)
    plans = _plans(tmp_path, artifact, ("10.13.3", "10.13.3"))
    write_repository(artifact.path, tmp_path / "repo", RepositoryOptions(kind="gpu", graph="plan", plans=plans,
                                                                         name="clipscan-demo", max_batch=16))
    graph = graph_config(tmp_path / "repo")
    assert graph.platform == "tensorrt_plan"
    assert [o.name for o in graph.output] == ["p_generated", "logit_generated", "quality", "embedding",
                                              "embedding_raw"]
    assert graph.default_model_filename == "model_sm90.plan" and dict(graph.cc_model_filenames) == {
        "8.9": "model_sm89.plan", "9.0": "model_sm90.plan"}
    ensemble = parse_config((tmp_path / "repo" / "clipscan-demo" / "config.pbtxt").read_text())
    graph_step = next(s for s in ensemble.ensemble_scheduling.step if s.model_name == "clipscan-demo_graph")
    assert "embedding_raw" not in graph_step.output_map, "declared for TensorRT, unused by the ensemble"


def test_plans_of_two_tensorrt_versions_make_no_repository(tmp_path):
    artifact = load_artifact(None)
    plans = _plans(tmp_path, artifact, ("10.13.3", "11.4.0"))
    with pytest.raises(ValueError, match="come from TensorRT 10.13.3 and 11.4.0"):
        write_repository(None, tmp_path / "repo", RepositoryOptions(kind="gpu", graph="plan", plans=plans))
