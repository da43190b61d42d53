"""Appending to a results file: only rows of the model that wrote it (its sidecar says which).

`check_same_model` is the one rule for every engine that appends rows (`clipscan scan --resume`, local,
client of a server, or on Ray): a file being appended to must record the same model (or no model: a
warning), and a new file gets the record.
"""
from __future__ import annotations

import logging
import os

from .errors import RowsError
from .results import read_sidecar, sidecar_path, write_sidecar

log = logging.getLogger("clipscan")


def _source(identity: dict) -> str:
    return f"--server {identity['server']}'s model" if identity.get("server") else "--model"


def same_model(recorded: dict, identity: dict) -> bool:
    """The same sha256; a server that gives none is the same only as the same server and model name."""
    if recorded.get("sha256") != identity.get("sha256"):
        return False
    if identity.get("sha256"):
        return True
    return (recorded.get("server"), recorded.get("server_model")) == (identity.get("server"),
                                                                      identity.get("server_model"))


def model_mismatch(output: str | os.PathLike, recorded: dict, identity: dict) -> str:
    """The sentence that refuses to append rows of `identity` to `output`, which holds rows of `recorded`."""
    sha = identity.get("sha256") or ""
    return (f"--resume: {output} holds rows of model {recorded.get('name')!r} (sha256 "
            f"{str(recorded.get('sha256'))[:12]}..., {recorded.get('file')}), but {_source(identity)} is "
            f"{identity['name']!r} (sha256 {sha[:12]}..., {identity.get('file')}); rows of two "
            "models must not mix: write to a new file (another -o), or pass --overwrite to replace it")


_JSON_TYPES = {str: "string", int: "number", float: "number", bool: "boolean", list: "list"}
IDENTITY_TEXT = ("name", "sha256")  # what decides whether two models are the same: text (a sha256 may be null)


def recorded_model(output: str | os.PathLike) -> dict | None:
    """The model a results file's sidecar records, None when it has no sidecar; RowsError (before
    anything is cut or appended) when the sidecar is not a record clipscan wrote."""
    record = read_sidecar(output)
    if record is None and not os.path.exists(sidecar_path(output)):
        return None
    model = record.get("model") if isinstance(record, dict) else None
    bad = [k for k in IDENTITY_TEXT if isinstance(model, dict) and not isinstance(model.get(k), (str, type(None)))]
    if not isinstance(model, dict) or bad or not isinstance(model.get("name"), str):
        what = ("it is not a JSON object" if record is None else
                "it names no model" if model is None else
                f"its model is a JSON {_JSON_TYPES.get(type(model), type(model).__name__)}, not an object"
                if not isinstance(model, dict) else
                f"its model's {', '.join(bad) or 'name'} is not text")
        raise RowsError(f"{sidecar_path(output)} is not the record of the model that wrote {output} "
                               f"({what}); nothing was changed: delete it to resume anyway, or write to a new file")
    return model


def check_same_model(output: str | os.PathLike, identity: dict, fmt: str, *, appending: bool) -> None:
    """Raise RowsError when appending rows of `identity` to a file of another model, or when its record is
    damaged; record the model of a new file (the sidecar)."""
    if appending:
        recorded = recorded_model(output)
        if recorded is None:
            log.warning("%s has no record of the model that wrote it (%s): resuming with %s (%s)", output,
                        sidecar_path(output), identity["name"], (identity.get("sha256") or "")[:12] or "no sha256")
        elif not same_model(recorded, identity):
            raise RowsError(model_mismatch(output, recorded, identity))
        else:
            return
    write_sidecar(output, identity, fmt)
