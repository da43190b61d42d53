"""Import the build-time dependencies of the export stage, with a clear message when missing."""
from __future__ import annotations

import importlib

from clipscan.runtime.errors import CheckpointError, MissingExtraError


def require(module: str, feature: str = "clipscan export", extra: str = "export"):
    try:
        return importlib.import_module(module)
    except ImportError as e:
        raise MissingExtraError(feature, module.split(".")[0], extra) from e


def not_a_checkpoint(path, what: str, error: Exception) -> CheckpointError:
    """The error for a file torch cannot load as `what` (a JSON or text file, a truncated download...)."""
    detail = str(error).splitlines()[0] if str(error) else ""
    detail = f": {detail}" if detail and len(detail) < 160 else ""
    return CheckpointError(f"{path} is not a {what} PyTorch can load ({type(error).__name__}{detail}); pass the "
                           ".pt/.pth/.bin/.safetensors file it was saved as")


def load_torch_file(path, what: str):
    """torch.load a local file (weights only, onto the CPU); a file that is not one is a CheckpointError."""
    torch = require("torch")
    try:
        return torch.load(str(path), map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise
    except Exception as e:
        raise not_a_checkpoint(path, what, e) from None
