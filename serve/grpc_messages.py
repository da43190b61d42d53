"""The Open Inference Protocol's gRPC messages (KServe v2 `inference.GRPCInferenceService`, with Triton's model
configuration) and their conversion to and from the tensors of `clipscan.runtime.contract`.

The message classes come from grpc_service_pb2 and model_config_pb2, written by tools/gen_grpc.py from the
committed .proto files into a descriptor pool of their own. Tensors travel as Triton's clients send them:
`raw_input_contents` / `raw_output_contents` in the binary tensor extension's layout, or the typed
`contents` fields; a malformed tensor is a WireError, as over HTTP."""
from __future__ import annotations

import numpy as np
from google.protobuf import json_format

from clipscan.runtime.v2_wire import WireError, tensor_bytes, tensor_from_entry

from . import grpc_service_pb2 as pb
from . import model_config_pb2 as mc

SERVICE = "inference.GRPCInferenceService"

# datatype -> the InferTensorContents field that holds it when a client sends typed contents (FP16 and BF16
# have none: they travel as raw contents only)
CONTENTS = {"BOOL": "bool_contents", "INT8": "int_contents", "INT16": "int_contents", "INT32": "int_contents",
            "INT64": "int64_contents", "UINT8": "uint_contents", "UINT16": "uint_contents",
            "UINT32": "uint_contents", "UINT64": "uint64_contents", "FP32": "fp32_contents",
            "FP64": "fp64_contents", "BYTES": "bytes_contents"}


def input_tensors(request: pb.ModelInferRequest, max_elements: int | None = None) -> dict[str, np.ndarray]:
    """{name: array} of a ModelInferRequest's inputs; a shape of more than `max_elements` elements is refused
    (WireTooLarge) before its data is read."""
    raw = request.raw_input_contents
    if raw and len(raw) != len(request.inputs):
        raise WireError(f"the request has {len(request.inputs)} inputs but {len(raw)} raw_input_contents; send "
                        "one raw entry per input, in order, or the typed contents of each")
    tensors: dict[str, np.ndarray] = {}
    for i, t in enumerate(request.inputs):
        if t.name in tensors:
            raise WireError(f"tensor {t.name!r} appears more than once in 'inputs'")
        entry = {"name": t.name, "datatype": t.datatype, "shape": list(t.shape)}
        if raw:
            tensors[t.name] = tensor_from_entry(entry, memoryview(raw[i]), max_elements)
            continue
        field = CONTENTS.get(t.datatype)
        if field is None and t.datatype:
            raise WireError(f"tensor {t.name!r} has datatype {t.datatype!r}, which has no typed contents field; "
                            "send it in raw_input_contents")
        entry["data"] = list(getattr(t.contents, field)) if field else []
        tensors[t.name] = tensor_from_entry(entry, None, max_elements)
    return tensors


def infer_response(model_name: str, version: str, request_id: str, tensors: list[tuple[str, str, np.ndarray]]
                   ) -> pb.ModelInferResponse:
    """A ModelInferResponse with `tensors` ((name, datatype, array)) as raw output contents, as Triton answers."""
    response = pb.ModelInferResponse(model_name=model_name, model_version=version, id=request_id)
    for name, datatype, arr in tensors:
        response.outputs.add(name=name, datatype=datatype, shape=list(arr.shape))
        response.raw_output_contents.append(tensor_bytes(arr, datatype))
    return response


def model_metadata(meta: dict) -> pb.ModelMetadataResponse:
    """The gRPC model metadata from the HTTP one (routes_v2.model_metadata_dict): the fields the message has."""
    def tensors(entries):
        return [pb.ModelMetadataResponse.TensorMetadata(name=t["name"], datatype=t["datatype"], shape=t["shape"])
                for t in entries]
    return pb.ModelMetadataResponse(name=meta["name"], versions=meta["versions"], platform=meta["platform"],
                                    inputs=tensors(meta["inputs"]), outputs=tensors(meta["outputs"]))


def model_config(config: dict) -> pb.ModelConfigResponse:
    """The gRPC model configuration from the HTTP one (routes_v2.model_config): every field, checked against
    Triton's schema (a field the schema does not have is a bug here, not something to drop)."""
    return pb.ModelConfigResponse(config=json_format.ParseDict(config, mc.ModelConfig()))


def server_metadata(meta: dict) -> pb.ServerMetadataResponse:
    return pb.ServerMetadataResponse(name=meta["name"], version=meta["version"], extensions=meta["extensions"])
