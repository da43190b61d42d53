"""Every default of `clipscan scan --engine ray`, as data, in one place (all of them clipscan's choices)."""
from __future__ import annotations

DEFAULTS = {
    # files per Ray Data block: the unit an actor scans in one call, and the unit that is committed (a shard
    # file) or, after a kill, scanned again; 128 keeps a block a few seconds of work on one CPU core
    "block_size": 128,
    # actors: None = one per CPU slot of the cluster (its CPUs // cpus_per_actor), or one per GPU slot
    # (its GPUs // gpus_per_actor) when --gpus-per-actor > 0
    "actors": None,
    "cpus_per_actor": 1.0,
    "gpus_per_actor": 0.0,
    # ONNX Runtime threads per actor when --threads is not given: one per CPU the actor reserves, so the
    # actors of one machine do not oversubscribe its cores
    "threads_per_actor": None,   # None: cpus_per_actor, at least 1
    # seconds to wait for a TCP connection to --ray-address before saying it cannot be reached
    "connect_timeout_s": 10.0,
    # blocks the driver lets Ray Data compute ahead of the one it is writing (iter_batches prefetch)
    "prefetch_blocks": 2,
}

# The hidden folder next to -o that holds a Ray scan's committed shards and its ledger.
STATE_SUFFIX = ".clipscan-ray"
