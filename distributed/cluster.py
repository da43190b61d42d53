"""Where a Ray scan runs: a Ray instance started here on loopback, or an existing cluster (--ray-address).

`ray` is imported only here and only when a Ray scan starts; without it the scan says which extra to install.
"""
from __future__ import annotations

import ipaddress
import logging
import os
import shutil
import socket
import sys
import tempfile
from contextlib import contextmanager
from dataclasses import dataclass

from clipscan.runtime.errors import BackendError, InvalidArgumentError, MissingExtraError

from .defaults import DEFAULTS

log = logging.getLogger("clipscan.ray")

LOOPBACK_HOSTS = ("127.0.0.1", "localhost", "::1")
# Ray reads these when it is imported and passes them on to the processes it starts:
# no usage report leaves the machine, and a local instance's node address is loopback (otherwise Ray
# replaces 127.0.0.1 by the machine's interface address and its servers listen there).
QUIET_ENV = {"RAY_USAGE_STATS_ENABLED": "0"}
LOOPBACK_ENV = {"RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0"}
AUTH_ENV = "RAY_AUTH_MODE"  # Ray's switch for joining a cluster that requires its token


def import_ray():
    """The `ray` module with Ray Data, or MissingExtraError naming the extra."""
    try:
        import ray
        import ray.data
    except ImportError:
        raise MissingExtraError("clipscan scan --engine ray", "ray[data]", "ray") from None
    return ray


@dataclass(frozen=True)
class Address:
    """A parsed --ray-address: None (start Ray here, on loopback), "auto", host:port or ray://host:port."""
    text: str | None
    host: str | None = None
    port: int | None = None

    @property
    def local(self) -> bool:
        return self.text is None

    @property
    def loopback(self) -> bool:
        return self.text is None or self.host in LOOPBACK_HOSTS


def parse_address(text: str | None) -> Address:
    """Check --ray-address; a malformed one is an InvalidArgumentError with one sentence."""
    if text is None or text == "local":
        return Address(None)
    if text == "auto":
        return Address("auto")
    rest = text.removeprefix("ray://")
    host, sep, port = rest.rpartition(":")
    host = host.strip("[]")
    hint = "give HOST:PORT of the cluster's head (e.g. 10.0.0.5:6379), ray://HOST:10001, auto, or leave it out"
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise InvalidArgumentError(f"--ray-address {text!r} is not an address Ray can join: {hint}")
    if host not in ("localhost",):
        try:
            ipaddress.ip_address(host)
        except ValueError:
            if not all(part and all(c.isalnum() or c == "-" for c in part) for part in host.split(".")):
                raise InvalidArgumentError(f"--ray-address {text!r}: {host!r} is not a host name or IP address; "
                                           f"{hint}") from None
    return Address(text, host, int(port))


def check_reachable(address: Address, timeout: float | None = None) -> None:
    """A TCP connection to host:port, so that an unreachable cluster is one sentence, not a long retry loop."""
    if address.host is None:
        return
    timeout = DEFAULTS["connect_timeout_s"] if timeout is None else timeout
    try:
        socket.create_connection((address.host, address.port), timeout=timeout).close()
    except OSError as e:
        raise InvalidArgumentError(f"--ray-address {address.text}: nothing answers at {address.host}:{address.port} "
                                   f"({e.strerror or e}); start the cluster (`ray start --head`) or check the "
                                   "address") from None


def prepare(address: Address, *, verbose: bool = False):
    """Before anything is written: Ray's environment for this scan, `import ray` (or the extra to install)
    and, for a cluster, a TCP check of its address. Returns the ray module."""
    env = dict(QUIET_ENV, **(LOOPBACK_ENV if address.loopback else {}))
    if not verbose:  # Ray's C++ core logs warnings of its own to stderr; its errors reach us as exceptions
        env["RAY_BACKEND_LOG_LEVEL"] = "fatal"
    for k, v in env.items():
        os.environ.setdefault(k, v)
    ray = import_ray()
    if not verbose:  # Ray Data's own lines (execution plans, log folders, its tracebacks) only with -vv
        for name in ("ray", "ray.data"):
            logging.getLogger(name).setLevel(logging.CRITICAL)
    check_reachable(address)
    return ray


