"""Keep stdout for rows: what ONNX Runtime and the CUDA libraries print while a GPU session starts goes to stderr.

`clipscan scan` writes JSONL rows on stdout, so anything else there breaks every consumer of that
stream. onnxruntime-gpu prints its "EP Error ... Falling back to ['CPUExecutionProvider']" banner
with Python's print() when a GPU provider fails to load, `onnxruntime.preload_dlls()` prints the
libraries it could not load, and native code (CUDA, TensorRT) may write to file descriptor 1
directly. `stdout_to_stderr` covers all three for the duration of the block: Python's sys.stdout is
swapped for sys.stderr, and descriptor 1 is pointed at descriptor 2 at the OS level (os.dup2), then
both are restored. The switch is process-wide, so it is serialised by a lock and kept to the few
calls that start GPU sessions; rows are never written while a backend is being created.
"""
from __future__ import annotations

import ctypes
import os
import sys
import threading
from contextlib import contextmanager, redirect_stdout

_LOCK = threading.RLock()


def _flush_c_stdio() -> None:
    """Flush the C library's stdout buffer, so text native code printed goes where descriptor 1 points now."""
    try:
        ctypes.CDLL(None).fflush(None)
    except (OSError, AttributeError):
        pass


def _flush(stream) -> None:
    try:
        stream.flush()
    except (AttributeError, OSError, ValueError):  # a closed or replaced stream: nothing buffered to keep
        pass


@contextmanager
def stdout_to_stderr(*, discard: bool = False):
    """Within the block, writes to stdout (Python's and file descriptor 1) land on stderr, or nowhere with
    discard=True (for probes whose findings clipscan reports itself)."""
    with _LOCK:
        _flush(sys.stdout)   # rows already printed stay on stdout, in order
        _flush_c_stdio()
        try:
            saved = os.dup(1)
        except OSError:      # no descriptor 1 (a daemon): nothing to protect at the OS level
            saved = None
        sink = open(os.devnull, "w") if discard else None
        try:
            if saved is not None:
                os.dup2(sink.fileno() if sink else 2, 1)
            with redirect_stdout(sink or sys.stderr):
                try:
                    yield
                finally:
                    _flush(sys.stdout)
                    _flush_c_stdio()
        finally:
            if saved is not None:
                os.dup2(saved, 1)
                os.close(saved)
            if sink:
                sink.close()
