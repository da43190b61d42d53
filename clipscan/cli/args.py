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
                     "captions:FILE, clipscan:FILE; repeatable (several heads share one backbone pass)")

AS_GIVEN_TO_EXPORT = ", as given to export"


def add_original_args(p, *, required: bool, as_given: str = "") -> None:
    """--arch/--weights/--heads/--head/--quick-gelu/--gelu: the files of the PyTorch original."""
    p.add_argument("--arch", required=required,
                   help="open_clip model name (e.g. ViT-B-32) or a model-config .json" + as_given)
    p.add_argument("--weights", required=required, help="local backbone checkpoint (.pt/.bin/.safetensors)" + as_given)
    p.add_argument("--heads", help="clipscan heads file (see clipscan.export.heads)" + as_given)
    p.add_argument("--head", action="append", default=[], metavar="FORMAT:PATH", help=HEAD_FORMATS_HELP + as_given)
    act = p.add_mutually_exclusive_group()
    act.add_argument("--quick-gelu", dest="quick_gelu", action="store_true", default=None,
                     help="the checkpoint uses QuickGELU (OpenAI weights); default: from the config")
    act.add_argument("--gelu", dest="quick_gelu", action="store_false", help="the checkpoint uses plain GELU")


def heads_from(args: argparse.Namespace, *, required: bool = False, as_given: str = "") -> list[str]:
    """--heads FILE then every --head FORMAT:PATH, as one list; `required`: none at all is an error."""
    heads = ([args.heads] if args.heads else []) + list(args.head)
    if required and not heads:
        raise ValueError("no head given: pass --heads FILE (clipscan format) and/or --head FORMAT:PATH" + as_given)
    return heads


def add_no_spin(p) -> None:
    p.add_argument("--no-spin", action="store_true", help=NO_SPIN_HELP)
