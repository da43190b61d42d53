"""Start a local `tritonserver` on a model repository: the one bundled in the PyPI package `nvidia-pytriton`
(Triton 2.51 with the python backend only; it runs on CPU), or any `tritonserver` given by path.

What it takes to run that bundled binary outside pytriton (checked on this machine):
- its shared libraries live in `nvidia_pytriton.libs/`: they go on LD_LIBRARY_PATH;
- its python backend folder ships without the stub (`triton_python_backend_stub`): the stub built for
  the Python that will run the models (one per 3.8-3.13 in `python_backend_stubs/`) is copied into a
  backend folder of our own, next to links to the backend library and its utils module;
- the stub starts an isolated Python (PyConfig_InitIsolatedConfig: PYTHONPATH is ignored), so the
  generated model.py files put clipscan's environment on sys.path themselves (see repository.py).
Every port is bound on 127.0.0.1 unless asked otherwise.
"""
from __future__ import annotations

import importlib.util
import os
import shutil
import socket
import subprocess
import sys
import sysconfig
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

from clipscan.runtime.errors import ClipscanError, InvalidArgumentError, MissingExtraError

STUB = "triton_python_backend_stub"


class TritonServerError(ClipscanError):
    """tritonserver could not be found, or did not become ready."""


@dataclass(frozen=True)
class TritonDist:
    binary: Path
    backends: Path          # the folder holding python/ (libtriton_python.so, triton_python_backend_utils.py)
    stubs: Path | None      # python_backend_stubs/<major.minor>/triton_python_backend_stub, when bundled
    libs: Path | None       # shared libraries the binary needs

    def stub_for(self, version: str) -> Path | None:
        if self.stubs is None:
            return None
        path = self.stubs / version / STUB
        return path if path.is_file() else None


def bundled_tritonserver() -> TritonDist:
    """The tritonserver inside the installed `nvidia-pytriton` package."""
    spec = importlib.util.find_spec("pytriton")
    if spec is None or not spec.submodule_search_locations:
        raise MissingExtraError("running a local Triton Inference Server", "nvidia-pytriton", "triton")
    root = Path(next(iter(spec.submodule_search_locations))) / "tritonserver"
    binary = root / "bin" / "tritonserver"
    if not binary.is_file():
        raise TritonServerError(f"nvidia-pytriton is installed but {binary} is missing; reinstall nvidia-pytriton")
    libs = root.parent.parent / "nvidia_pytriton.libs"
    return TritonDist(binary, root / "backends", root / "python_backend_stubs", libs if libs.is_dir() else None)


def prepare_backends(dist: TritonDist, folder: Path, python: str | None = None) -> Path:
    """A backend folder for `dist` whose python backend has the stub for `python` ("3.11"; default: this
    interpreter's version). Returns the folder to pass as --backend-directory."""
    version = python or f"{sys.version_info[0]}.{sys.version_info[1]}"
    source = dist.backends / "python"
    target = Path(folder) / "python"
    target.mkdir(parents=True, exist_ok=True)
    for entry in source.iterdir():
        if entry.is_file() and not (target / entry.name).exists():
            (target / entry.name).symlink_to(entry)
    if not (target / STUB).exists():
        stub = dist.stub_for(version)
        if stub is None:
            have = sorted(p.name for p in dist.stubs.iterdir()) if dist.stubs and dist.stubs.is_dir() else []
            raise TritonServerError(f"no python backend stub for Python {version} in {dist.stubs} (stubs for {have}); "
                                    "run clipscan with one of those Python versions")
        shutil.copy2(stub, target / STUB)
    return Path(folder)


def free_ports(n: int) -> list[int]:
    """`n` distinct loopback ports free now (each held until all are chosen)."""
    sockets = []
    try:
        for _ in range(n):
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            s.bind(("127.0.0.1", 0))
            sockets.append(s)
        return [s.getsockname()[1] for s in sockets]
    finally:
        for s in sockets:
            s.close()


@dataclass
class TritonProcess:
    """A running tritonserver: its process, ports and log file; `url` is the HTTP endpoint."""
    process: subprocess.Popen
    http_port: int
    grpc_port: int
    metrics_port: int
    log_path: Path
    host: str = "127.0.0.1"
    command: list[str] = field(default_factory=list)

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.http_port}"

    def log_tail(self, chars: int = 4000) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-chars:]
        except OSError:
            return ""

    def wait_ready(self, timeout: float = 60.0) -> None:
        """Until /v2/health/ready answers 200; raises TritonServerError (with the log's tail) on exit or timeout."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise TritonServerError(f"tritonserver exited with code {self.process.returncode} before it was "
                                        f"ready; its log ends with:\n{self.log_tail()}")
            try:
                with urllib.request.urlopen(f"{self.url}/v2/health/ready", timeout=2) as r:
                    if r.status == 200:
                        return
            except (urllib.error.URLError, OSError):
                pass
            time.sleep(0.2)
        raise TritonServerError(f"tritonserver was not ready after {timeout:.0f} s; its log ends with:\n"
                                f"{self.log_tail()}")

    def stop(self, timeout: float = 20.0) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout)


def python_libdir() -> str | None:
    """The folder of this interpreter's shared libpython (the stub links libpython3.X.so.1.0: with this folder
    first it runs the very Python clipscan's environment was made with, not another 3.X the system has)."""
    libdir, name = sysconfig.get_config_var("LIBDIR"), sysconfig.get_config_var("INSTSONAME")
    return libdir if libdir and name and (Path(libdir) / name).is_file() else None


def server_env(dist: TritonDist, base: dict | None = None) -> dict:
    """The environment for tritonserver: its bundled libraries and this Python's libpython on LD_LIBRARY_PATH."""
    env = dict(os.environ if base is None else base)
    paths = [str(dist.libs) if dist.libs is not None else None, python_libdir(), env.get("LD_LIBRARY_PATH")]
    env["LD_LIBRARY_PATH"] = os.pathsep.join(p for p in paths if p)
    return env


def start_tritonserver(repository: str | os.PathLike, workdir: str | os.PathLike, *, dist: TritonDist | None = None,
                       host: str = "127.0.0.1", ports: tuple[int, int, int] | None = None,
                       extra_args: tuple[str, ...] = (), log_to: str | os.PathLike | None = None) -> TritonProcess:
    """Start tritonserver on `repository` with HTTP, gRPC and metrics on `ports` (default: free ports) of `host`
    (loopback by default); its log goes to `log_to` (default `workdir`/tritonserver.log). Call wait_ready()
    next, and stop() at the end."""
    dist = dist or bundled_tritonserver()
    workdir = Path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    backends = prepare_backends(dist, workdir / "backends")
    http, grpc, metrics = ports or free_ports(3)
    command = [str(dist.binary), f"--model-repository={Path(repository).resolve()}",
               f"--backend-directory={backends}", f"--http-address={host}", f"--http-port={http}",
               f"--grpc-address={host}", f"--grpc-port={grpc}", f"--metrics-address={host}",
               f"--metrics-port={metrics}", "--allow-gpu-metrics=false", "--log-verbose=0", *extra_args]
    log_path = Path(log_to) if log_to else workdir / "tritonserver.log"
    with open(log_path, "wb") as log_file:
        process = subprocess.Popen(command, stdout=log_file, stderr=subprocess.STDOUT, env=server_env(dist),
                                   cwd=workdir)
    return TritonProcess(process, http, grpc, metrics, log_path, host, command)
