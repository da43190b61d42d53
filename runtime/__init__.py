"""clipscan.runtime: scan images with an exported clipscan model.

Depends on numpy, pillow and onnxruntime only; it never imports torch.
"""
from .artifact import Artifact, load_artifact
from .errors import (
                     BackendError,
                     ClipscanError,
                     ImageReadError,
                     InvalidArgumentError,
                     ManifestError,
                     ModelError,
                     ScannerClosedError,
                     ServerError,
)
from .manifest import Manifest
from .remote import RemoteScanner
from .results import ScanResult
from .scanner import Scanner

__all__ = ["Scanner", "RemoteScanner", "ScanResult", "Manifest", "Artifact", "load_artifact", "ClipscanError",
           "ModelError", "ManifestError", "BackendError", "ImageReadError", "InvalidArgumentError",
           "ScannerClosedError", "ServerError"]
