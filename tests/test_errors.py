"""One exception hierarchy, and bugs that are not dressed up as user mistakes.

Read statically from the package source (as tests/test_layering.py reads imports): every exception class the
package defines is a ClipscanError, and no code builds a bare ValueError or FileNotFoundError (a user
mistake raises a ClipscanError subclass; an internal invariant a RuntimeError, TypeError or AssertionError).
Then the CLI: a user mistake is one line and exit code 2; a bug is its traceback, one "internal error"
line and exit code 1; a failed input is exit code 1 without either.
"""
from __future__ import annotations

import argparse
import ast
import builtins
import errno
import importlib
import os
import subprocess
import sys
from pathlib import Path

import pytest

from clipscan.cli import EXIT_BUG, EXIT_INTERRUPTED, EXIT_OK, EXIT_USAGE, bug_line, run_command
from clipscan.runtime.errors import ClipscanError, InputNotFoundError, InvalidArgumentError

from .conftest import REPO
from .test_layering import PACKAGES

BUILTIN_EXCEPTIONS = {n for n in dir(builtins) if isinstance(getattr(builtins, n), type)
                      and issubclass(getattr(builtins, n), BaseException)}
BARE = ("ValueError", "FileNotFoundError")  # what a user mistake used to raise, and what a bug raises too


