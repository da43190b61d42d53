"""The Open Inference Protocol (KServe v2, as Triton implements it over HTTP): server and model metadata,
health, Triton's model-configuration extension, and inference with JSON tensors or the binary tensor data
extension. The tensors are `clipscan.runtime.contract`'s."""
from __future__ import annotations

import math

import numpy as np
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from clipscan.runtime.contract import DATATYPES, INPUT_IMAGE, INPUT_PIXELS, results_to_tensors
from clipscan.runtime.results import model_identity
from clipscan.runtime.v2_wire import (HEADER_LENGTH, WireError, WireTooLarge, decode_message, encode_message,
                                      entry_for)
from clipscan.version import __version__

from .auth import authorized
from .errors import HTTPError

# JSON tensors, or the binary tensor extension (tritonclient sends no content type at all); never a browser
# form's types, which a page of another site may post without asking
V2_CONTENT_TYPES = ("application/json", "application/octet-stream")

EXTENSIONS = ["binary_tensor_data", "model_configuration", "health", "metadata"]
VERSION = "1"


def check_model(state, name: str, version: str | None, may_know: bool):
    """`state` when `name` (and `version`, if given) is the model served, else HTTPError 404; the real name is
    said only to a client that `may_know` it (health requests are answered without the token)."""
    if name != state.model_name:
        raise HTTPError(404, f"unknown model {name!r}" + (f"; this server serves {state.model_name!r}" if may_know
                                                          else ""))
    if version not in (None, "", VERSION):
        raise HTTPError(404, f"unknown version {version!r} of model {name!r}; it has version {VERSION}")
    return state


def _model(request: Request):
    state = request.app.state.service
    known = state.token is None or authorized(request.headers.get("authorization", "").encode("latin-1"), state.token)
    return check_model(state, request.path_params["model"], request.path_params.get("version"), known)


def server_metadata_dict() -> dict:
    return {"name": "clipscan", "version": __version__, "extensions": EXTENSIONS}


async def server_metadata(request: Request):
    return JSONResponse(server_metadata_dict())


async def live(request: Request):
    return JSONResponse({"live": True})


async def ready(request: Request):
    state = request.app.state.service
    return JSONResponse({"ready": state.ready}, status_code=200 if state.ready else 503)


async def model_ready(request: Request):
    state = _model(request)
    return JSONResponse({"name": state.model_name, "ready": state.ready}, status_code=200 if state.ready else 503)


def _tensor(spec) -> dict:
    return {"name": spec.name, "datatype": spec.datatype, "shape": spec.shape(-1)}


def model_metadata_dict(state) -> dict:
    """The model's metadata (the HTTP answer; the gRPC answer is built from it)."""
    return {"name": state.model_name, "versions": [VERSION], "platform": "clipscan_onnx",
            "backend": state.scanner.backend_name, "sha256": state.sha256,
            "inputs": [_tensor(s) for s in state.inputs], "outputs": [_tensor(s) for s in state.outputs]}


async def model_metadata(request: Request):
    return JSONResponse(model_metadata_dict(_model(request)))


def _config_type(datatype: str) -> str:
    return "TYPE_STRING" if datatype == "BYTES" else f"TYPE_{datatype}"


def _config_tensor(spec) -> dict:
    entry = {"name": spec.name, "data_type": _config_type(spec.datatype), "dims": list(spec.dims) or [1]}
    if not spec.dims:
        entry["reshape"] = {"shape": []}
    return entry


def model_config(state) -> dict:
    lim = state.limits
    return {"name": state.model_name, "platform": "clipscan_onnx", "backend": state.scanner.backend_name,
            "max_batch_size": lim.max_images,
            "input": [_config_tensor(s) for s in state.inputs], "output": [_config_tensor(s) for s in state.outputs],
            "dynamic_batching": {"max_queue_delay_microseconds": int(lim.max_delay_ms * 1000),
                                 "preferred_batch_size": [lim.max_batch],
                                 "default_queue_policy": {"max_queue_size": lim.max_queue,
                                                          "default_timeout_microseconds": int(lim.timeout_s * 1e6)}},
            "instance_group": [{"count": 1, "kind": "KIND_CPU" if "CPU" in state.scanner.backend_name.upper()
                                else "KIND_GPU"}],
            "version_policy": {"latest": {"num_versions": 1}},
            # the model's identity in the form `clipscan triton` writes it, so one client reads both servers
            "parameters": {k: {"string_value": str(v)} for k, v in
                           {**model_identity(state.scanner.artifact), "backend": state.scanner.backend_name}.items()}}


async def config(request: Request):
    return JSONResponse(model_config(_model(request)))


def _header_length(request: Request) -> int | None:
    value = request.headers.get(HEADER_LENGTH)
    if value is None:
        return None
    try:
        return int(value)
    except ValueError:
        raise HTTPError(400, f"{HEADER_LENGTH} {value!r} is not an integer") from None


