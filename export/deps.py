"""Import the build-time dependencies of the export stage, with a clear message when missing, and read
weight files (the one place in clipscan that opens a checkpoint)."""
from __future__ import annotations

import importlib
import pickle
import re
from pathlib import Path

from clipscan.runtime.errors import CheckpointError, MissingExtraError, UnsafeFileError

# torch.load(weights_only=True) is safe to rely on from 2.6: an explicit weights_only=True is then never
# overridden by TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD, and older releases had unpickler escapes of their own.
TORCH_FLOOR = (2, 6)


def require(module: str, feature: str = "clipscan export", extra: str = "export"):
    try:
        return importlib.import_module(module)
    except ImportError as e:
        raise MissingExtraError(feature, module.split(".")[0], extra) from e


def not_a_checkpoint(path, what: str, error: Exception) -> CheckpointError:
    """The error for a file torch cannot load as `what` (a JSON or text file, a truncated download...)."""
    detail = str(error).splitlines()[0] if str(error) else ""
    detail = f": {detail}" if detail and len(detail) < 160 else ""
    return CheckpointError(f"{path} is not a {what} PyTorch can load ({type(error).__name__}{detail}); pass "
                           "the .pt/.pth/.bin/.safetensors file it was saved as")


def _torch():
    torch = require("torch")
    found = tuple(int(x) for x in re.findall(r"\d+", torch.__version__)[:2])
    if found < TORCH_FLOOR:
        raise UnsafeFileError(f"clipscan reads checkpoints with torch >= {'.'.join(map(str, TORCH_FLOOR))}, whose "
                              f"weights-only loading cannot be switched off; this is torch {torch.__version__}: "
                              "pip install -U 'clipscan[export]'")
    return torch


def _refused(path, what: str, error: Exception) -> Exception:
    """The error for a file torch.load(weights_only=True) would not read: UnsafeFileError when it holds code
    or objects (a TorchScript archive, a pickle naming a global), else not_a_checkpoint."""
    text = str(error)
    if "TorchScript" in text:
        return UnsafeFileError(f"{path} is a TorchScript archive, not a {what}: clipscan loads weights only and "
                               "never runs code from a file; save the model's state_dict() with torch.save, or as "
                               ".safetensors, and pass that")
    named = re.search(r"GLOBAL ([\w.]+) (?:whose|was)", text)
    if named:
        return UnsafeFileError(f"{path} asks to build {named.group(1)}, which is not a tensor or a plain value, so "
                               f"it was not loaded: clipscan reads a {what} with torch.load(weights_only=True) only "
                               "and never runs code from a file; pass weights saved with "
                               "torch.save(model.state_dict(), ...) or as .safetensors")
    operand = re.search(r"Unsupported operand \d+", text)
    return not_a_checkpoint(path, what, type(error)(operand.group(0) if operand else ""))


def load_torch_file(path, what: str):
    """The tensors and plain values saved in `path`, loaded onto the CPU: a .safetensors file through
    safetensors, any other file through torch.load(weights_only=True) alone. There is no fallback to a full
    unpickling: a file the restricted loader refuses is refused (UnsafeFileError), one that is no checkpoint
    at all is a CheckpointError."""
    path = Path(path)
    torch = _torch()
    if path.suffix.lower() == ".safetensors":
        safetensors_torch = require("safetensors.torch")
        try:
            return safetensors_torch.load_file(str(path), device="cpu")
        except FileNotFoundError:
            raise
        except Exception as e:
            raise not_a_checkpoint(path, what, e) from None
    try:
        return torch.load(str(path), map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise
    except pickle.UnpicklingError as e:
        raise _refused(path, what, e) from None
    except Exception as e:
        if "TorchScript" in str(e):
            raise _refused(path, what, e) from None
        raise not_a_checkpoint(path, what, e) from None


WRAPPED_CLIP = "clip_model."


def load_state_dict(path, what: str) -> dict:
    """A model's state dict from a checkpoint file (see load_torch_file), unwrapped as open_clip does: a
    {"state_dict": ...} or {"params": ...} wrapper is opened, and a "module." prefix (DataParallel) and a
    "clip_model." prefix on every key (pyiqa's LIQE) are dropped."""
    data = load_torch_file(path, what)
    for key in ("state_dict", "params"):   # training scripts' wrappers ("params": BasicSR's and pyiqa's)
        if isinstance(data, dict) and isinstance(data.get(key), dict):
            data = data[key]
    if not isinstance(data, dict) or not data:
        raise CheckpointError(f"{path} holds no state dict (found {type(data).__name__}); pass the {what} "
                              "saved with torch.save(model.state_dict(), ...) or as .safetensors")
    if next(iter(data)).startswith("module."):
        data = {k[len("module."):] if k.startswith("module.") else k: v for k, v in data.items()}
    if all(k.startswith(WRAPPED_CLIP) for k in data):   # pyiqa's LIQE keeps its CLIP as `clip_model`
        data = {k[len(WRAPPED_CLIP):]: v for k, v in data.items()}
    return data
