"""clipscan.measure: how clipscan measures and judges an artifact, shared by export, calibration and bench.

The fidelity bars every check applies (`thresholds`), the description of the machine a speed
figure came from (`machine`) and the timing loops and latency statistics (`timing`). Nothing
here runs a model: the scanning runtime does not need it, and it imports no torch, onnx or
other clipscan package, so every layer that measures can share it.
"""
