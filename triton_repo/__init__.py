"""clipscan.triton: a Triton Inference Server model repository for a clipscan artifact, and a local
tritonserver launcher (the binary bundled in nvidia-pytriton).

`write_repository(model, repo, RepositoryOptions(...))` writes the repository (`clipscan triton` on the
command line); the models inside run clipscan.runtime in Triton's python backend and speak the tensor
contract of runtime.contract, which `clipscan scan --server` and `RemoteScanner` talk to.
Imports clipscan.runtime only.
"""
from .plans import Plan
from .repository import Repository, RepositoryOptions, write_repository

__all__ = ["Plan", "Repository", "RepositoryOptions", "write_repository"]
