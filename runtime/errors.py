"""One exception hierarchy for clipscan.

Every message says what was asked, what exists, and how to fix it.
"""
from __future__ import annotations


class ClipscanError(Exception):
    """Base class of every error clipscan raises on purpose."""


class InvalidArgumentError(ClipscanError, ValueError):
    """An argument clipscan cannot use (a wrong value or type); also a ValueError, as Python code expects."""


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


class ResultsFileError(ClipscanError, ValueError):
    """A results file (or its model record) that a resumed scan would append to cannot be read safely:
    nothing has been cut or appended when this is raised."""


class ServerError(ClipscanError):
    """An inference server (`clipscan serve`, Triton) cannot be used: unreachable, not an Open Inference
    Protocol server, no such model, or the token refused."""


class UnsafeFileError(ClipscanError):
    """A file would have to be trusted beyond what clipscan allows: a checkpoint that holds more than tensors
    and plain values (a pickle that builds objects or runs code), or a torch too old to load one safely."""


class ResumeStateError(ClipscanError, ValueError):
    """What `--resume` would continue from (a Ray scan's ledger, a resume sidecar) is unreadable or does not
    fit the output it describes: nothing is cut or deleted, and the message says how to start again."""
