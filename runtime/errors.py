"""One exception hierarchy for clipscan: every error clipscan raises on purpose is a ClipscanError.

A ClipscanError means the user (or the Python code calling clipscan) asked for something clipscan cannot
do; its message says what was asked, what exists, and how to fix it, and the CLI prints it as one line
with exit code 2. Any other exception escaping clipscan is a bug in clipscan, and the CLI says so.
Some classes also derive from the built-in exception Python callers expect (ValueError,
FileNotFoundError, RuntimeError), so `except ValueError` around a call keeps working.

This module is the lowest layer and imports nothing: every package (runtime, export, calibration, bench,
serve, report, triton, distributed, cli) raises these classes or its own subclasses of them (WireError,
HTTPError, TritonServerError...); tests/test_errors.py holds every package to it.
"""
from __future__ import annotations


class ClipscanError(Exception):
    """Base class of every error clipscan raises on purpose."""


class InvalidArgumentError(ClipscanError, ValueError):
    """An argument clipscan cannot use (a wrong value or type); also a ValueError, as Python code expects."""


class InputNotFoundError(ClipscanError, FileNotFoundError):
    """A file or folder named as input (model, images, weights, heads, rows) does not exist."""


class CheckpointError(ClipscanError, ValueError):
    """A checkpoint, head file, captions file or architecture config that clipscan cannot read or that does
    not fit the chosen backbone (wrong keys, wrong shapes, wrong format)."""


class ExportCheckError(ClipscanError, RuntimeError):
    """The written graph does not reproduce the PyTorch model within the gates (the file is removed)."""


class CalibrationError(ClipscanError, ValueError):
    """The inputs of calibrate or verify cannot give a result: no readable images, a model of the wrong
    precision, a recipe the target cannot run."""


class RowsError(ClipscanError, ValueError):
    """A results file (scan rows, its model record, a Ray-scan ledger) that clipscan cannot use: not rows,
    unreadable, or changed since it was written."""


class ScannerClosedError(ClipscanError, RuntimeError):
    """The Scanner was used after close()."""


class ModelError(ClipscanError):
    """The model artifact is missing, unreadable, or not a clipscan artifact."""


class ManifestError(ModelError):
    """The manifest inside an artifact is invalid or of an unsupported schema version."""


class BackendError(ClipscanError):
    """No backend could run the model, or a requested backend could not start."""


class MissingExtraError(ClipscanError):
    """A feature needs an optional dependency that is not installed."""

    def __init__(self, feature: str, module: str, extra: str):
        self.feature, self.module, self.extra = feature, module, extra
        super().__init__(
            f"{feature} needs the Python package '{module}', which is not installed. "
            f"Install it with: pip install 'clipscan[{extra}]'"
        )


class ImageReadError(ClipscanError):
    """One input could not be turned into model pixels.

    `kind` is a short stable code (for scripts); the message is for people.
    """

    def __init__(self, kind: str, message: str):
        self.kind = kind
        super().__init__(message)

    def __str__(self) -> str:  # e.g. "truncated: image data ends early ..."
        return f"{self.kind}: {self.args[0]}"


class ServerError(ClipscanError):
    """An inference server (`clipscan serve`, Triton) cannot be used: unreachable, not an Open Inference
    Protocol server, no such model, or the token refused."""


class UnsafeFileError(ClipscanError):
    """A file would have to be trusted beyond what clipscan allows: a checkpoint that holds more than tensors
    and plain values (a pickle that builds objects or runs code), or a torch too old to load one safely."""
