"""An INT8 artifact that failed its fidelity gates at calibration: how to tell, and the warning every loader gives.

`clipscan calibrate` records its fidelity report in the manifest (`calibration.fidelity`: passed,
failed_gates, every gate). A model whose report failed is never written at the `-o` name: it is kept
as `<stem>.failed-gates.onnx` (FAILED_SUFFIX) so that the user can look at it. Whatever its name now,
every command that loads it says so (`load_artifact` logs FAILED_WARNING), and the model's identity
(the scan's sidecar, the service's and Triton's model config) carries `fidelity: FAILED ...`.
"""
from __future__ import annotations

import logging

log = logging.getLogger("clipscan")

FAILED_SUFFIX = ".failed-gates"   # calibrate keeps a failed INT8 model as <stem>.failed-gates.onnx
_warned: set[str] = set()         # the files warned about by this command (it may load one several times)


def new_command() -> None:
    """Forget which files were warned about: each command of the CLI (several may run in one process) warns
    once per file."""
    _warned.clear()


def failed_gates(manifest) -> list[str] | None:
    """The gates the artifact's recorded fidelity report failed, or None when no report failed (none
    recorded, or every gate passed)."""
    fidelity = (manifest.calibration or {}).get("fidelity")
    if not isinstance(fidelity, dict) or fidelity.get("passed") is not False:
        return None
    names = fidelity.get("failed_gates")
    return [str(n) for n in names] if isinstance(names, list) else []


def fidelity_label(manifest) -> str | None:
    """'FAILED: gate, gate' for a model whose recorded fidelity report failed, else None."""
    failed = failed_gates(manifest)
    if failed is None:
        return None
    shown = ", ".join(failed[:6]) + (f" and {len(failed) - 6} more" if len(failed) > 6 else "")
    return f"FAILED: {shown or 'see the report'}"


def warn_if_failed(path, manifest) -> None:
    """The warning for a model whose fidelity gates failed (one line, once per file and command; `clipscan info
    MODEL` has the table)."""
    label = fidelity_label(manifest)
    if label is None or str(path) in _warned:
        return
    _warned.add(str(path))
    log.warning("%s FAILED its %s fidelity gates at calibration (%s): its answers may differ from the model it "
                "was made from by more than clipscan's bars allow. Use the model it was calibrated from, or "
                "calibrate again (`clipscan info %s` shows every gate)", path, manifest.precision.upper(),
                label.removeprefix("FAILED: "), path)
