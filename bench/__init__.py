"""clipscan.bench: `clipscan bench`, throughput, latency, memory, cold start and fidelity in one run.

Built on the runtime's public API (Scanner, timing, metrics, thresholds, machine); PyTorch,
open_clip and the export stage are imported only when a PyTorch reference is asked for, so the
benchmark runs on a base install. `run_benchmark(BenchConfig(...))` returns a report dict;
`format_table`, `write_json` and `write_plot` present it.
"""
from .config import BenchConfig, parse_list
from .plot import write_plot
from .results import write_json
from .run import run_benchmark
from .table import format_table

__all__ = ["BenchConfig", "run_benchmark", "format_table", "write_json", "write_plot", "parse_list"]
