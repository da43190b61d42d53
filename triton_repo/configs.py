"""The config.pbtxt of each model `clipscan triton` writes, as dicts (pbtxt.to_pbtxt writes them).

Field names and enums are those of Triton's model_config.proto. The models clients call carry the tensor
contract as runtime.contract states it (TensorSpec.config_dims: a per-image value has dims [1], no reshape, so
on the wire `image` is [N, 1] and `p_generated` [N, 1], as `clipscan serve` declares them too); only a graph
model whose ONNX outputs are [N] gets `reshape: { shape: [] }`.
"""
from __future__ import annotations

from clipscan.runtime.backends.engine_cache import BatchProfile
from clipscan.runtime.backends.ort_gpu import tensorrt_ep_precision
from clipscan.runtime.contract import INPUT_IMAGE, TensorSpec

from .pbtxt import Enum, Map

TRITON_TYPES = {"BOOL": "TYPE_BOOL", "UINT8": "TYPE_UINT8", "UINT16": "TYPE_UINT16", "UINT32": "TYPE_UINT32",
                "UINT64": "TYPE_UINT64", "INT8": "TYPE_INT8", "INT16": "TYPE_INT16", "INT32": "TYPE_INT32",
                "INT64": "TYPE_INT64", "FP16": "TYPE_FP16", "FP32": "TYPE_FP32", "FP64": "TYPE_FP64",
                "BYTES": "TYPE_STRING"}
ORT_TYPES = {"tensor(float)": "FP32", "tensor(float16)": "FP16", "tensor(double)": "FP64", "tensor(uint8)": "UINT8",
             "tensor(int8)": "INT8", "tensor(int32)": "INT32", "tensor(int64)": "INT64", "tensor(bool)": "BOOL"}
WARMUP_IMAGE = "image"   # <model>/warmup/image: one BYTES element (4-byte little-endian length, then a JPEG)
# where the ONNX Runtime TensorRT accelerator keeps its engines and timing cache on the Triton host (one
# folder per model): an instance, a smaller batch and a restart reuse the engine instead of rebuilding it
TRT_CACHE_ROOT = "/tmp/clipscan-ort-trt"


def trt_precision_mode(precision: str) -> str:
    """The accelerator's precision_mode, from the runtime's own TensorRT EP switches (one policy for both):
    FP16 artifacts carry their precision in the graph and run with precision_mode FP32."""
    flags = tensorrt_ep_precision(precision)
    return "INT8" if flags["trt_int8_enable"] else "FP16" if flags["trt_fp16_enable"] else "FP32"


def trt_accelerator(name: str, inputs: list[tuple[TensorSpec, list[int]]], precision: str, max_batch: int) -> dict:
    """The TensorRT accelerator of an onnxruntime_onnx model: precision as the runtime's, an explicit batch profile
    (1 .. max_batch, optimised for max_batch, which the dynamic batcher fills) and a persistent engine cache."""
    profile = BatchProfile.for_batch_size(max_batch)
    shapes = {k: ",".join(f"{s.name}:" + "x".join(str(d) for d in (n, *dims)) for s, dims in inputs)
              for k, n in (("min", profile.min), ("opt", profile.opt), ("max", profile.max))}
    cache = f"{TRT_CACHE_ROOT}/{name}"
    return {"name": "tensorrt", "parameters": Map({
        "precision_mode": trt_precision_mode(precision), "max_workspace_size_bytes": str(2 << 30),
        "trt_engine_cache_enable": "true", "trt_engine_cache_path": cache,
        "trt_timing_cache_enable": "true", "trt_timing_cache_path": cache,
        "trt_profile_min_shapes": shapes["min"], "trt_profile_opt_shapes": shapes["opt"],
        "trt_profile_max_shapes": shapes["max"]})}


def tensor(spec: TensorSpec, *, graph_dims: list[int] | None = None) -> dict:
    """A config input/output entry; a per-image scalar gets dims [1] (reshaped to [] for a graph that has [N])."""
    dims = spec.config_dims if graph_dims is None else list(graph_dims) or [1]
    entry = {"name": spec.name, "data_type": Enum(TRITON_TYPES[spec.datatype]), "dims": dims}
    if graph_dims is not None and not graph_dims:
        entry["reshape"] = {"shape": []}
    return entry


