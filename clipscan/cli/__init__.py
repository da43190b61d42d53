"""The `clipscan` command line: the entry point, the table of commands, and the error-to-exit-code mapping.

Each command lives in its own module (clipscan/cli/<command>.py, with `add_arguments(parser)` and
`run(args) -> int`); only the chosen command's module is imported, so `clipscan scan` never loads
export, verify, bench or calibrate code.

Exit codes: 0 every input scanned; 1 at least one input failed (its row says why) or nothing was
found to scan; 2 the command could not start (bad arguments, model or backend); 130 interrupted.

Errors: what the user asked for and clipscan cannot do (a clipscan.runtime.errors.ClipscanError), and
what the machine refuses (a full disk, a permission denied, a closed stdout), are one line on stderr and
exit code 2. Any other exception is a bug in clipscan: its full traceback goes to stderr, then one line
that starts "clipscan COMMAND: internal error" and says it is a bug and how to report it, and the exit
code is 1. Exit code 1 is thus shared with "an input failed"; the two tell apart on stderr: a failed
input prints no traceback and no "internal error" line (its row says why it failed).
"""
from __future__ import annotations

import argparse
import contextlib
import errno
import importlib
import logging
import os
import shutil
import sys
import tempfile
import traceback

from clipscan import __version__

EXIT_OK, EXIT_ITEM_FAILED, EXIT_USAGE = 0, 1, 2
EXIT_BUG = 1  # the same code as EXIT_ITEM_FAILED (a script tests for 0); stderr tells them apart
EXIT_INTERRUPTED = 130
# OSErrors without a file name that still come from the machine, not from clipscan: a full disk or quota,
# a read-only file system, an I/O error, a closed or broken stdout/stderr
ENVIRONMENT_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EIO, errno.EPIPE, errno.EBADF})

# command -> (module with add_arguments/run, one-line help for `clipscan --help`)
COMMANDS: dict[str, tuple[str, str]] = {
    "scan": ("clipscan.cli.scan", "scan image files and folders (recursive)"),
    "info": ("clipscan.cli.info", "print the manifest of a model artifact"),
    "export": ("clipscan.cli.export",
               "export an open_clip backbone + heads to one ONNX artifact (needs clipscan[export])"),
    "verify": ("clipscan.cli.verify",
               "compare an exported artifact with its PyTorch original on images (needs clipscan[export])"),
    "bench": ("clipscan.cli.bench", "benchmark artifacts: latency, throughput, memory, cold start, fidelity"),
    "calibrate": ("clipscan.cli.calibrate",
                  "post-training INT8 (QDQ) of an FP32 artifact, with its fidelity report (needs clipscan[export])"),
    "serve": ("clipscan.cli.serve",
              "serve a model: Open Inference Protocol (HTTP, gRPC), /v1/scan, upload page (needs clipscan[serve])"),
    "backends": ("clipscan.cli.backends", "list inference backends and whether each can run here"),
    "report": ("clipscan.cli.report", "turn a scan's rows into one self-contained HTML page a reviewer can look at"),
    "triton": ("clipscan.cli.triton", "write a Triton Inference Server model repository for an artifact"),
    "evaluate": ("clipscan.cli.evaluate",
                 "metrics of artifacts (and the PyTorch original) on labelled images (needs clipscan[evaluate])"),
    "threshold": ("clipscan.cli.threshold",
                  "set thresholds for a target false-positive rate on real images (needs clipscan[evaluate])"),
}


# Log levels on stderr: by default warnings and the one-line summaries (NOTICE); -v adds what clipscan
# decided and why (the backend chain's skips, the decoding, the graph style); -vv debug; -q errors only.
NOTICE = 25
logging.addLevelName(NOTICE, "NOTICE")


def _verbosity(defaults: bool) -> argparse.ArgumentParser:
    """-v/-q, accepted before or after the command."""
    p = argparse.ArgumentParser(add_help=False)
    p.add_argument("-v", "--verbose", action="count", default=0 if defaults else argparse.SUPPRESS,
                   help="also say what was decided and why (backends skipped, decoding...) and show what ONNX "
                        "Runtime and Ray print while they work (calibration, cluster start); -vv for debug")
    p.add_argument("-q", "--quiet", action="store_true", default=False if defaults else argparse.SUPPRESS,
                   help="only errors on stderr (no summary line)")
    return p


def chosen_command(argv: list[str]) -> str | None:
    """The command named in `argv`: its first token that is not an option (the top-level options take
    no value). None when there is none or it is not a command (argparse then says so)."""
    first = next((a for a in argv if not a.startswith("-")), None)
    return first if first in COMMANDS else None