def request_items(state, tensors: dict) -> list[tuple[str, object]]:
    unknown = sorted(set(tensors) - {INPUT_IMAGE, INPUT_PIXELS})
    if unknown:
        raise HTTPError(400, f"unknown input {unknown[0]!r}; inputs are {INPUT_IMAGE!r} (BYTES [N]) or "
                             f"{INPUT_PIXELS!r}")
    if len(tensors) != 1:
        raise HTTPError(400, f"send exactly one input: {INPUT_IMAGE!r} (BYTES [N], encoded image files) or "
                             f"{INPUT_PIXELS!r} (preprocessed)")
    lim = state.limits
    if INPUT_IMAGE in tensors:
        arr = tensors[INPUT_IMAGE]
        if arr.dtype != object or arr.ndim != 1:
            raise HTTPError(400, f"input {INPUT_IMAGE!r} must be BYTES with shape [N], got shape {list(arr.shape)}")
        items = [(f"{INPUT_IMAGE}[{i}]", bytes(e)) for i, e in enumerate(arr)]
    else:
        arr = tensors[INPUT_PIXELS]
        spec = state.inputs[1]
        want = np.dtype(state.scanner.manifest.input.dtype)
        if arr.dtype != want or arr.ndim != 4 or tuple(arr.shape[1:]) != spec.dims:
            got = "BYTES" if arr.dtype == object else DATATYPES.get(arr.dtype.name, arr.dtype.name)
            raise HTTPError(400, f"input {INPUT_PIXELS!r} must be {spec.datatype} with shape "
                                 f"{spec.shape(-1)}, got {got} {list(arr.shape)}")
        if not np.isfinite(arr).all():
            raise HTTPError(400, f"input {INPUT_PIXELS!r} holds NaN or infinite values; send finite pixels")
        items = [(f"{INPUT_PIXELS}[{i}]", arr[i:i + 1]) for i in range(len(arr))]
    if not items:
        raise HTTPError(400, "the request has no images (shape [0])")
    if len(items) > lim.max_images:
        raise HTTPError(413, f"{len(items)} images in one request; the limit is {lim.max_images}")
    return items


def requested_outputs(state, header: dict) -> tuple[list, set[str] | bool]:
    specs = {s.name: s for s in state.outputs}
    asked = header.get("outputs")
    params = header.get("parameters")
    params = {} if params is None else params
    if not isinstance(params, dict):
        raise HTTPError(400, f"the request's 'parameters' must be an object, got {params!r:.40}")
    default_binary = bool(params.get("binary_data_output", False))
    if asked is None:
        return list(specs.values()), default_binary
    if not isinstance(asked, list) or not all(isinstance(o, dict) and isinstance(o.get("name"), str) for o in asked):
        raise HTTPError(400, "'outputs' must be a list of objects with a 'name'")
    names = [o["name"] for o in asked]
    if len(set(names)) != len(names):
        raise HTTPError(400, f"'outputs' names an output more than once; ask for each of {sorted(specs)} once")
    chosen, binary = [], set()
    for o in asked:
        if o["name"] not in specs:
            raise HTTPError(400, f"unknown output {o['name']!r}; outputs are {sorted(specs)}")
        chosen.append(specs[o["name"]])
        params = o.get("parameters")
        params = {} if params is None else params
        if not isinstance(params, dict):
            raise HTTPError(400, f"output {o['name']!r}: 'parameters' must be an object, got {params!r:.40}")
        if params.get("binary_data", default_binary):
            binary.add(o["name"])
    return chosen, binary


def max_elements(state) -> int:
    """The most elements one input tensor of an acceptable request holds: max_images images of the largest
    per-image input (pixels: C*H*W values)."""
    return state.limits.max_images * max(math.prod(s.dims) for s in state.inputs)


async def infer(request: Request):
    state = _model(request)
    lim = state.limits
    ctype = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if ctype and ctype not in V2_CONTENT_TYPES:
        raise HTTPError(415, f"content type {ctype!r} is not accepted here; send JSON (application/json) or the "
                             "binary tensor extension (application/octet-stream)")
    header_length = _header_length(request)
    body = await request.body()
    json_length = len(body) if header_length is None else header_length
    if json_length > lim.max_json_bytes:
        raise HTTPError(413, f"the JSON part of the request is {json_length} bytes, over the limit of "
                             f"{lim.max_json_bytes}; send tensors through the binary tensor extension")
    try:
        # off the event loop: other clients (health probes too) are answered while a body is decoded
        header, tensors = await run_in_threadpool(decode_message, body, header_length, "inputs", max_elements(state))
    except WireTooLarge as e:
        raise HTTPError(413, f"{e}; one request holds at most {lim.max_images} images") from None
    except WireError as e:
        raise HTTPError(400, str(e)) from None
    items = request_items(state, tensors)
    chosen, binary = requested_outputs(state, header)
    results = await state.scan(items)
    out = results_to_tensors(results, chosen)
    reply = {"model_name": state.model_name, "model_version": VERSION}
    if "id" in header:
        reply["id"] = header["id"]
    body, length = encode_message(reply, "outputs", [(entry_for(s.name, out[s.name], s.datatype), out[s.name])
                                                     for s in chosen], binary)
    if length is None:
        return Response(body, media_type="application/json")
    return Response(body, media_type="application/octet-stream", headers={HEADER_LENGTH: str(length)})
