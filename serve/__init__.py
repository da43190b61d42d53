"""`clipscan serve`: an on-prem scanning service (`pip install 'clipscan[serve]'`) that speaks the Open
Inference Protocol (KServe v2, as Triton does over HTTP and, with a gRPC port, over gRPC), with a plain REST
endpoint, dynamic batching across requests, limits, Prometheus metrics and an upload page. Runtime-only: it
uses the Scanner, never torch.

The limits (`Limits`, `limits_table`) import without the extra; the app and server (starlette, uvicorn,
prometheus-client; grpcio and protobuf for gRPC) are imported when first used."""
from __future__ import annotations

from .limits import Limits, limits_table

SERVE_MODULES = ("starlette", "uvicorn", "prometheus_client", "multipart")
GRPC_MODULES = ("grpc", "google.protobuf")  # also in the extra; needed with --grpc-port


def __getattr__(name: str):
    if name in ("ServiceState", "create_app"):
        from . import app
        return getattr(app, name)
    if name == "serve":
        from .server import serve
        return serve
    raise AttributeError(name)


__all__ = ["GRPC_MODULES", "SERVE_MODULES", "Limits", "ServiceState", "create_app", "limits_table", "serve"]