def build_parser(command: str | None = None, module=None) -> argparse.ArgumentParser:
    """The top-level parser with every command listed; only `command` gets its arguments (from `module`)."""
    parser = argparse.ArgumentParser(prog="clipscan", description=f"The `clipscan` command line: "
                                                                  f"{', '.join(COMMANDS)}.",
                                     parents=[_verbosity(True)])
    parser.add_argument("--version", action="version", version=f"clipscan {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    common = _verbosity(False)  # every command takes -v/-q
    for name, (_, help_text) in COMMANDS.items():
        p = sub.add_parser(name, help=help_text, parents=[common])
        if name == command:
            module.add_arguments(p)
    return parser


def _silence_stdout_if_broken(error: OSError) -> None:
    """After stdout failed (ENOSPC, EPIPE), point it at /dev/null so the exit flush cannot fail again."""
    if getattr(error, "filename", None) is None:
        try:
            devnull = os.open(os.devnull, os.O_WRONLY)
            os.dup2(devnull, sys.stdout.fileno())
        except (OSError, ValueError):
            pass


def bug_line(command: str) -> str:
    """The line printed under the traceback of an unexpected exception."""
    return (f"clipscan {command}: internal error: the exception above is a bug in clipscan {__version__}, not a "
            "mistake in the command (its exit code 1 means this bug here, not a failed input). Please report it "
            "to the clipscan maintainers with this traceback, the command line and `clipscan --version`")


def run_command(command: str, run, args: argparse.Namespace) -> int:
    """Run a command. A ClipscanError (what was asked cannot be done) and an error of the machine (disk,
    permissions, stdout) become a one-line message and exit code 2; any other exception is a bug: its
    traceback and `bug_line` on stderr, exit code 1."""
    from clipscan.runtime.errors import ClipscanError

    try:
        return run(args)
    except ClipscanError as e:
        print(f"clipscan {command}: error: {e}", file=sys.stderr)
        return EXIT_USAGE
    except BrokenPipeError:  # the reader of stdout went away (`| head`): not an error
        _silence_stdout_if_broken(OSError())
        return EXIT_OK
    except OSError as e:
        # The machine refused a read or a write: a full disk, a permission denied, a folder where a file was
        # meant (the error names the file), or a full or closed stdout. clipscan cannot fix these and the
        # user can, from the one line; a traceback would only hide the file name. An OSError that names no
        # file and is none of these (a socket error clipscan should have explained) is a bug, below.
        if getattr(e, "filename", None) is None and e.errno not in ENVIRONMENT_ERRNOS:
            return _bug(command)
        _silence_stdout_if_broken(e)
        where = f" ({e.filename})" if getattr(e, "filename", None) else ""
        print(f"clipscan {command}: error: could not read or write{where}: {e.strerror or e}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        done = ("rows already written are complete; --resume continues" if command == "scan" else
                "nothing half-written was left at the output")
        print(f"clipscan {command}: interrupted; {done}", file=sys.stderr)
        return EXIT_INTERRUPTED
    except Exception:  # noqa: BLE001  anything else is a bug in clipscan: say so, with its traceback
        return _bug(command)


def _bug(command: str) -> int:
    """Print the exception being handled with its traceback, then `bug_line`; the exit code of a bug."""
    traceback.print_exc(file=sys.stderr)
    print(bug_line(command), file=sys.stderr)
    return EXIT_BUG


# Libraries that leave folders in $TMPDIR unless told otherwise: torch's compile cache (torchinductor_<user>,
# written while torch.export traces a model) goes into a folder of this run, removed at exit. Ray's session
# folder is handled where Ray starts (clipscan.distributed.cluster.session).
SCRATCH_ENV = {"TORCHINDUCTOR_CACHE_DIR": "torchinductor"}


@contextlib.contextmanager
def library_scratch():
    """For the block, each SCRATCH_ENV variable the user has not set points into a temporary folder; after it,
    the variables are unset again and the folder is gone."""
    unset = [k for k in SCRATCH_ENV if k not in os.environ]
    if not unset:
        yield
        return
    folder = tempfile.mkdtemp(prefix="clipscan-")
    os.environ.update({k: os.path.join(folder, SCRATCH_ENV[k]) for k in unset})
    try:
        yield
    finally:
        for k in unset:
            os.environ.pop(k, None)
        shutil.rmtree(folder, ignore_errors=True)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    command = chosen_command(argv)
    module = importlib.import_module(COMMANDS[command][0]) if command else None
    args = build_parser(command, module).parse_args(argv)
    level = logging.ERROR if args.quiet else {0: NOTICE, 1: logging.INFO}.get(args.verbose, logging.DEBUG)
    logging.basicConfig(level=level, format="clipscan: %(message)s", stream=sys.stderr)
    from clipscan.runtime.failed_gates import new_command

    new_command()  # a model that failed its gates is warned about once per command
    with library_scratch():
        return run_command(args.command, module.run, args)
