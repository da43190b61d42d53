"""clipscan.distributed: `clipscan scan --engine ray`, batch scanning on Ray Data, exactly once and resumable.

Built on the runtime only (Scanner, discover, results, atomic); `ray` is imported when a Ray scan starts
(`pip install 'clipscan[ray]'`). `scan_on_ray(RayScan(paths, output, ...))` runs one scan; `Ledger` is the
commit protocol that makes a killed scan resumable with every input exactly once (see ledger.py).
"""
from .defaults import DEFAULTS
from .engine import RayScan, RayScanReport, check_spec, scan_on_ray
from .ledger import Ledger, state_folder

__all__ = ["DEFAULTS", "Ledger", "RayScan", "RayScanReport", "check_spec", "scan_on_ray", "state_folder"]
