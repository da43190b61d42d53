"""Errors of the export stage; defined with the rest of the hierarchy in clipscan.runtime.errors."""
from __future__ import annotations

from clipscan.runtime.errors import ExportCheckError

__all__ = ["ExportCheckError"]
