"""Arguments and help texts that several commands share.

- the files of the PyTorch original (--arch/--weights/--heads/--head/--quick-gelu/--gelu): export,
  verify and calibrate; `heads_from(args)` turns --heads/--head into the list the libraries take;
- --no-spin (ONNX Runtime's CPU worker threads): scan and bench;
- `choices_help`: the help text of an option whose values come from a registry (name -> one-line
  description), so that no command keeps its own copy of a list the code defines once.
"""
from __future__ import annotations

import argparse
from collections.abc import Mapping

from clipscan.runtime.backends import backend_choices

from clipscan.runtime.errors import InvalidArgumentError

NO_SPIN_HELP = ("let ONNX Runtime's CPU worker threads sleep between calls instead of spinning: faster when "
                "decoding large images competes for the cores (e.g. 12 MP JPEGs with --decode draft), "
                "slower for small images (see the README)")

AS_GIVEN_TO_EXPORT = ", as given to export"
# verify, calibrate and bench: the artifact's manifest records what export was given (export/recorded.py)
AS_RECORDED = " (default: what export was given, recorded in the artifact's manifest)"
# --backend values: auto, then every backend of clipscan.runtime.backends.registry()
BACKENDS = tuple(backend_choices())


def choices_help(registry: Mapping[str, str], default: str | None = None) -> str:
    """'a: what a does; b (default): what b does' for every entry of a registry, in its order."""
    return "; ".join(f"{name}{' (default)' if name == default else ''}: {text}" for name, text in registry.items())


def backend_help(default: str | None = "auto") -> str:
    """--backend's help: every backend with its summary (`clipscan backends` says which can run here)."""
    return (choices_help(backend_choices(), default) + ". A backend named explicitly that cannot start is an "
            "error, never a fallback (`clipscan backends` lists them with their status)")


def add_decode(p, modes: Mapping[str, str] | None = None, default: str = "auto") -> None:
    """--decode: `modes` (default: every mode of the Scanner's DECODE_MODES), each with its description."""
    from clipscan.runtime.scanner import DECODE_MODES

    modes = DECODE_MODES if modes is None else modes
    p.add_argument("--decode", choices=tuple(modes), default=default,
                   help="JPEG decoding: " + choices_help(modes, default))


def head_formats_help() -> str:
    """--head's help, with the formats of clipscan.export.choices.HEAD_FORMATS (torch-free)."""
    from clipscan.export.choices import HEAD_FORMATS

    return (f"a head as [NAME=]FORMAT:FILE, FORMAT one of {', '.join(HEAD_FORMATS)} (a bare FILE is a clipscan "
            "heads file); repeatable (several heads share one backbone pass); NAME= in front names the head "
            "everywhere (outputs, verify's gates and plots), e.g. fake_a=univfd:FILE")


def add_original_args(p, *, required: bool, as_given: str = "") -> None:
    """--arch/--weights/--heads/--head/--quick-gelu/--gelu: the files of the PyTorch original."""
    from clipscan.runtime.manifest import RESIZE_CHOICES

    p.add_argument("--arch", help="open_clip model name (e.g. ViT-B-32) or a model-config .json; required unless "
                                  "--weights is a Hugging Face CLIP folder, whose config.json says it" + as_given)
    p.add_argument("--weights", required=required,
                   help="local backbone checkpoint (.pt/.bin/.safetensors) or a Hugging Face CLIP folder" + as_given)
    p.add_argument("--heads", help="clipscan heads file (see clipscan.export.heads)" + as_given)
    p.add_argument("--head", action="append", default=[], metavar="[NAME=]FORMAT:PATH",
                   help=head_formats_help() + as_given)
    p.add_argument("--resize-mode", choices=tuple(RESIZE_CHOICES),
                   help="one resize for every head (published heads set their authors' own; heads that differ "
                        "cannot share a pass unless this chooses one): " + choices_help(RESIZE_CHOICES) + as_given)
    act = p.add_mutually_exclusive_group()
    act.add_argument("--quick-gelu", dest="quick_gelu", action="store_true", default=None,
                     help="the checkpoint uses QuickGELU (OpenAI weights); default: from the config")
    act.add_argument("--gelu", dest="quick_gelu", action="store_false", help="the checkpoint uses plain GELU")


def heads_from(args: argparse.Namespace, *, required: bool = False, as_given: str = "") -> list[str]:
    """--heads FILE then every --head FORMAT:PATH, as one list; `required`: none at all is an error."""
    heads = ([args.heads] if args.heads else []) + list(args.head)
    if required and not heads:
        raise InvalidArgumentError("no head given: pass --heads FILE (clipscan format) and/or --head "
                                   "[NAME=]FORMAT:PATH" + as_given)
    return heads


def add_no_spin(p) -> None:
    p.add_argument("--no-spin", action="store_true", help=NO_SPIN_HELP)


# -- numbers checked at parse time: argparse names the flag in its message ("argument -b/--batch-size: ...")

def _number(cast, what: str, ok):
    def parse(text: str):
        try:
            value = cast(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not {'an integer' if cast is int else 'a number'}")
        if value != value or not ok(value):  # NaN fails too
            raise argparse.ArgumentTypeError(f"{text} is not {what}")
        return value
    parse.__name__ = what  # argparse shows the type's name in some messages
    return parse


positive_int = _number(int, "an integer >= 1", lambda v: v >= 1)
non_negative_int = _number(int, "an integer >= 0", lambda v: v >= 0)
probability = _number(float, "a probability in [0, 1]", lambda v: 0.0 <= v <= 1.0)
non_negative = _number(float, "a number >= 0", lambda v: v >= 0.0)
positive = _number(float, "a number > 0", lambda v: v > 0.0)
percent = _number(float, "a percentile in (0, 100]", lambda v: 0.0 < v <= 100.0)


def add_output(p, what: str) -> None:
    """-o/--output FILE and --overwrite: one policy for every command that writes a file."""
    p.add_argument("-o", "--output", required=True, help=f"{what} (an existing file is kept unless --overwrite)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing --output file")


def check_output(path: str, overwrite: bool) -> None:
    """Refuse to replace an existing output without --overwrite, and a folder or a missing parent folder always."""
    import os

    if os.path.isdir(path):
        raise InvalidArgumentError(f"--output {path} is a folder; name the file to write inside it")
    parent = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(parent):
        raise InvalidArgumentError(f"--output {path}: the folder {parent} does not exist; create it first")
    if os.path.exists(path) and not overwrite:
        raise InvalidArgumentError(f"--output {path} already exists; pass --overwrite to replace it, or choose "
                                   "another name")


def image_formats_arg(value: str) -> tuple[str, ...]:
    from clipscan.runtime.image_formats import parse_image_formats

    try:
        return parse_image_formats(value)
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


def add_image_formats(p) -> None:
    """--image-formats: the image formats decoded, from the runtime's registry (scan and serve)."""
    from clipscan.runtime.image_formats import format_choices

    p.add_argument("--image-formats", type=image_formats_arg, metavar="NAMES",
                   help="comma-separated image formats to decode, 'default' for the default set (marked *): "
                        f"{format_choices()}; a file of another format is an unsupported_format error")
