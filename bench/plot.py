"""The benchmark's plot: throughput against batch size, one panel per mode, one line per
(runtime, backend, precision, artifact). Needs matplotlib; without it nothing is written."""
from __future__ import annotations

import logging
from pathlib import Path

from clipscan.runtime.atomic import replacing

log = logging.getLogger("clipscan.bench")


def _series(report: dict, mode: str) -> dict[str, list[tuple[int, float]]]:
    series: dict = {}
    for r in report["results"]:
        if r["mode"] == mode and r["images_per_s"]:
            # the backend's name already says its runtime (onnxruntime-cpu, openvino-cpu); PyTorch's (eager-cpu) does not
            who = r["backend"] if r["backend"].startswith(r["runtime"]) else f"{r['runtime']} {r['backend']}"
            key = f"{who} {r['precision']} ({r['artifact']})"
            series.setdefault(key, []).append((r["batch_size"], r["images_per_s"]))
    return {k: sorted(v) for k, v in sorted(series.items())}


def write_plot(report: dict, path: str | Path) -> Path | None:
    """Throughput against batch size, one line per (mode, runtime, backend, precision/artifact)."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        log.warning("matplotlib is not installed: no plot written")
        return None
    modes = sorted({r["mode"] for r in report["results"]})
    fig, axes = plt.subplots(1, max(1, len(modes)), figsize=(6 * max(1, len(modes)), 4.5), squeeze=False)
    for ax, mode in zip(axes[0], modes):
        for key, pts in _series(report, mode).items():
            ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="o", label=key)
        ax.set_xscale("log", base=2)
        ax.set_xlabel("batch size")
        ax.set_ylabel("images / s")
        ax.set_title(f"{mode} mode")
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize=7)
    cpu = report["machine"].get("cpu_description") or report["machine"]["cpu"]
    fig.suptitle(f"clipscan bench: {cpu}", fontsize=8)
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with replacing(path) as tmp:
        fig.savefig(tmp, dpi=100, format=Path(path).suffix.lstrip(".") or "png")
    plt.close(fig)
    return path
