"""clipscan.calibration: proof that an exported model is the trained model, and INT8 calibration.

`clipscan verify` / `clipscan.calibration.verify.verify` compare an artifact with its PyTorch
original under the fidelity gates (fidelity_gates.py) and write a JSON and an HTML report
(fidelity_report.py). `clipscan calibrate` / `clipscan.calibration.calibrate_artifact` (pipeline.py)
write an INT8 artifact and its fidelity report. Needs `clipscan[export]`; the runtime never imports this package.
"""

__all__ = ["CalibrationOutcome", "calibrate_artifact"]


def __getattr__(name):  # lazy, so importing one module of the package does not import them all
    if name in __all__:
        from . import pipeline

        return getattr(pipeline, name)
    raise AttributeError(f"module 'clipscan.calibration' has no attribute {name!r}")
