"""clipscan.export: open_clip checkpoints + heads -> one ONNX artifact (needs `clipscan[export]`).

Importing this package needs torch; the runtime never imports it.
"""
from .exporter import ExportCheckError, ExportReport, Reference, export_graph, export_model, load_reference

__all__ = ["export_model", "export_graph", "load_reference", "Reference", "ExportReport", "ExportCheckError"]
