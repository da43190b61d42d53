"""The model.py that Triton's python backend loads: a few generated lines that find clipscan, then one
of clipscan.triton.python_models' classes as TritonPythonModel.

The stub's Python is isolated (it ignores PYTHONPATH and the environment's site-packages), so model.py
adds the site-packages folders of the environment clipscan is installed in (`site.addsitedir`, which
also runs their .pth files: editable installs work) in front of sys.path. It refuses, in one sentence,
a stub whose Python version differs from that environment's (compiled packages would not load).
"""
from __future__ import annotations

import site
import sys
import sysconfig

from clipscan.version import __version__

TEMPLATE = '''# Written by `clipscan triton` (clipscan {version}); Triton's python backend loads this file.
# The python backend stub runs an isolated Python that ignores PYTHONPATH: the environment clipscan
# is installed in is put on sys.path here. Regenerate with `clipscan triton` to point elsewhere.
import site
import sys

SITE_DIRS = {site_dirs!r}
PYTHON = {python!r}


def _use_clipscan_environment():
    running = "%d.%d" % sys.version_info[:2]
    if running != PYTHON:
        raise RuntimeError("this Triton python backend stub runs Python %s, but clipscan's environment (%s) is "
                           "for Python %s: use the stub built for Python %s, or write the repository from a "
                           "Python %s environment (clipscan triton --site-dir DIR --python %s)"
                           % (running, SITE_DIRS, PYTHON, PYTHON, running, running))
    before = list(sys.path)
    for folder in SITE_DIRS:
        site.addsitedir(folder)
    sys.path[:] = [p for p in sys.path if p not in before] + before


_use_clipscan_environment()

from clipscan.triton.python_models import {cls} as TritonPythonModel  # noqa: E402,F401
'''


def environment_site_dirs() -> list[str]:
    """The site-packages folders of the running environment (a venv's own first)."""
    dirs = [sysconfig.get_paths()["purelib"], sysconfig.get_paths()["platlib"], *site.getsitepackages()]
    return list(dict.fromkeys(dirs))


def python_version() -> str:
    return f"{sys.version_info[0]}.{sys.version_info[1]}"


def model_py(cls: str, site_dirs: list[str], python: str) -> str:
    return TEMPLATE.format(version=__version__, site_dirs=list(site_dirs), python=python, cls=cls)