def _sources(folder: str) -> list[tuple[str, Path, ast.Module]]:
    """(module name, file, parsed tree) of every .py file under `folder`."""
    root, out = REPO / folder, []
    for path in sorted(root.rglob("*.py")):
        parts = list(path.relative_to(root).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        out.append((".".join([PACKAGES[folder], *parts]), path, ast.parse(path.read_text(), str(path))))
    return out


def _base_name(node: ast.expr) -> str | None:
    return node.id if isinstance(node, ast.Name) else node.attr if isinstance(node, ast.Attribute) else None


def exception_classes() -> list[tuple[str, str, int]]:
    """(module, class name, line) of every class in the package that derives from an exception (directly or
    through another class of the package)."""
    classes = [(module, node, path) for folder in PACKAGES for module, path, tree in _sources(folder)
               for node in ast.walk(tree) if isinstance(node, ast.ClassDef)]
    known = set(BUILTIN_EXCEPTIONS)
    while True:  # a class is an exception when one of its bases is one; repeat until nothing new is found
        found = {node.name for _, node, _ in classes if any(_base_name(b) in known for b in node.bases)}
        if found <= known:
            break
        known |= found
    return [(module, node.name, node.lineno) for module, node, _ in classes
            if any(_base_name(b) in known for b in node.bases)]


def test_the_static_reading_finds_the_exception_classes():
    found = {(m, c) for m, c, _ in exception_classes()}
    # one of each kind: the root, a class two levels down, one outside runtime, a private one
    for expected in [("clipscan.runtime.errors", "ClipscanError"), ("clipscan.runtime.v2_wire", "WireError"),
                     ("clipscan.triton.launch", "TritonServerError"), ("clipscan.runtime.remote", "_Rejected")]:
        assert expected in found, sorted(found)


def test_every_exception_class_of_the_package_is_a_clipscan_error():
    outside = []
    for module, name, line in exception_classes():
        cls = getattr(importlib.import_module(module), name)
        if not issubclass(cls, ClipscanError):
            outside.append(f"{module}.{name} (line {line}): bases {[b.__name__ for b in cls.__mro__[1:-1]]}")
    assert not outside, "exception classes outside clipscan.runtime.errors.ClipscanError:\n" + "\n".join(outside)


def bare_errors(folder: str) -> list[str]:
    """Every place under `folder` that builds a ValueError or FileNotFoundError (raised or returned)."""
    hits = []
    for _, path, tree in _sources(folder):
        for node in ast.walk(tree):
            target = node.exc if isinstance(node, ast.Raise) else node if isinstance(node, ast.Call) else None
            if isinstance(target, ast.Call):
                target = target.func
            if isinstance(target, ast.Name) and target.id in BARE:
                hits.append(f"{path.relative_to(REPO)}:{node.lineno}: {target.id}")
    return sorted(set(hits))


@pytest.mark.parametrize("folder", list(PACKAGES))
def test_no_bare_value_or_file_not_found_error_is_built(folder):
    hits = bare_errors(folder)
    assert not hits, ("a user mistake raises a ClipscanError subclass (clipscan.runtime.errors); an internal "
                      "invariant raises RuntimeError, TypeError or AssertionError:\n" + "\n".join(hits))


def test_the_static_reading_sees_a_bare_raise(tmp_path, monkeypatch):
    """The reading above is not blind: a raise ValueError(...) in a package file is found."""
    folder = tmp_path / "runtime"
    folder.mkdir()
    (folder / "m.py").write_text("def f(x):\n    if x:\n        raise ValueError('x')\n    return FileNotFoundError\n")
    monkeypatch.setattr(sys.modules[__name__], "REPO", tmp_path)
    assert bare_errors("runtime") == ["runtime/m.py:3: ValueError"]


def test_user_mistake_classes_are_still_the_builtins_python_callers_catch():
    assert issubclass(InvalidArgumentError, ValueError)
    assert issubclass(InputNotFoundError, FileNotFoundError)
    from clipscan.export.errors import ExportCheckError
    from clipscan.report import RowsError
    from clipscan.runtime.errors import ExportCheckError as same
    from clipscan.runtime.errors import RowsError as also_same

    assert ExportCheckError is same and RowsError is also_same  # defined once
    assert issubclass(RowsError, ValueError) and issubclass(ExportCheckError, RuntimeError)


# -- the CLI ------------------------------------------------------------------------------------------

def _run(raising: BaseException, capsys) -> tuple[int, str]:
    def run(args):
        raise raising

    code = run_command("scan", run, argparse.Namespace())
    return code, capsys.readouterr().err


def test_a_clipscan_error_is_one_line_and_exit_2(capsys):
    code, err = _run(InvalidArgumentError("--resume needs --output FILE"), capsys)
    assert code == EXIT_USAGE == 2
    assert err == "clipscan scan: error: --resume needs --output FILE\n"


def test_a_bare_value_error_is_a_bug_with_its_traceback(capsys):
    code, err = _run(ValueError("invalid literal for int() with base 10: 'x'"), capsys)
    assert code == EXIT_BUG == 1
    assert err.startswith("Traceback (most recent call last):"), err
    assert "ValueError: invalid literal for int() with base 10: 'x'" in err
    assert err.rstrip("\n").splitlines()[-1] == bug_line("scan")
    assert "bug in clipscan" in bug_line("scan") and "report it" in bug_line("scan")


@pytest.mark.parametrize("error", [KeyError("path"), TypeError("'NoneType' object is not subscriptable"),
                                   FileNotFoundError(errno.ENOENT, "No such file or directory"),
                                   ConnectionRefusedError(errno.ECONNREFUSED, "Connection refused")],
                         ids=["KeyError", "TypeError", "FileNotFoundError-no-file-name", "ConnectionRefused"])
def test_other_exceptions_are_bugs(error, capsys):
    code, err = _run(error, capsys)
    assert code == EXIT_BUG
    assert "Traceback" in err and err.rstrip("\n").splitlines()[-1] == bug_line("scan")


@pytest.mark.parametrize("error, words", [
    (PermissionError(errno.EACCES, "Permission denied", "/srv/out.jsonl"), "(/srv/out.jsonl): Permission denied"),
    (OSError(errno.ENOSPC, "No space left on device"), "No space left on device"),
    (IsADirectoryError(errno.EISDIR, "Is a directory", "/srv/out"), "(/srv/out): Is a directory"),
], ids=["permission", "disk-full", "folder"])
def test_errors_of_the_machine_are_one_line_and_exit_2(error, words, capsys):
    code, err = _run(error, capsys)
    assert code == EXIT_USAGE
    assert err.count("\n") == 1 and words in err and "Traceback" not in err, err


def test_interrupt_and_closed_pipe(capsys):
    assert _run(KeyboardInterrupt(), capsys)[0] == EXIT_INTERRUPTED
    assert _run(BrokenPipeError(errno.EPIPE, "Broken pipe"), capsys) == (EXIT_OK, "")


def _clipscan(*args: str, code: str | None = None, cwd: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONWARNINGS": "ignore"}
    argv = [sys.executable, "-c", code, *args] if code else [sys.executable, "-m", "clipscan", *args]
    return subprocess.run(argv, capture_output=True, text=True, timeout=300, env=env, cwd=cwd)


def test_a_user_mistake_in_a_real_command_is_one_line_exit_2(tmp_path):
    proc = _clipscan("scan", "--resume", str(REPO / "samples"), cwd=tmp_path)
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.splitlines() == ["clipscan scan: error: --resume needs --output FILE: the file whose rows "
                                        "say what is already done"]
    proc = _clipscan("info", str(tmp_path / "missing.onnx"), cwd=tmp_path)
    assert proc.returncode == 2 and len(proc.stderr.splitlines()) == 1 and "missing.onnx" in proc.stderr, proc.stderr


BUG = """
import sys
import clipscan.cli.info as info

def describe_manifest(artifact):  # a stand-in for a bug: a builtin ValueError from deep inside a command
    return int(artifact.manifest.name)

info.describe_manifest = describe_manifest
from clipscan.cli import main
sys.exit(main(sys.argv[1:]))
"""


def test_a_bug_in_a_real_command_shows_its_traceback_and_exit_1(tmp_path):
    proc = _clipscan("info", code=BUG, cwd=tmp_path)
    assert proc.returncode == 1, proc.stderr
    lines = proc.stderr.rstrip("\n").splitlines()
    assert lines[0] == "Traceback (most recent call last):", proc.stderr
    assert any(ln.startswith("ValueError: invalid literal for int()") for ln in lines), proc.stderr
    assert 'in describe_manifest' in proc.stderr  # where the bug is
    assert lines[-1].startswith("clipscan info: internal error: the exception above is a bug in clipscan")
    assert proc.stdout == ""


def test_a_failed_input_is_exit_1_without_a_traceback_or_the_bug_line(tmp_path):
    """scan's exit code 1 (an input failed) stays distinguishable from a bug's: no traceback, no bug line."""
    (tmp_path / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 not really a JPEG")
    proc = _clipscan("scan", str(tmp_path / "broken.jpg"), cwd=tmp_path)
    assert proc.returncode == 1, proc.stderr
    assert "Traceback" not in proc.stderr and "internal error" not in proc.stderr, proc.stderr
    assert '"path"' in proc.stdout and "broken.jpg" in proc.stdout
