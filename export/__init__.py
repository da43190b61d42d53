"""clipscan.export: open_clip checkpoints + heads -> one ONNX artifact (needs `clipscan[export]`).

The public names below are loaded on first use, so that importing a light module of this package
(`clipscan.export.deps`, `clipscan.export.onnx_writer`) does not import torch; the runtime never
imports this package.
"""
__all__ = ["export_model", "export_graph", "load_reference", "Reference", "ExportReport", "ExportCheckError"]


def __getattr__(name):
    if name == "ExportCheckError":
        from .errors import ExportCheckError

        return ExportCheckError
    if name in __all__:
        from . import exporter

        return getattr(exporter, name)
    raise AttributeError(f"module 'clipscan.export' has no attribute {name!r}")
