"""Backend choice: explicit names, unknown names, and what `clipscan backends` reports."""
from __future__ import annotations

import pytest

from clipscan.cli import main
from clipscan.runtime import BackendError, Scanner
from clipscan.runtime.backends import backend_status


def test_cpu_backend_is_available_and_named_in_results():
    assert ("cpu", "ONNX Runtime, CPUExecutionProvider", None) in backend_status()
    with Scanner(backend="cpu") as scanner:
        assert scanner.backend_name == "onnxruntime-cpu"
        assert scanner.backend.session.get_providers() == ["CPUExecutionProvider"]


def test_unknown_backend_lists_what_exists(capsys):
    with pytest.raises(BackendError, match=r"unknown backend 'tensorrt-x'; known backends: \['auto', 'cpu'\]"):
        Scanner(backend="tensorrt-x")
    assert main(["scan", "--backend", "nope", "samples"]) == 2
    assert "clipscan backends" in capsys.readouterr().err


def test_backends_command(capsys):
    assert main(["backends"]) == 0
    out = capsys.readouterr().out
    assert "auto tries, in order: cpu" in out and "available" in out
