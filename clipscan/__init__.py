"""clipscan: CLIP detectors of AI-generated images and quality models, exported and scanned at the edge.

`clipscan.runtime` (numpy, pillow, onnxruntime) scans; `clipscan.export` (torch,
open_clip, onnx: `pip install 'clipscan[export]'`) writes the ONNX artifact.
"""
from clipscan.version import __version__  # noqa: F401


def __getattr__(name):  # lazy, so `import clipscan` stays cheap
    if name in ("Scanner", "ScanResult"):
        from clipscan import runtime

        return getattr(runtime, name)
    raise AttributeError(f"module 'clipscan' has no attribute {name!r}")
