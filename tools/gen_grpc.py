"""Generate the gRPC message modules of `clipscan serve --grpc-port` from the committed .proto files.

    python tools/gen_grpc.py            # rewrite serve/grpc_service_pb2.py and serve/model_config_pb2.py
    python tools/gen_grpc.py --check    # exit 1 when a committed module's descriptor differs from its .proto

The .proto files are the Open Inference Protocol's gRPC service as Triton publishes it (KServe v2
`inference.GRPCInferenceService` plus Triton's model configuration), copied verbatim from
triton-inference-server/common (commit in UPSTREAM). protoc (grpcio-tools, a development tool only: the
service needs protobuf and grpcio) writes the modules, then two changes are made to them:

- the descriptors go into a pool of their own (`model_config_pb2.POOL`), not protobuf's default pool: a
  process that also loads another copy of these protos (tritonclient's, under the same file names) would
  otherwise fail at import with "duplicate file name";
- grpc_service_pb2 imports model_config_pb2 from its own package.

The service stub (`*_pb2_grpc.py`) is not generated: serve/grpc_server.py registers its methods itself.
tests/test_serve_grpc_proto.py regenerates the modules and compares their descriptors with the committed ones.
"""
from __future__ import annotations

import argparse
import importlib.metadata
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
SERVE = REPO / "serve"
PROTOS = ("model_config.proto", "grpc_service.proto")
UPSTREAM = "triton-inference-server/common@83adf7cf88a2f343005974dff3728be746de2d66 (protobuf/)"

DEFAULT_POOL = "DESCRIPTOR = _descriptor_pool.Default().AddSerializedFile("
ABSOLUTE_IMPORT = "import model_config_pb2 as model__config__pb2"


def protoc(out: Path) -> None:
    """Run protoc (grpcio-tools) on the committed .proto files, writing the raw modules into `out`."""
    cmd = [sys.executable, "-m", "grpc_tools.protoc", f"-I{SERVE}", f"--python_out={out}",
           *(str(SERVE / p) for p in PROTOS)]
    done = subprocess.run(cmd, capture_output=True, text=True)
    if done.returncode:
        raise SystemExit(f"protoc failed ({' '.join(cmd)}):\n{done.stderr}")


def post_process(name: str, text: str) -> str:
    """The raw module `name` (e.g. 'model_config_pb2') with its descriptors in clipscan's own pool."""
    if text.count(DEFAULT_POOL) != 1:
        raise SystemExit(f"{name}: protoc's output no longer has one '{DEFAULT_POOL}': update tools/gen_grpc.py")
    if name == "model_config_pb2":
        text = text.replace(DEFAULT_POOL, "POOL = _descriptor_pool.DescriptorPool()  # clipscan: a pool of its own\n"
                                          "DESCRIPTOR = POOL.AddSerializedFile(")
    else:
        if text.count(ABSOLUTE_IMPORT) != 1:
            raise SystemExit(f"{name}: protoc's output no longer has '{ABSOLUTE_IMPORT}': update tools/gen_grpc.py")
        text = text.replace(ABSOLUTE_IMPORT, "from . import model_config_pb2 as model__config__pb2  # clipscan")
        text = text.replace(DEFAULT_POOL, "DESCRIPTOR = model__config__pb2.POOL.AddSerializedFile(")
    header = (f"# clipscan: written by tools/gen_grpc.py with grpcio-tools {importlib.metadata.version('grpcio-tools')}"
              f" from serve/{name.removesuffix('_pb2')}.proto,\n# copied from {UPSTREAM};\n"
              "# its descriptors are in model_config_pb2.POOL, not protobuf's default pool. Do not edit.\n")
    return header + text


def generate() -> dict[str, str]:
    """{module file name: text} of the modules as this tool writes them."""
    with tempfile.TemporaryDirectory() as tmp:
        protoc(Path(tmp))
        return {f"{p.removesuffix('.proto')}_pb2.py":
                post_process(f"{p.removesuffix('.proto')}_pb2", (Path(tmp) / f"{p.removesuffix('.proto')}_pb2.py")
                             .read_text(encoding="utf-8")) for p in PROTOS}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--check", action="store_true", help="compare, do not write")
    args = ap.parse_args(argv)
    modules = generate()
    if args.check:
        stale = [n for n, text in modules.items() if (SERVE / n).read_text(encoding="utf-8") != text]
        for n in stale:
            print(f"serve/{n} differs from what tools/gen_grpc.py writes", file=sys.stderr)
        return 1 if stale else 0
    for n, text in modules.items():
        (SERVE / n).write_text(text, encoding="utf-8")
        print(f"wrote serve/{n}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
