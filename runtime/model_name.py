"""The one rule for a served model's name: `clipscan serve --name`, `clipscan triton --name` and
`clipscan scan --server-model` all check names here, and a manifest's name is made to fit it the same way.

Triton's rule (a repository folder and a URL path segment): letters, digits, '_', '.' and '-', starting with
a letter or digit; so no path separator, space, quote or control character can reach a path or a URL.
"""
from __future__ import annotations

import re

from .errors import InvalidArgumentError

MODEL_NAME_MAX = 128
MODEL_NAME_RULE = (f"letters, digits, '_', '.' and '-', starting with a letter or digit, at most {MODEL_NAME_MAX} "
                   "characters")
_NAME = re.compile(rf"[A-Za-z0-9][A-Za-z0-9_.-]{{0,{MODEL_NAME_MAX - 1}}}")


def check_model_name(name: str, option: str = "--name") -> str:
    """`name` if it follows the rule, else an InvalidArgumentError naming `option`."""
    if not isinstance(name, str) or not _NAME.fullmatch(name):
        raise InvalidArgumentError(f"{option} {name!r} is not a model name clipscan can serve: a model name is "
                                   f"{MODEL_NAME_RULE}")
    return name


def model_name_for(manifest_name: str) -> str:
    """The served name of a model whose manifest names it `manifest_name`: every character outside the rule
    becomes '_' (and a name that would start with '_', '.' or '-' gets an 'm' in front)."""
    name = re.sub(r"[^A-Za-z0-9_.-]", "_", manifest_name)[:MODEL_NAME_MAX]
    if not name or not name[0].isalnum():
        name = ("m" + name)[:MODEL_NAME_MAX]
    return check_model_name(name, "the manifest's name")
