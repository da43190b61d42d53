"""clipscan.calibration: proof that an exported model is the trained model (and, to come, INT8 calibration).

`clipscan verify` / `clipscan.calibration.verify.verify` compare an artifact with its PyTorch
original under the fidelity gates (fidelity.py) and write a JSON and an HTML report (report.py).
Needs `clipscan[export]`; the runtime never imports this package.
"""
