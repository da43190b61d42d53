#!/usr/bin/env python3
"""Triton's own load generator, perf_analyzer, unmodified, provisioned into a cache folder and run.

    python tools/perf_analyzer.py [--cache DIR] -- -m clipscan-demo -u 127.0.0.1:8000 --input-data image.json ...
    python tools/perf_analyzer.py --image photo.jpg --json image.json    # perf_analyzer's --input-data for a JPEG

Where the binary comes from (x86_64 Linux): the `tritonclient` 2.51.0 wheel on PyPI carries it as
`tritonclient-2.51.0.data/data/bin/perf_analyzer` (later tritonclient wheels do not). It links two libraries
a Python environment does not have:
- `libb64.so.0d`: Debian/Ubuntu's `libb64-0d` (used from the system when `ldconfig` knows it; else its .deb
  is fetched with `apt-get download` and unpacked into the cache, which needs no root; as root, apt's
  package lists are updated first when the download finds none);
- `libcudart.so.12`: PyPI's `nvidia-cuda-runtime-cu12`, installed with `pip install --target` into the cache
  (no GPU is needed: perf_analyzer only loads it).
Everything lands in DIR (default `$CLIPSCAN_CACHE_DIR/perf_analyzer`, else `~/.cache/clipscan/perf_analyzer`);
a second run finds it there. A step that fails raises ProvisionError saying which command failed and how to
do it by hand. Standard library only; nothing of clipscan is imported.
"""
from __future__ import annotations

import argparse
import base64
import fcntl
import json
import os
import platform
import shutil
import struct
import subprocess
import sys
import zipfile
from dataclasses import dataclass
from pathlib import Path

TRITONCLIENT = "tritonclient==2.51.0"
WHEEL_BINARY = "tritonclient-2.51.0.data/data/bin/perf_analyzer"
CUDART = "nvidia-cuda-runtime-cu12"
B64 = "libb64-0d"
HOW = ("by hand: `pip download --no-deps tritonclient==2.51.0` and take tritonclient-2.51.0.data/data/bin/"
       "perf_analyzer out of the wheel, `apt-get install libb64-0d`, `pip install nvidia-cuda-runtime-cu12` and put "
       "its nvidia/cuda_runtime/lib on LD_LIBRARY_PATH")


class ProvisionError(RuntimeError):
    """perf_analyzer could not be provisioned here."""


@dataclass(frozen=True)
class PerfAnalyzer:
    binary: Path
    lib_dirs: tuple[Path, ...]

    @property
    def env(self) -> dict[str, str]:
        paths = [str(d) for d in self.lib_dirs] + [p for p in os.environ.get("LD_LIBRARY_PATH", "").split(":") if p]
        return {**os.environ, "LD_LIBRARY_PATH": ":".join(paths)}

    def run(self, args: list[str], timeout: float = 300) -> subprocess.CompletedProcess:
        return subprocess.run([str(self.binary), *args], env=self.env, capture_output=True, text=True,
                              timeout=timeout, check=False)


def default_cache() -> Path:
    root = os.environ.get("CLIPSCAN_CACHE_DIR") or Path.home() / ".cache" / "clipscan"
    return Path(root) / "perf_analyzer"


def _run(cmd: list[str], what: str, cwd: Path | None = None) -> None:
    try:
        proc = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, timeout=600, check=False)
    except (OSError, subprocess.TimeoutExpired) as e:
        raise ProvisionError(f"{what}: `{' '.join(cmd)}` could not run ({e}); {HOW}") from None
    if proc.returncode != 0:
        tail = (proc.stderr or proc.stdout).strip().splitlines()[-3:]
        raise ProvisionError(f"{what}: `{' '.join(cmd)}` exited {proc.returncode}: {' | '.join(tail)}; {HOW}")


def _binary(cache: Path) -> Path:
    target = cache / "bin" / "perf_analyzer"
    if target.is_file():
        return target
    wheels = cache / "wheels"
    wheels.mkdir(parents=True, exist_ok=True)
    if not list(wheels.glob("tritonclient-2.51.0-*.whl")):
        _run([sys.executable, "-m", "pip", "download", "--quiet", "--no-deps", "--only-binary=:all:", "-d",
              str(wheels), TRITONCLIENT], "downloading the tritonclient 2.51.0 wheel")
    wheel = next(iter(wheels.glob("tritonclient-2.51.0-*.whl")))
    with zipfile.ZipFile(wheel) as z:
        if WHEEL_BINARY not in z.namelist():
            raise ProvisionError(f"{wheel.name} holds no {WHEEL_BINARY}; {HOW}")
        target.parent.mkdir(parents=True, exist_ok=True)
        partial = target.with_suffix(".partial")
        partial.write_bytes(z.read(WHEEL_BINARY))
    partial.chmod(0o755)
    partial.replace(target)
    return target


def _cudart(cache: Path) -> Path:
    lib = cache / "cudart" / "nvidia" / "cuda_runtime" / "lib"
    if not (lib / "libcudart.so.12").is_file():
        _run([sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--upgrade", "--target",
              str(cache / "cudart"), CUDART], f"installing {CUDART} (libcudart.so.12)")
    if not (lib / "libcudart.so.12").is_file():
        raise ProvisionError(f"{CUDART} was installed into {cache / 'cudart'} but holds no libcudart.so.12; {HOW}")
    return lib


