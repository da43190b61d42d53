"""Shared by the Triton tests: Triton's own config schema, and the bundled tritonserver (or why it is missing)."""
from __future__ import annotations

import importlib.util
import os
from pathlib import Path

import pytest


def model_config_pb2():
    """tritonclient's copy of Triton's model_config.proto, loaded from its file (works with only the [http]
    extra installed, where `import tritonclient.grpc` refuses)."""
    spec = importlib.util.find_spec("tritonclient")
    if spec is None:
        pytest.fail("tritonclient is not installed: it is in clipscan's [test] extra (pip install -e '.[test]')")
    path = Path(next(iter(spec.submodule_search_locations))) / "grpc" / "model_config_pb2.py"
    module_spec = importlib.util.spec_from_file_location("triton_model_config_pb2", path)
    module = importlib.util.module_from_spec(module_spec)
    module_spec.loader.exec_module(module)
    return module


def parse_config(text: str):
    """The ModelConfig message of a config.pbtxt; unknown fields and wrong types raise ParseError."""
    from google.protobuf import text_format

    return text_format.Parse(text, model_config_pb2().ModelConfig())


def need_tritonserver():
    """The bundled tritonserver; a missing one skips the test here, and fails it in CI (CI=true)."""
    from clipscan.runtime.errors import ClipscanError
    from clipscan.triton.launch import bundled_tritonserver

    try:
        return bundled_tritonserver()
    except ClipscanError as e:
        if os.environ.get("CI", "").lower() in ("1", "true", "yes"):
            pytest.fail(f"CI needs a real tritonserver: {e}")
        pytest.skip(f"no tritonserver here: {e}")


def free_closed_port() -> int:
    """A loopback port nothing listens on."""
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def perf_analyzer_tool():
    """tools/perf_analyzer.py as a module, its provision() failing the calling test loudly: the step that failed
    (pip download, pip install --target, apt-get download) and how to do it by hand; never a skip."""
    import importlib.util as iu
    import sys

    path = Path(__file__).resolve().parent.parent / "tools" / "perf_analyzer.py"
    spec = iu.spec_from_file_location("clipscan_tools_perf_analyzer", path)
    module = iu.module_from_spec(spec)
    sys.modules[spec.name] = module  # its dataclasses look their module up there
    spec.loader.exec_module(module)
    provision = module.provision

    def provision_or_fail(cache=None):
        try:
            return provision(cache)
        except module.ProvisionError as e:
            pytest.fail(f"perf_analyzer could not be provisioned: {e}")

    module.provision = provision_or_fail
    return module
