"""The committed gRPC message modules (serve/*_pb2.py) are what tools/gen_grpc.py writes from the committed
.proto files, the protobuf runtime loads them beside another copy of the same protos (tritonclient's), and
both copies read each other's messages."""
from __future__ import annotations

import ast
import importlib.metadata
import importlib.util

import numpy as np

from .conftest import REPO


def _gen_grpc():
    spec = importlib.util.spec_from_file_location("gen_grpc", REPO / "tools" / "gen_grpc.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _serialized_descriptor(text: str) -> bytes:
    """The FileDescriptorProto a generated module adds to its pool (the bytes literal of AddSerializedFile)."""
    calls = [n for n in ast.walk(ast.parse(text)) if isinstance(n, ast.Call)
             and getattr(n.func, "attr", "") == "AddSerializedFile"]
    assert len(calls) == 1
    return calls[0].args[0].value


def test_the_committed_modules_are_what_protoc_writes_from_the_committed_protos():
    gen = _gen_grpc()
    fresh = gen.generate()
    assert sorted(fresh) == ["grpc_service_pb2.py", "model_config_pb2.py"]
    for name, text in fresh.items():
        committed = (REPO / "serve" / name).read_text(encoding="utf-8")
        assert _serialized_descriptor(committed) == _serialized_descriptor(text), (
            f"serve/{name} does not hold the descriptor of its .proto; run `python tools/gen_grpc.py`")
        if f"grpcio-tools {importlib.metadata.version('grpcio-tools')} " in committed.splitlines()[0]:
            assert committed == text, f"serve/{name} differs from what tools/gen_grpc.py writes; run it"


def test_the_modules_load_beside_tritonclients_copy_and_read_its_messages():
    from tritonclient.grpc import model_config_pb2 as theirs_config
    from tritonclient.grpc import service_pb2 as theirs

    from clipscan.serve import grpc_service_pb2 as ours
    from clipscan.serve import model_config_pb2 as ours_config

    # the same protos in two pools: Triton's copy in protobuf's default pool, clipscan's in its own
    assert ours.DESCRIPTOR.pool is ours_config.POOL and theirs.DESCRIPTOR.pool is not ours_config.POOL
    assert [m.name for m in ours.DESCRIPTOR.services_by_name["GRPCInferenceService"].methods] == \
        [m.name for m in theirs.DESCRIPTOR.services_by_name["GRPCInferenceService"].methods]
    sent = theirs.ModelInferRequest(model_name="m", id="7", raw_input_contents=[np.arange(3, dtype="<f4").tobytes()])
    sent.inputs.add(name="pixels", datatype="FP32", shape=[1, 3])
    got = ours.ModelInferRequest.FromString(sent.SerializeToString())
    assert (got.model_name, got.id, list(got.inputs[0].shape), got.raw_input_contents[0]) == \
        ("m", "7", [1, 3], sent.raw_input_contents[0])
    config = ours_config.ModelConfig(name="m", max_batch_size=8)
    config.input.add(name="image", data_type=ours_config.TYPE_STRING, dims=[1])
    assert theirs_config.ModelConfig.FromString(config.SerializeToString()).input[0].data_type == \
        theirs_config.TYPE_STRING
