"""Write the generated parts of the documentation from the code that defines them.

    python tools/gen_docs.py            # rewrite every generated table and page
    python tools/gen_docs.py --check    # exit 1 and name each table that differs from its source

Two kinds of output:

- whole pages under docs/reference/ (the CLI reference, built from the argparse parsers);
- tables inside hand-written pages, between `<!-- gen:NAME -->` and `<!-- /gen:NAME -->` markers.

Each table's source lookup is one small function listed in TABLES (table name -> function), so a
registry that moves (or becomes a dataclass) changes one function here, nothing else.
tests/test_docs.py regenerates everything in memory and fails when a committed page differs.

Lives outside the package on purpose: it imports every layer (export needs torch), which no package
module may do.
"""
from __future__ import annotations

import argparse
import importlib
import re
import sys
from pathlib import Path
from typing import Callable

REPO = Path(__file__).resolve().parent.parent
DOCS = REPO / "docs"
FIX_COMMAND = "python tools/gen_docs.py"


# -- markdown helpers -------------------------------------------------------------------------------

def _cell(value) -> str:
    """One table cell: no newlines, pipes escaped."""
    return " ".join(str(value).split()).replace("|", "\\|")


def _code(value) -> str:
    return f"`{value}`" if str(value) else ""


def table(header: list[str], rows: list[list]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(_cell(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def _number(value) -> str:
    if isinstance(value, bool) or value is None:
        return str(value)
    if isinstance(value, int):
        return f"{value:,}"
    return f"{value:g}"


# -- the sources: one function per table ------------------------------------------------------------

def head_formats() -> str:
    """`--head FORMAT:PATH`: export/importers.py's importer table, described by each importer's docstring."""
    from clipscan.export.importers import IMPORTERS

    rows = []
    for name, importer in IMPORTERS.items():
        doc = (importer.__doc__ or "").strip()
        summary, _, rest = doc.partition("\n")
        rows.append([_code(name), summary, rest.strip()])
    return table(["format", "what it reads", "details"], rows)


def weights_formats() -> str:
    """`--weights-format`: export/weights_formats.py's table of backbone checkpoint formats."""
    from clipscan.export.weights_formats import WEIGHTS_FORMATS

    rows = [[_code(name), what, where] for name, (what, where) in WEIGHTS_FORMATS.items()]
    return table(["`--weights-format`", "what `--weights` is", "architecture and preprocessing"], rows)


def backends() -> str:
    """`--backend`: the backend registry (runtime/backends) and the order `auto` tries."""
    from clipscan.runtime.backends import AUTO_CHAIN, registry

    rows = []
    for name, entry in registry().items():
        auto = f"{AUTO_CHAIN.index(name) + 1}" if name in AUTO_CHAIN else "never (only when named)"
        rows.append([_code(name), entry.summary, auto, _code(entry.install_hint)])
    return table(["`--backend`", "what runs", "`auto` tries it", "install"], rows)


def serve_limits() -> str:
    """`clipscan serve` limits: serve/limits.py's table of (name, default, what it bounds)."""
    from clipscan.serve.limits import limits_table

    rows = [[_code(name), _number(default), what] for name, default, what in limits_table()]
    return table(["flag", "default", "what it bounds"], rows)


def serve_grpc_limits() -> str:
    """How each `clipscan serve` limit applies to the gRPC endpoint: serve/limits.py's `grpc` texts."""
    from clipscan.serve.limits import grpc_limits_table

    return table(["flag", "over gRPC"], [[_code(name), what] for name, what in grpc_limits_table()])


def _cli_choice_rows(command: str, flag: str) -> tuple[list, object, str]:
    """(choices, default, help) of one flag of one command, as its parser defines them."""
    module = importlib.import_module(_commands()[command][0])
    parser = _subparser(command, module)
    for action in parser._actions:
        if flag in action.option_strings:
            return list(action.choices or []), action.default, _help_text(action, parser.prog)
    raise LookupError(f"clipscan {command} has no {flag}")


def decode_modes() -> str:
    """`--decode`: the choices `clipscan scan` accepts, with its help."""
    choices, default, help_text = _cli_choice_rows("scan", "--decode")
    rows = [[_code(c), "yes" if c == default else ""] for c in choices]
    return table(["`--decode`", "default"], rows) + f"\n\n{help_text}"


def int8_targets() -> str:
    """`calibrate --target`: calibration/int8.py's TARGETS, with the CLI's help."""
    from clipscan.calibration.int8 import TARGETS

    _, default, help_text = _cli_choice_rows("calibrate", "--target")
    rows = [[_code(t), "yes" if t == default else ""] for t in TARGETS]
    return table(["`--target`", "default"], rows) + f"\n\n{help_text}"


def int8_recipes() -> str:
    """`calibrate --recipe`: calibration/int8.py's RECIPES (each a Recipe dataclass)."""
    from clipscan.calibration.int8 import RECIPES

    _, default, _ = _cli_choice_rows("calibrate", "--recipe")
    rows = []
    for name, r in RECIPES.items():
        ops = "MatMul/Gemm/Conv" if r.ops == "matmul" else r.ops
        rows.append([_code(name) + (" (default)" if name == default else ""), r.method,
                     _number(r.percentile) if r.method == "percentile" else "", ops,
                     "" if r.smooth_alpha is None else _number(r.smooth_alpha),
                     "yes" if r.keep_tail_float else "no"])
    return table(["`--recipe`", "calibration method", "percentile", "ops quantized", "SmoothQuant alpha",
                  "projection and heads in float"], rows)


def _thresholds():
    """The module that holds every pass/fail bar (it may move to another package: change this line)."""
    return importlib.import_module("clipscan.measure.thresholds")


def fidelity_bars() -> str:
    """The fidelity protocol's bars per precision (thresholds.BARS)."""
    t = _thresholds()
    names = list(t.BARS)
    fields = [("cosine_mean", "embedding cosine, mean >="), ("cosine_worst", "embedding cosine, worst >="),
              ("agreement", "decision agreement >="), ("srcc", "quality SRCC >="),
              ("batch_abs", "batch 1 vs batch N, max abs difference <=")]
    rows = [[label] + ["not gated" if getattr(t.BARS[p], f) is None else _number(getattr(t.BARS[p], f))
                       for p in names] for f, label in fields]
    return table(["bar"] + names, rows)


def other_gates() -> str:
    """The other named bars: verify's, export's own checks, calibrate's INT8 bar and search, draft decoding."""
    t = _thresholds()
    rows = [
        ["verify: preprocessing parity, max error (pixel units)", _number(t.PIXEL_MAX_ERROR)],
        ["verify: fewest images for a quality SRCC", _number(t.MIN_SRCC_IMAGES)],
        ["verify: margin around the threshold (logit units, `--margin`)", _number(t.DEFAULT_MARGIN)],
        ["verify: laundered agreement may fall below clean by", _number(t.ROBUST_SLACK)],
        ["verify: ... judged at the upper confidence bound, z", _number(t.ROBUST_CONFIDENCE_Z)],
        ["export: FP32 file vs PyTorch, embedding cosine >=", _number(t.EXPORT_FP32_MIN_COSINE)],
        ["export: FP16 file vs PyTorch FP32, cosine mean >=", _number(t.EXPORT_FP16_MIN_COSINE_MEAN)],
        ["export: FP16 file vs PyTorch FP32, cosine worst >=", _number(t.EXPORT_FP16_MIN_COSINE_WORST)],
    ]
    rows += [[f"calibrate (INT8 vs the FP32 graph): {k} >=", _number(v)] for k, v in t.INT8_STRICT.items()]
    rows += [
        ["calibrate --search: a round must cut the shortfall by at least", _number(t.SEARCH_MIN_GAIN)],
        ["draft vs exact decoding: decision agreement >=", _number(t.DRAFT_MIN_AGREEMENT)],
        ["draft vs exact decoding: embedding cosine mean >=", _number(t.DRAFT_MIN_COSINE_MEAN)],
        ["draft vs exact decoding: fewest images", _number(t.DRAFT_MIN_IMAGES)],
    ]
    return table(["bar", "value"], rows)


def ray_defaults() -> str:
    """`clipscan scan --engine ray`: clipscan.distributed's DEFAULTS."""
    from clipscan.distributed import DEFAULTS

    rows = [[_code(name), "see below" if value is None else _number(value)] for name, value in DEFAULTS.items()]
    return table(["setting", "default"], rows)


def manifest_values() -> str:
    """The values the manifest's enumerated fields may take (runtime/manifest.py's tuples)."""
    from clipscan.runtime import manifest as m
    from clipscan.runtime.graph_crops import GRAPH_CROP_AGGREGATES

    rows = [
        ["`schema_version`", m.SUPPORTED_SCHEMA_VERSIONS],
        ["`precision`", m.PRECISIONS],
        ["`preprocess.exif_orientation`", m.EXIF_POLICIES],
        ["`preprocess.bit_depth`", m.BIT_DEPTH_POLICIES],
        ["`preprocess.resize.mode`", m.RESIZE_MODES],
        ["`preprocess.resize.interpolation`", m.INTERPOLATIONS],
        ["`preprocess.crop.mode`", m.CROP_MODES],
        ["`preprocess.graph_crops.aggregate`", GRAPH_CROP_AGGREGATES],
        ["`preprocess.convert.alpha`", m.ALPHA_POLICIES],
        ["`preprocess.convert.when`", m.CONVERT_WHEN],
        ["`heads[].task`", m.HEAD_TASKS],
        ["`decision.ensemble`", m.ENSEMBLE_RULES],
    ]
    return table(["field", "values"], [[f, ", ".join(f"`{v}`" for v in values)] for f, values in rows])


def demo_contract() -> str:
    """The services' tensors for the bundled demo model (runtime.contract's specs from its manifest)."""
    from clipscan.runtime import contract, load_artifact
    from clipscan.runtime.model_name import model_name_for

    manifest = load_artifact(None).manifest
    name = model_name_for(manifest.name)
    pixels = contract.pixels_model_name(name)

    def row(what, s):
        return [what, _code(s.name), s.datatype, _code(s.shape()), _code(s.config_dims)]

    rows = [row(f"input of `{name}`", s) for s in contract.input_specs(manifest)]
    rows += [row(f"input of `{pixels}`", s) for s in contract.pixels_specs(manifest)]
    rows += [row("output", s) for s in contract.output_specs(manifest)]
    return table(["", "tensor", "datatype", "shape (-1: the batch)", "config `dims`"], rows)


def triton_knobs() -> str:
    """`clipscan triton`'s performance knobs (clipscan.triton.knobs.KNOBS)."""
    from clipscan.triton.knobs import KNOBS

    return table(["flag", "what it sets", "default"], [[_code(k.flag), k.what, k.default] for k in KNOBS])


# table name -> (function that renders it, the page that holds it between markers)
TABLES: dict[str, tuple[Callable[[], str], str]] = {
    "head-formats": (head_formats, "guides/export.md"),
    "weights-formats": (weights_formats, "guides/export.md"),
    "backends": (backends, "guides/backends.md"),
    "serve-limits": (serve_limits, "guides/serve.md"),
    "serve-grpc-limits": (serve_grpc_limits, "guides/serve.md"),
    "decode-modes": (decode_modes, "guides/scan.md"),
    "int8-targets": (int8_targets, "guides/int8.md"),
    "int8-recipes": (int8_recipes, "guides/int8.md"),
    "fidelity-bars": (fidelity_bars, "guides/verify.md"),
    "other-gates": (other_gates, "guides/verify.md"),
    "ray-defaults": (ray_defaults, "guides/ray.md"),
    "triton-knobs": (triton_knobs, "guides/triton.md"),
    "manifest-values": (manifest_values, "reference/manifest.md"),
    "demo-contract": (demo_contract, "reference/tensor-contract.md"),
}


# -- the CLI reference: a whole page from the argparse parsers ---------------------------------------

def _commands() -> dict[str, tuple[str, str]]:
    from clipscan.cli import COMMANDS

    return COMMANDS


def _subparser(command: str, module) -> argparse.ArgumentParser:
    """The parser of one command as `clipscan <command>` builds it (clipscan.cli.build_parser)."""
    from clipscan.cli import build_parser

    parser = build_parser(command, module)
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return sub.choices[command]


def _help_text(action: argparse.Action, prog: str) -> str:
    """The help string with argparse's %(default)s-style fields filled in, as --help shows it."""
    text = action.help or ""
    if "%" in text:
        params = {k: v for k, v in vars(action).items() if v is not argparse.SUPPRESS}
        params["prog"] = prog
        if params.get("choices") is not None:
            params["choices"] = ", ".join(str(c) for c in params["choices"])
        text = text % params
    return text


def _value(action: argparse.Action) -> str:
    if action.nargs == 0 or (not action.option_strings and action.nargs is None and action.choices is None):
        return ""  # a flag, or a plain positional (its name is in the first column)
    if action.choices is not None:
        return " | ".join(f"`{c}`" for c in action.choices)  # _cell escapes the pipes
    metavar = action.metavar or (action.dest.upper() if action.option_strings else action.dest)
    if isinstance(metavar, tuple):
        metavar = " ".join(metavar)
    count = {"?": f"[{metavar}]", "*": f"[{metavar} ...]", "+": f"{metavar} [...]"}.get(action.nargs, metavar)
    if isinstance(action.nargs, int) and action.nargs > 1:
        count = " ".join([metavar] * action.nargs)
    return f"`{count}`"


def _default(action: argparse.Action) -> str:
    default = action.default
    if action.nargs == 0 or default is None or default is argparse.SUPPRESS or default in ([], ""):
        return ""
    return f"`{default}`"


def _usage(command: str, parser: argparse.ArgumentParser) -> str:
    positionals = []
    for a in parser._actions:
        if not a.option_strings:
            name = a.metavar or a.dest
            positionals.append({"?": f"[{name}]", "*": f"[{name} ...]", "+": f"{name} [...]"}.get(a.nargs, name))
    return " ".join(["clipscan", command, "[OPTIONS]", *positionals])


def _command_section(command: str, one_line: str) -> str:
    module = importlib.import_module(_commands()[command][0])
    parser = _subparser(command, module)
    out = [f"## clipscan {command}", "", one_line[0].upper() + one_line[1:] + ".", "",
           "```text", _usage(command, parser), "```", ""]
    if parser.description:
        out += [" ".join(parser.description.split()), ""]
    for group in parser._action_groups:
        actions = [a for a in group._group_actions if not isinstance(a, argparse._HelpAction)]
        if not actions:
            continue
        title = {"positional arguments": "Arguments", "options": "Options",
                 "optional arguments": "Options"}.get(group.title, group.title[0].upper() + group.title[1:])
        rows = [[", ".join(f"`{s}`" for s in a.option_strings) or f"`{a.metavar or a.dest}`", _value(a),
                 _default(a), _help_text(a, parser.prog)] for a in actions]
        out += [f"**{title}**", "", table(["argument", "value", "default", "meaning"], rows), ""]
    return "\n".join(out)


def cli_reference() -> str:
    head = ["# CLI reference", "",
            f"<!-- generated by `{FIX_COMMAND}` from the argparse parsers of clipscan/cli: do not edit -->", "",
            "Every command takes `-v`/`--verbose` (say what was decided and why; `-vv` debug) and `-q`/`--quiet` "
            "(errors only), before or after the command name. Exit codes: `0` success, `1` some input or gate "
            "failed (the output says which), `2` the command could not run (a usage mistake, a missing file, "
            "model or backend, a full disk: one sentence on stderr), `130` interrupted. A bug in clipscan prints "
            "its traceback and a line `clipscan COMMAND: internal error: ...` that says how to report it, and "
            "exits 1 too: a failed input never prints a traceback.", ""]
    sections = [_command_section(name, one_line) for name, (_, one_line) in _commands().items()]
    return "\n".join(head) + "\n" + "\n".join(sections).rstrip() + "\n"


# page path -> function that renders the whole page
PAGES: dict[str, Callable[[], str]] = {
    "reference/cli.md": cli_reference,
}


# -- writing and checking ---------------------------------------------------------------------------

def _marker_re(name: str) -> re.Pattern:
    return re.compile(rf"(<!-- gen:{re.escape(name)} -->\n)(.*?)(<!-- /gen:{re.escape(name)} -->)", re.S)


def render(docs: Path = DOCS) -> dict[Path, str]:
    """Every generated file's full new text (pages with tables, and whole generated pages), in memory."""
    texts: dict[Path, str] = {}
    for name, (make, page) in TABLES.items():
        path = docs / page
        text = texts.get(path) or path.read_text()
        pattern = _marker_re(name)
        if not pattern.search(text):
            raise LookupError(f"{path} has no <!-- gen:{name} --> ... <!-- /gen:{name} --> markers")
        body = make().rstrip() + "\n"
        texts[path] = pattern.sub(lambda m: m.group(1) + body + m.group(3), text, count=1)
    for page, make in PAGES.items():
        texts[docs / page] = make()
    return texts


def stale(docs: Path = DOCS) -> list[str]:
    """Names of the tables and pages whose committed text differs from what their sources give now."""
    found = []
    for name, (make, page) in TABLES.items():
        m = _marker_re(name).search((docs / page).read_text())
        if m is None or m.group(2) != make().rstrip() + "\n":
            found.append(f"table {name} in docs/{page}")
    for page, make in PAGES.items():
        path = docs / page
        if not path.exists() or path.read_text() != make():
            found.append(f"page docs/{page}")
    return found


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--check", action="store_true", help="write nothing; exit 1 when a generated part is stale")
    args = ap.parse_args(argv)
    if args.check:
        found = stale()
        for item in found:
            print(f"stale: {item}", file=sys.stderr)
        if found:
            print(f"run `{FIX_COMMAND}` to regenerate", file=sys.stderr)
        return 1 if found else 0
    for path, text in render().items():
        if not path.exists() or path.read_text() != text:
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(text)
            print(f"wrote {path.relative_to(REPO)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
