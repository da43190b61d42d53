"""Arguments and help texts that several commands share.

- the files of the PyTorch original (--arch/--weights/--heads/--head/--quick-gelu/--gelu): export,
  verify and calibrate; `heads_from(args)` turns --heads/--head into the list the libraries take;
- --no-spin (ONNX Runtime's CPU worker threads): scan and bench.
"""
from __future__ import annotations

import argparse

NO_SPIN_HELP = ("let ONNX Runtime's CPU worker threads sleep between calls instead of spinning: faster when "
                "decoding large images competes for the cores (e.g. 12 MP JPEGs with --decode draft), "
                "slower for small images (see the README)")

HEAD_FORMATS_HELP = ("a head in a published format: univfd:FILE, cozzolino:FILE, agiqa-tang:FILE, agiqa-fu:FILE, "
                     "captions:FILE, gaintseva-mask:FILE, gaintseva-heads:FILE, c2p-clip:FILE, effort:FILE, "
                     "laion-aesthetic:FILE, clipscan:FILE; repeatable (several heads share one backbone pass); NAME= in "
                     "front names the head everywhere (outputs, verify's gates and plots), e.g. "
                     "fake_a=univfd:FILE")

AS_GIVEN_TO_EXPORT = ", as given to export"
# --backend values: auto and every backend of clipscan.runtime.backends.registry() (a test keeps them equal)
BACKENDS = ("auto", "tensorrt", "ort-tensorrt", "cuda", "cpu", "openvino")


def add_original_args(p, *, required: bool, as_given: str = "") -> None:
    """--arch/--weights/--heads/--head/--quick-gelu/--gelu: the files of the PyTorch original."""
    p.add_argument("--arch", help="open_clip model name (e.g. ViT-B-32) or a model-config .json; required unless "
                                  "--weights is a Hugging Face CLIP folder, whose config.json says it" + as_given)
    p.add_argument("--weights", required=required,
                   help="local backbone checkpoint (.pt/.bin/.safetensors) or a Hugging Face CLIP folder" + as_given)
    p.add_argument("--heads", help="clipscan heads file (see clipscan.export.heads)" + as_given)
    p.add_argument("--head", action="append", default=[], metavar="[NAME=]FORMAT:PATH", help=HEAD_FORMATS_HELP + as_given)
    p.add_argument("--resize-mode", choices=("shortest", "longest", "squash", "none"),
                   help="one resize for every head (published heads set their authors' own; heads that differ "
                        "cannot share a pass unless this chooses one)" + as_given)
    act = p.add_mutually_exclusive_group()
    act.add_argument("--quick-gelu", dest="quick_gelu", action="store_true", default=None,
                     help="the checkpoint uses QuickGELU (OpenAI weights); default: from the config")
    act.add_argument("--gelu", dest="quick_gelu", action="store_false", help="the checkpoint uses plain GELU")


def heads_from(args: argparse.Namespace, *, required: bool = False, as_given: str = "") -> list[str]:
    """--heads FILE then every --head FORMAT:PATH, as one list; `required`: none at all is an error."""
    heads = ([args.heads] if args.heads else []) + list(args.head)
    if required and not heads:
        raise ValueError("no head given: pass --heads FILE (clipscan format) and/or --head [NAME=]FORMAT:PATH" + as_given)
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
        raise ValueError(f"--output {path} is a folder; name the file to write inside it")
    parent = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(parent):
        raise ValueError(f"--output {path}: the folder {parent} does not exist; create it first")
    if os.path.exists(path) and not overwrite:
        raise ValueError(f"--output {path} already exists; pass --overwrite to replace it, or choose another name")