def string_parameters(values: dict) -> Map:
    return Map({k: {"string_value": str(v)} for k, v in values.items() if v is not None})


def batching(max_batch: int, queue_delay_us: int) -> dict:
    return {"max_batch_size": max_batch, "dynamic_batching": {"max_queue_delay_microseconds": queue_delay_us}}


def instances(kind: str, count: int) -> list[dict]:
    return [{"kind": Enum("KIND_GPU" if kind == "gpu" else "KIND_CPU"), "count": count}]


def image_warmup() -> list[dict]:
    """One warm-up request of one real image (decoding, preprocessing and the backend all start)."""
    return [{"name": "one_image", "batch_size": 1, "count": 1,
             "inputs": Map({INPUT_IMAGE: {"data_type": Enum("TYPE_STRING"), "dims": [1],
                                          "input_data_file": WARMUP_IMAGE}})}]


def python_model(name: str, outputs: list[TensorSpec], *, max_batch: int, queue_delay_us: int, kind: str,
                 count: int, params: dict, inputs: list[TensorSpec] | None = None, warmup: bool = True) -> dict:
    image = TensorSpec(INPUT_IMAGE, "BYTES", ())
    return {"name": name, "backend": "python", **batching(max_batch, queue_delay_us),
            "input": [tensor(s) for s in (inputs or [image])], "output": [tensor(s) for s in outputs],
            "instance_group": instances(kind, count), "parameters": string_parameters(params),
            "model_warmup": image_warmup() if warmup else None}


def graph_model(name: str, inputs: list[tuple[TensorSpec, list[int]]], outputs: list[tuple[TensorSpec, list[int]]],
                *, platform: str, max_batch: int, queue_delay_us: int, count: int, precision: str | None = None,
                cc_model_filenames: dict[str, str] | None = None, params: dict | None = None,
                extra_outputs: list[tuple[TensorSpec, list[int]]] | None = None) -> dict:
    """The artifact's graph on the GPU: `onnxruntime_onnx` with the TensorRT accelerator (at `precision`), or a
    `tensorrt_plan` with one plan per GPU generation (cc_model_filenames: compute capability -> file).
    extra_outputs: graph outputs the ensemble does not use, declared all the same (a plan's config lists every
    output its engine has)."""
    config = {"name": name, "platform": platform, **batching(max_batch, queue_delay_us),
              "input": [tensor(s, graph_dims=d) for s, d in inputs],
              "output": [tensor(s, graph_dims=d) for s, d in [*outputs, *(extra_outputs or [])]],
              "instance_group": instances("gpu", count)}
    if platform == "onnxruntime_onnx":
        config["default_model_filename"] = "model.onnx"
        config["optimization"] = {"execution_accelerators": {"gpu_execution_accelerator": [
            trt_accelerator(name, inputs, precision or "fp32", max_batch)]}}
    else:
        plans = dict(cc_model_filenames or {})
        # read where the GPU's compute capability has no entry: that plan then fails with TensorRT's own message
        config["default_model_filename"] = plans[max(plans, key=lambda cc: tuple(map(int, cc.split("."))))] \
            if plans else "model.plan"
        config["cc_model_filenames"] = Map(plans)
    config["model_warmup"] = [{"name": "zeros", "batch_size": max_batch, "count": 1,
                               "inputs": Map({s.name: {"data_type": Enum(TRITON_TYPES[s.datatype]),
                                                       "dims": list(d) or [1], "zero_data": True}
                                              for s, d in inputs})}]
    if params:
        config["parameters"] = string_parameters(params)
    return config


def ensemble(name: str, outputs: list[TensorSpec], steps: list[dict], *, max_batch: int, params: dict) -> dict:
    """The ensemble that exposes the contract: `steps` as [{model_name, input_map, output_map}] in order."""
    image = TensorSpec(INPUT_IMAGE, "BYTES", ())
    return {"name": name, "platform": "ensemble", "max_batch_size": max_batch, "input": [tensor(image)],
            "output": [tensor(s) for s in outputs],
            "ensemble_scheduling": {"step": [{"model_name": s["model_name"], "model_version": -1,
                                              "input_map": Map(s["input_map"]), "output_map": Map(s["output_map"])}
                                             for s in steps]},
            "parameters": string_parameters(params)}
