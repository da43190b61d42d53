"""Errors of the export stage."""
from __future__ import annotations


class ExportCheckError(RuntimeError):
    """The written graph does not reproduce the PyTorch model (the file is removed)."""