@contextmanager
def session(address: Address, *, verbose: bool = False):
    """Ray for the length of the block (see `connect`). A Ray started here keeps its session folder (logs,
    sockets, spilled objects) in a folder of its own under $TMPDIR, and both are gone after the block."""
    scratch = _scratch_folder() if address.local else None
    try:
        ray, started = connect(address, verbose=verbose, temp_dir=scratch)
        try:
            yield ray
        finally:
            if started:
                ray.shutdown()
    finally:
        if scratch is not None:
            shutil.rmtree(scratch, ignore_errors=True)


# Ray's sockets live at <temp>/session_<date>_<time>_<us>_<pid>/sockets/plasma_store, and a Unix socket's
# path holds at most 107 bytes
_SOCKET_TAIL = len("/session_2026-12-06_15-48-47_263424_4194304/sockets/plasma_store")
_UNIX_PATH_MAX = 107


def _scratch_folder() -> str:
    """A new folder for a local Ray's session: under $TMPDIR, or under /tmp when $TMPDIR is too deep for
    the Unix sockets Ray puts in it."""
    folder = tempfile.mkdtemp(prefix="clipscan-ray-")
    if len(folder) + _SOCKET_TAIL > _UNIX_PATH_MAX and os.path.isdir("/tmp"):
        os.rmdir(folder)
        folder = tempfile.mkdtemp(prefix="clipscan-ray-", dir="/tmp")
    return folder


@contextmanager
def _without_ray_log_level_line(verbose: bool):
    """Ray's C++ core says on stderr that it read RAY_BACKEND_LOG_LEVEL (the variable that keeps it quiet):
    within the block stderr goes through a file and comes back without that line (everything with -v)."""
    if verbose:
        yield
        return
    sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile() as held:
        os.dup2(held.fileno(), 2)
        try:
            yield
        finally:
            sys.stderr.flush()
            os.dup2(saved, 2)
            os.close(saved)
            held.seek(0)
            kept = [line for line in held.read().splitlines(keepends=True)
                    if b"Set ray log level from environment variable" not in line]
            if kept:
                sys.stderr.flush()
                os.write(2, b"".join(kept))


def connect(address: Address, *, verbose: bool = False, temp_dir: str | None = None) -> tuple:
    """ray.init for this scan: here on loopback (no dashboard, no usage stats; its session folder under
    `temp_dir` when given) or joining `address`. Returns (the ray module, whether this call initialized
    it: then `ray.shutdown()` is the caller's, and stops a Ray started here). A process that already called
    ray.init keeps its Ray (and its address). `session` is the form that also cleans up."""
    ray = prepare(address, verbose=verbose)
    if ray.is_initialized():
        return ray, False
    kwargs = {"include_dashboard": False, "log_to_driver": verbose,
              "logging_level": logging.INFO if verbose else logging.ERROR, "configure_logging": True}
    if address.local:
        with _without_ray_log_level_line(verbose):
            ray.init(**kwargs, **({"_temp_dir": temp_dir} if temp_dir else {}))
        return ray, True
    kwargs.pop("include_dashboard")
    try:
        with _without_ray_log_level_line(verbose):
            ray.init(address=address.text, **kwargs)
    except Exception as e:  # noqa: BLE001  Ray raises ConnectionError, RuntimeError, ... with its own long texts
        first = (str(e).strip().splitlines() or [type(e).__name__])[0][:200]
        raise BackendError(f"--ray-address {address.text}: Ray could not join the cluster there ({first}); if the "
                           f"cluster uses token authentication (the default of `ray start`), set {AUTH_ENV}=token "
                           "with the cluster's token in ~/.ray/auth_token or RAY_AUTH_TOKEN") from None
    return ray, True


def default_actors(ray, cpus_per_actor: float, gpus_per_actor: float) -> int:
    """One actor per CPU slot, or per GPU slot when actors take GPUs, of the cluster as it is now."""
    resources = ray.cluster_resources()
    if gpus_per_actor > 0:
        gpus = resources.get("GPU", 0)
        if gpus < gpus_per_actor:
            raise InvalidArgumentError(f"--gpus-per-actor {gpus_per_actor}: the Ray cluster has {gpus:g} GPU(s); "
                                       "pass a share that fits them, or 0 for CPU actors")
        return max(1, int(gpus // gpus_per_actor))
    return max(1, int(resources.get("CPU", 1) // cpus_per_actor))
