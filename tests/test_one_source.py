"""Every list the CLI offers is read from the registry that defines it: each command's choices are exactly
its registry's names (or the declared part of it), every name and description shows up in its --help,
no command types out a list of its own, and the code that acts on a value accepts what the CLI offers."""
from __future__ import annotations

import argparse
import ast
import importlib
import re
from pathlib import Path

import pytest

from clipscan.bench.config import DECODES as BENCH_DECODES
from clipscan.bench.config import MODES as BENCH_MODES
from clipscan.calibration.recipes import METHODS, RECIPE_HELP, RECIPES, TARGETS
from clipscan.cli import COMMANDS, build_parser
from clipscan.cli.scan_ray import ENGINES
from clipscan.export.choices import EXPORT_PRECISIONS, GRAPH_STYLES, HEAD_FORMATS
from clipscan.runtime.backends import AUTO_CHAIN, backend_choices, registry
from clipscan.runtime.manifest import ENSEMBLE_RULES, PRECISIONS, RESIZE_CHOICES
from clipscan.runtime.results import WRITERS
from clipscan.runtime.scanner import DECODE_MODES
from clipscan.triton.repository import GRAPHS, KINDS, LAYOUTS

from .conftest import REPO


def _command(command: str) -> argparse.ArgumentParser:
    parser = build_parser(command, importlib.import_module(COMMANDS[command][0]))
    subparsers = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return subparsers.choices[command]


def _option(command: str, flag: str) -> tuple[argparse.Action, str, str]:
    """The option's action, its help text (before line wrapping) and the command's whole --help."""
    parser = _command(command)
    action = next(a for a in parser._actions if flag in a.option_strings)
    return action, action.help or "", parser.format_help()


# (command, flag, registry name -> description, whether --help spells out each description)
CHOICES = [
    *[(c, "--backend", backend_choices(), c != "serve") for c in ("scan", "serve", "triton")],
    *[(c, "--decode", DECODE_MODES, True) for c in ("scan", "serve", "triton")],
    ("bench", "--decode", BENCH_DECODES, True),
    ("bench", "--mode", BENCH_MODES, True),
    *[(c, "--resize-mode", RESIZE_CHOICES, True) for c in ("export", "verify", "calibrate")],
    ("export", "--ensemble", ENSEMBLE_RULES, True),
    ("export", "--graph", GRAPH_STYLES, True),
    ("export", "--precision", EXPORT_PRECISIONS, True),
    ("calibrate", "--target", TARGETS, True),
    ("calibrate", "--recipe", RECIPE_HELP, True),
    ("calibrate", "--method", METHODS, True),
    ("triton", "--kind", KINDS, True),
    ("triton", "--layout", LAYOUTS, True),
    ("triton", "--graph", GRAPHS, True),
    ("triton", "--precision", PRECISIONS, True),
    ("scan", "--format", {name: "" for name in WRITERS}, False),
    ("scan", "--engine", ENGINES, True),
]


@pytest.mark.parametrize("command, flag, names, described", CHOICES,
                         ids=[f"{c}{f}" for c, f, _, _ in CHOICES])
def test_each_choice_list_is_its_registry(command, flag, names, described):
    action, text, page = _option(command, flag)
    assert list(action.choices) == list(names), f"clipscan {command} {flag} offers {list(action.choices)}"
    assert "{" + ",".join(names) + "}" in page  # --help shows the values
    for name, description in names.items():
        if described:
            assert f"{name}: {description}" in text or f"{name} (default): {description}" in text
    if action.default is not None:
        assert action.default in names


def test_derived_subsets_say_what_they_leave_out():
    """Where a command offers part of a registry, the part is the registry's own entries."""
    assert set(BENCH_DECODES) == set(DECODE_MODES) - {"auto"}
    assert set(EXPORT_PRECISIONS) < set(PRECISIONS) and "int8" not in EXPORT_PRECISIONS
    assert set(RECIPE_HELP) == set(RECIPES)
    assert list(backend_choices()) == ["auto", *registry()] and set(AUTO_CHAIN) <= set(registry())


@pytest.mark.parametrize("command", ["export", "verify", "calibrate"])
def test_head_help_lists_every_importer_format(command):
    action, _, _ = _option(command, "--head")
    listed = action.help.split("FORMAT one of ", 1)[1].split(" (", 1)[0].split(", ")
    assert listed == list(HEAD_FORMATS)


def test_every_head_format_has_its_importer():
    from clipscan.export.importers import IMPORTERS, parse_named_head_arg

    assert list(IMPORTERS) == list(HEAD_FORMATS)
    for name in HEAD_FORMATS:
        assert parse_named_head_arg(f"{name}:some/file.pt") == (None, name, Path("some/file.pt"))


def test_every_registry_entry_is_one_line():
    """The docs render each registry as a table: one non-empty line per entry."""
    for registry_ in (backend_choices(), DECODE_MODES, BENCH_MODES, RESIZE_CHOICES, ENSEMBLE_RULES, PRECISIONS,
                      GRAPH_STYLES, HEAD_FORMATS, TARGETS, METHODS, RECIPE_HELP, KINDS, LAYOUTS, GRAPHS, ENGINES):
        for name, text in registry_.items():
            assert text.strip() and "\n" not in text, name


def test_no_command_types_out_a_list_of_choices():
    """A `choices=` given as a literal tuple or list in a command module is a copy; it must name its registry."""
    copies = []
    for path in sorted((REPO / "clipscan" / "cli").glob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            literal = isinstance(node, ast.keyword) and isinstance(getattr(node, "value", None), (ast.Tuple, ast.List))
            if literal and node.arg == "choices":
                copies.append(f"{path.name}:{node.value.lineno}")
    assert copies == []


def test_the_runtime_takes_every_decode_mode_the_cli_offers():
    """The Scanner and Triton's ensemble preprocess take every mode and decide it the same way."""
    from clipscan.runtime import Scanner
    from clipscan.runtime.errors import InvalidArgumentError
    from clipscan.triton.ensemble_steps import Preparer

    for mode in DECODE_MODES:
        with Scanner(decode=mode) as scanner:
            assert scanner.decode in ("exact", "draft")
            assert Preparer(scanner.manifest, mode).draft_size == scanner.draft_size
    for make in (lambda: Scanner(decode="fast"), lambda: Preparer(scanner.manifest, "fast")):
        with pytest.raises(InvalidArgumentError, match=re.escape(", ".join(map(repr, DECODE_MODES)))):
            make()


def test_triton_knob_flags_are_the_knob_registry():
    """`clipscan triton` has one flag per knob of clipscan.triton.knobs.KNOBS (help from the registry), and
    `clipscan bench --triton` the same knobs prefixed; `--serve-modes` names every serve-bench mode."""
    from clipscan.bench.serve_bench import SERVE_MODES
    from clipscan.triton.knobs import KNOBS

    knob_flags = {a.option_strings[0] for a in _command("triton")._actions
                  if a.option_strings and a.dest in {k.name for k in KNOBS}}
    assert knob_flags == {k.flag for k in KNOBS}
    for knob in KNOBS:
        _, text, _ = _option("triton", knob.flag)
        assert knob.what in text and knob.default in text
        action, _, _ = _option("bench", "--triton-" + knob.flag[2:])
        assert action.dest == "triton_" + knob.name
    _, text, _ = _option("bench", "--serve-modes")
    assert all(f"{name}: {what}" in text for name, what in SERVE_MODES.items())
