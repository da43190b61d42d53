"""Defaults of the torch-free packages: what one report page holds, the Triton repository
`clipscan triton` writes, and the HTTP client of `clipscan scan --server`.

They are clipscan's choices (no protocol fixes them); `clipscan report --top` and the flags of
`clipscan triton` take their defaults from here, RemoteScanner its keyword defaults. The pass/fail
bars of export, verify and calibrate are not defaults: they are in clipscan.measure.thresholds.
"""
from __future__ import annotations

# -- clipscan report: what one page holds ------------------------------------------------------------
REPORT_MAX_BYTES = 10_000_000   # a report page stays under this (tested with 50,000 rows); larger: a warning
REPORT_TABLE_BYTES = 6_000_000  # the rows table's embedded data; beyond it the most likely generated rows stay
REPORT_TOP_N = 60               # thumbnails: the N most likely generated images (the only images embedded)
REPORT_THUMB_PX = 160           # longest side of a thumbnail, JPEG quality REPORT_THUMB_QUALITY
REPORT_THUMB_QUALITY = 75
REPORT_MAX_FAILURES = 5_000     # failed files listed one by one (the counts by error kind cover all)
REPORT_HIST_BINS = 20

# -- serving: the Triton repository `clipscan triton` writes, and the client of `scan --server` ------------
TRITON_MAX_BATCH = 16                 # max_batch_size of every generated model
TRITON_QUEUE_DELAY_US = 2000          # dynamic_batching.max_queue_delay_microseconds: wait 2 ms to fill a batch
TRITON_INSTANCES = 1                  # instance_group count per device
CLIENT_BATCH = 8                      # images per inference request
CLIENT_CONCURRENCY = 2                # requests in flight (one keep-alive connection per worker thread)
CLIENT_TIMEOUT_S = 120.0              # one request's socket timeout
CLIENT_RETRIES = 5                    # retries of a request answered 503 (or a dropped connection), ...
CLIENT_BACKOFF_S = 0.2                # ... after 0.2, 0.4, 0.8, ... s (doubling, capped at CLIENT_BACKOFF_MAX_S)
CLIENT_BACKOFF_MAX_S = 5.0
