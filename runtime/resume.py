"""Appending to a results file: only rows of the model that wrote it, made with the same row settings
(its sidecar says which).

`check_same_model` is the one rule for every engine that appends rows (`clipscan scan --resume`, local,
client of a server, or on Ray): a file being appended to must record the same model (or no model: a
warning) and the same settings (a file written before settings were recorded is not checked for them),
and a new file gets the record.
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


# the settings that change what a row says, by the scan flag that sets them (-f is --format)
ROW_SETTINGS = ("--threshold", "--decode", "--max-pixels", "--image-formats", "--with-embedding", "--format")


def row_settings(fmt: str, with_embedding: bool, *, threshold: float | None = None, decode: str | None = None,
                 max_pixels: int | None = None, image_formats=None) -> dict:
    """The ROW_SETTINGS of one scan, for its results file's record. A local scan gives all of them, `decode`
    as resolved ("exact" or "draft": "auto" is decided by the model, which is checked on its own) and
    `threshold` None for the manifest's; a client of a server gives only fmt and with_embedding (the
    server decides the rest), so only those are compared."""
    settings = {"--format": fmt, "--with-embedding": bool(with_embedding)}
    if decode is not None:
        settings.update({"--threshold": threshold, "--decode": decode, "--max-pixels": max_pixels,
                         "--image-formats": ",".join(image_formats) if image_formats is not None else None})
    assert set(settings) <= set(ROW_SETTINGS), settings
    return settings


def _shown(flag: str, value) -> str:
    if value is None:
        return "the manifest's" if flag == "--threshold" else "the default"
    if isinstance(value, bool):
        return "on" if value else "off"
    return str(value)


def settings_mismatch(output: str | os.PathLike, recorded: dict, settings: dict) -> str | None:
    """The sentence that refuses to append rows made with `settings` to `output`, whose rows were made with
    `recorded`; None when every setting both record agrees."""
    differ = [f"{flag} was {_shown(flag, recorded[flag])}, now {_shown(flag, settings[flag])}"
              for flag in ROW_SETTINGS if flag in recorded and flag in settings and recorded[flag] != settings[flag]]
    if not differ:
        return None
    return (f"--resume: {output} holds rows made with other settings ({'; '.join(differ)}), and rows of two "
            "settings must not mix in one file: repeat the flags of the scan that wrote it, or write to a new "
            "file (another -o), or pass --overwrite to replace it")


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


def recorded_settings(output: str | os.PathLike) -> dict | None:
    """The row settings a results file's sidecar records; None when it records none (written before
    settings were recorded); RowsError when they are not a JSON object."""
    record = read_sidecar(output) or {}
    settings = record.get("settings")
    if settings is not None and not isinstance(settings, dict):
        raise RowsError(f"{sidecar_path(output)} is not the record clipscan wrote for {output} (its settings are "
                        f"a JSON {_JSON_TYPES.get(type(settings), type(settings).__name__)}, not an object); "
                        "nothing was changed: delete it to resume anyway, or write to a new file")
    return settings


def check_same_model(output: str | os.PathLike, identity: dict, fmt: str, *, appending: bool,
                     settings: dict | None = None) -> None:
    """Raise RowsError when appending rows of `identity` to a file of another model, or made with other
    `settings` (row_settings), or when its record is damaged; record the model and settings of a new file
    (the sidecar)."""
    if appending:
        recorded = recorded_model(output)
        if recorded is None:
            log.warning("%s has no record of the model that wrote it (%s): resuming with %s (%s)", output,
                        sidecar_path(output), identity["name"], (identity.get("sha256") or "")[:12] or "no sha256")
        elif not same_model(recorded, identity):
            raise RowsError(model_mismatch(output, recorded, identity))
        else:
            before = recorded_settings(output)
            if before is not None and settings is not None and (why := settings_mismatch(output, before, settings)):
                raise RowsError(why)
            return
    write_sidecar(output, identity, fmt, settings)