def _system_has(soname: str) -> bool:
    try:
        out = subprocess.run(["ldconfig", "-p"], capture_output=True, text=True, timeout=30, check=False).stdout
    except OSError:
        return False
    return f"{soname} " in out


def _b64(cache: Path) -> Path | None:
    """The folder holding libb64.so.0d, or None when the system has it."""
    lib = cache / "b64" / "usr" / "lib" / "x86_64-linux-gnu"
    if (lib / "libb64.so.0d").is_file():
        return lib
    if _system_has("libb64.so.0d"):
        return None
    if shutil.which("apt-get") is None or shutil.which("dpkg-deb") is None:
        raise ProvisionError(f"libb64.so.0d is missing and this system has no apt-get/dpkg-deb to fetch Debian's "
                             f"{B64}; install libb64 0d from your distribution; {HOW}")
    debs = cache / "debs"
    debs.mkdir(parents=True, exist_ok=True)
    if not list(debs.glob(f"{B64}_*.deb")):
        what = f"fetching Debian's {B64} (libb64.so.0d)"
        try:
            _run(["apt-get", "download", B64], what, cwd=debs)
        except ProvisionError:
            if os.geteuid() != 0:  # package lists may be missing (a fresh container): only root can fetch them
                raise
            _run(["apt-get", "update", "-qq"], "updating apt's package lists")
            _run(["apt-get", "download", B64], what, cwd=debs)
    deb = next(iter(debs.glob(f"{B64}_*.deb")))
    _run(["dpkg-deb", "-x", str(deb), str(cache / "b64")], f"unpacking {deb.name}")
    if not (lib / "libb64.so.0d").is_file():
        raise ProvisionError(f"{deb.name} unpacked into {cache / 'b64'} holds no libb64.so.0d; {HOW}")
    return lib


def provision(cache: str | os.PathLike | None = None) -> PerfAnalyzer:
    """perf_analyzer 2.51.0 ready to run from `cache` (downloaded and unpacked there the first time)."""
    if sys.platform != "linux" or platform.machine() != "x86_64":
        raise ProvisionError(f"the perf_analyzer of the tritonclient 2.51.0 wheel is an x86_64 Linux binary; this "
                             f"is {sys.platform} {platform.machine()}: use Triton's SDK container instead")
    cache = Path(cache) if cache is not None else default_cache()
    cache.mkdir(parents=True, exist_ok=True)
    # one provisioner at a time: two processes filling an empty cache would pip-install into one folder at once
    with open(cache / ".provision.lock", "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        binary = _binary(cache)
        lib_dirs = tuple(d for d in (_cudart(cache), _b64(cache)) if d is not None)
    pa = PerfAnalyzer(binary, lib_dirs)
    try:
        proc = pa.run(["--version"], timeout=60)
    except (OSError, subprocess.TimeoutExpired) as e:
        raise ProvisionError(f"{binary} --version could not run ({e}); {HOW}") from None
    if proc.returncode != 0 or "Perf Analyzer Version" not in proc.stdout + proc.stderr:
        ldd = subprocess.run(["ldd", str(binary)], env=pa.env, capture_output=True, text=True, check=False).stdout
        missing = [line.strip() for line in ldd.splitlines() if "not found" in line]
        said = (proc.stderr or proc.stdout).strip()[:200]
        raise ProvisionError(f"{binary} --version exited {proc.returncode} ({said}); libraries not found: "
                             f"{missing or 'none'}; {HOW}")
    return pa


def image_input_data(images: list[bytes], name: str = "image") -> dict:
    """perf_analyzer's --input-data JSON for a BYTES input of encoded files, one element per request.

    perf_analyzer sends a `b64` value as the tensor's raw bytes, which for BYTES are Triton's serialized
    elements (a 4-byte little-endian length, then the bytes), so each file is serialized before base64; the
    shape is [1], the input's per-request shape without the batch dimension ([-1, 1] in the metadata)."""
    return {"data": [{name: {"b64": base64.b64encode(struct.pack("<I", len(b)) + b).decode("ascii"), "shape": [1]}}
                     for b in images]}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--cache", help="where perf_analyzer and its libraries are kept (default: %(default)s)",
                        default=str(default_cache()))
    parser.add_argument("--image", action="append", default=[], help="an image file for --json (repeatable)")
    parser.add_argument("--json", help="write perf_analyzer's --input-data file for the --image files here")
    parser.add_argument("args", nargs=argparse.REMAINDER, help="-- then perf_analyzer's own arguments")
    opts = parser.parse_args(argv)
    if opts.json:
        if not opts.image:
            parser.error("--json needs at least one --image FILE")
        Path(opts.json).write_text(json.dumps(image_input_data([Path(p).read_bytes() for p in opts.image])))
        if not opts.args:
            return 0
    try:
        pa = provision(opts.cache)
    except ProvisionError as e:
        print(f"perf_analyzer: {e}", file=sys.stderr)
        return 2
    args = opts.args[1:] if opts.args[:1] == ["--"] else opts.args
    return subprocess.run([str(pa.binary), *args], env=pa.env, check=False).returncode


if __name__ == "__main__":
    sys.exit(main())
