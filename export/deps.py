"""Import the build-time dependencies of the export stage, with a clear message when missing."""
from __future__ import annotations

import importlib

from clipscan.runtime.errors import MissingExtraError


def require(module: str, feature: str = "clipscan export", extra: str = "export"):
    try:
        return importlib.import_module(module)
    except ImportError as e:
        raise MissingExtraError(feature, module.split(".")[0], extra) from e
