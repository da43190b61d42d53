"""The Open Inference Protocol (KServe v2, as Triton implements it over HTTP): server and model metadata,
health, Triton's model-configuration extension, and inference with JSON tensors or the binary tensor data
extension. The tensors are `clipscan.runtime.contract`'s."""
from __future__ import annotations

import json

import numpy as np
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from clipscan.runtime.contract import (DATATYPES, INPUT_IMAGE, INPUT_PIXELS, config_tensor, model_metadata as
                                       contract_metadata, on_the_wire, results_to_tensors)
from clipscan.runtime.errors import ImageReadError
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
    """(the service, the model's name, its inputs) when `name` (and `version`, if given) is a model served,
    else HTTPError 404; the served names are said only to a client that `may_know` them (health requests are
    answered without the token)."""
    if name not in state.models:
        raise HTTPError(404, f"unknown model {name!r}" + (f"; this server serves {list(state.models)}" if may_know
                                                          else ""))
    if version not in (None, "", VERSION):
        raise HTTPError(404, f"unknown version {version!r} of model {name!r}; it has version {VERSION}")
    return state, name, state.models[name]


def _served(request: Request):
    """check_model for the model the path names."""
    state = request.app.state.service
    known = state.token is None or authorized(request.headers.get("authorization", "").encode("latin-1"), state.token)
    return check_model(state, request.path_params["model"], request.path_params.get("version"), known)


def _model(request: Request):
    return _served(request)[0]


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
    state, name, _ = _served(request)
    return JSONResponse({"name": name, "ready": state.ready}, status_code=200 if state.ready else 503)


PLATFORM = "clipscan_onnx"
# what this service's metadata has beyond Triton's (name, versions, platform, inputs, outputs)
METADATA_EXTRAS = ("backend", "sha256")


def model_metadata_dict(state, name: str, inputs) -> dict:
    """The metadata of model `name` (the HTTP answer; the gRPC answer is built from it)."""
    meta = contract_metadata(name, PLATFORM, inputs, state.outputs, VERSION)
    return {**meta, "backend": state.scanner.backend_name, "sha256": state.sha256}


async def repository_index(request: Request):
    """Triton's `POST /v2/repository/index` (the model repository extension's listing; loading and unloading
    are not offered): the models served (`<name>` and `<name>_pixels`), so that a client finds its model
    without being told the name. A JSON body {"ready": true} lists only ready models, as Triton does; an
    empty body is accepted."""
    state = request.app.state.service
    body = await request.body()
    try:
        asked = json.loads(body) if body.strip() else {}
    except (ValueError, RecursionError):
        raise HTTPError(400, "the body of /v2/repository/index must be a JSON object such as {} or "
                             '{"ready": true}') from None
    if not isinstance(asked, dict):
        raise HTTPError(400, f"the body of /v2/repository/index must be a JSON object, got {type(asked).__name__}")
    if asked.get("ready") is True and not state.ready:
        return JSONResponse([])
    return JSONResponse([{"name": name, "version": VERSION, "state": "READY" if state.ready else "UNAVAILABLE"}
                         for name in state.models])


async def model_metadata(request: Request):
    return JSONResponse(model_metadata_dict(*_served(request)))


def model_config(state, name: str | None = None) -> dict:
    """Triton's model configuration of model `name` (default: the one that takes images): the tensors'
    entries as Triton's `/config` prints them (runtime.contract.config_tensor)."""
    name = state.model_name if name is None else name
    lim = state.limits
    return {"name": name, "platform": PLATFORM, "backend": state.scanner.backend_name,
            "max_batch_size": lim.max_images,
            "input": [config_tensor(s) for s in state.models[name]],
            "output": [config_tensor(s, output=True) for s in state.outputs],
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
    state, name, _ = _served(request)
    return JSONResponse(model_config(state, name))


def _header_length(request: Request) -> int | None:
    value = request.headers.get(HEADER_LENGTH)
    if value is None:
        return None
    try:
        return int(value)
    except ValueError:
        raise HTTPError(400, f"{HEADER_LENGTH} {value!r} is not an integer") from None


def request_items(state, inputs, tensors: dict) -> list[tuple[str, object]]:
    """(name, encoded bytes or one preprocessed row) per image of a request to the model with `inputs`."""
    spec = inputs[0]
    unknown = sorted(set(tensors) - {spec.name})
    if unknown:
        other = {INPUT_IMAGE: INPUT_PIXELS, INPUT_PIXELS: INPUT_IMAGE}[spec.name]
        where = next((n for n, specs in state.models.items() if specs[0].name == other), None)
        hint = f"; input {other!r} goes to model {where!r}" if unknown[0] == other and where else ""
        raise HTTPError(400, f"unknown input {unknown[0]!r}; this model's input is {spec.name!r} ({spec.datatype} "
                             f"{spec.shape(-1)}){hint}")
    if spec.name not in tensors:
        raise HTTPError(400, f"the request has no input {spec.name!r} ({spec.datatype} {spec.shape(-1)})")
    lim = state.limits
    arr = tensors[spec.name]
    if spec.name == INPUT_IMAGE:
        # [N, 1] as the metadata says; [N] (what earlier releases declared) is taken too
        if arr.dtype != object or not (arr.ndim == 1 or arr.ndim == 2 and arr.shape[1] == 1):
            raise HTTPError(400, f"input {INPUT_IMAGE!r} must be BYTES with shape {spec.shape(-1)}, got shape "
                                 f"{list(arr.shape)}")
        items = [(f"{INPUT_IMAGE}[{i}]", bytes(e)) for i, e in enumerate(arr.reshape(-1))]
    else:
        want = np.dtype(state.scanner.manifest.input.dtype)
        if arr.dtype != want or arr.ndim != 4 or not spec.fits(arr.shape[1:]):
            got = "BYTES" if arr.dtype == object else DATATYPES.get(arr.dtype.name, arr.dtype.name)
            raise HTTPError(400, f"input {INPUT_PIXELS!r} must be {spec.datatype} with shape "
                                 f"{spec.shape(-1)}, got {got} {list(arr.shape)}")
        own = state.scanner.manifest.input.own_size
        if own is not None:     # each image at its own size: one request's images share it, within the bounds
            try:
                state.scanner.preprocessor.check_own_size(arr.shape[3], arr.shape[2])
            except ImageReadError as e:
                raise HTTPError(400, f"input {INPUT_PIXELS!r} of shape {list(arr.shape)}: {e}") from None
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
    per-image input of the served models (pixels: C*H*W values; a tensor sent to the wrong model is then
    refused with a sentence that names the right one)."""
    return state.limits.max_images * max(s.elements for specs in state.models.values() for s in specs)


async def infer(request: Request):
    state, name, inputs = _served(request)
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
    items = request_items(state, inputs, tensors)
    chosen, binary = requested_outputs(state, header)
    results = await state.scan(items)
    tensors = results_to_tensors(results, chosen)
    out = {s.name: on_the_wire(tensors[s.name], s) for s in chosen}
    reply = {"model_name": name, "model_version": VERSION}
    if "id" in header:
        reply["id"] = header["id"]
    body, length = encode_message(reply, "outputs", [(entry_for(s.name, out[s.name], s.datatype), out[s.name])
                                                     for s in chosen], binary)
    if length is None:
        return Response(body, media_type="application/json")
    return Response(body, media_type="application/octet-stream", headers={HEADER_LENGTH: str(length)})
