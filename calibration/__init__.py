"""clipscan.calibration: INT8 post-training quantization and fidelity reports.

Not implemented yet (see the project's issues); exported models are FP32 today.
"""
