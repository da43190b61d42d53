"""Memory stays bounded however many large images a folder holds."""
from __future__ import annotations

import json
import subprocess
import sys

import pytest
from PIL import Image

PROGRAM = r"""
import json, resource, sys
from clipscan.runtime import Scanner
with Scanner(batch_size=16, workers=2) as s:
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    rows = list(s.scan([sys.argv[1]]))
print(json.dumps({"rows": len(rows), "ok": sum(r.ok for r in rows),
                  "peak_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
                  "before_mb": before / 1024}))
"""


@pytest.mark.slow
def test_peak_memory_is_bounded_by_workers_not_by_folder_size(tmp_path):
    side, count = 4000, 30  # 48 MB of RGB each once decoded: 1.4 GB if all were held at once
    gradient = Image.merge("RGB", [Image.linear_gradient("L").resize((side, side)),
                                   Image.linear_gradient("L").rotate(90).resize((side, side)),
                                   Image.new("L", (side, side), 90)])
    for i in range(count):
        gradient.save(tmp_path / f"big_{i:02d}.png", compress_level=1)
    proc = subprocess.run([sys.executable, "-c", PROGRAM, str(tmp_path)], capture_output=True, text=True, timeout=600)
    status = json.loads(proc.stdout.strip().splitlines()[-1])
    assert status["rows"] == count and status["ok"] == count
    decoded_total_mb = count * side * side * 3 / 2**20
    growth = status["peak_mb"] - status["before_mb"]
    # two decode workers, each holding one decoded image and its resized copy, plus prepared batches
    print(status)
    assert growth < 600, status
    assert growth < decoded_total_mb / 2, (status, decoded_total_mb)
