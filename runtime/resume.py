"""Appending to a results file: only rows of the model that wrote it (its sidecar says which).

`check_same_model` is the rule `clipscan scan --resume` applies, as a function other engines (Ray) call
with the same words: a file being appended to must record the same model (or no model: a warning), and
a new file gets the record.
"""
from __future__ import annotations

import logging
import os

from .results import read_sidecar, sidecar_path, write_sidecar

log = logging.getLogger("clipscan")


def model_mismatch(output: str | os.PathLike, recorded: dict, identity: dict) -> str:
    """The sentence that refuses to append rows of `identity` to `output`, which holds rows of `recorded`."""
    return (f"--resume: {output} holds rows of model {recorded.get('name')!r} (sha256 "
            f"{str(recorded.get('sha256'))[:12]}..., {recorded.get('file')}), but --model is "
            f"{identity['name']!r} (sha256 {identity['sha256'][:12]}..., {identity['file']}); rows of two "
            "models must not mix: write to a new file (another -o), or pass --overwrite to replace it")


def check_same_model(output: str | os.PathLike, identity: dict, fmt: str, *, appending: bool) -> None:
    """Raise ValueError when appending rows of `identity` to a file of another model; record the model
    of a new file (the sidecar)."""
    if appending:
        recorded = (read_sidecar(output) or {}).get("model")
        if recorded is None:
            log.warning("%s has no record of the model that wrote it (%s): resuming with %s (%s)", output,
                        sidecar_path(output), identity["name"], identity["sha256"][:12])
        elif recorded.get("sha256") != identity["sha256"]:
            raise ValueError(model_mismatch(output, recorded, identity))
        else:
            return
    write_sidecar(output, identity, fmt)
