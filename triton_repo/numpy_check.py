"""The numpy that Triton's python backend stub can work with.

The stub bundled with Triton 2.51 (nvidia-pytriton 0.7.0) is built with pybind11 2.11 or older (its binary
carries `__pybind11_internals_v4_...`), which predates numpy 2 support (pybind11 2.12): numpy 2 changed the
layout of its dtype descriptor (`PyArray_Descr`), so that stub misreads every array it exchanges with
the model. Measured here with numpy 2.4.6: an FP32 input [[0,1,2],[3,4,5]] reached the model as zeros
and its FP32 output came back with 0 elements (the client: "cannot reshape array of size 0 into shape
(2,3)"); a BYTES input crashed the stub (`unpack_from requires a buffer of at least 50529031 bytes`);
with numpy 1.26.4 the same models work. Newer Triton builds may link a newer pybind11: `allow_numpy2` lets them through.
"""
from __future__ import annotations

import numpy as np

from clipscan.runtime.errors import BackendError

NUMPY2_HINT = ("install numpy<2 in the environment the model uses (pip install 'numpy<2'; nvidia-pytriton "
               "itself requires it), or, for a Triton whose python backend is built with pybind11 >= 2.12, "
               "write the repository with `clipscan triton --allow-numpy2`")


def numpy_major(version: str | None = None) -> int:
    return int((version or np.__version__).split(".")[0])


def check_numpy(allow_numpy2: bool) -> None:
    """Refuse to load under numpy 2 unless allowed: the stub would return wrong or empty tensors."""
    if numpy_major() >= 2 and not allow_numpy2:
        raise BackendError(f"clipscan's Triton model runs with numpy {np.__version__}, but this python backend "
                           f"stub (pybind11 < 2.12) cannot exchange numpy 2 arrays correctly: {NUMPY2_HINT}")
