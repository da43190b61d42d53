"""The performance knobs of the repository `clipscan triton` writes, and the values it picks for the host.

One registry (KNOBS): each knob is a field of RepositoryOptions, a flag of `clipscan triton` (`--name`
with dashes), a row of the Triton guide's table. A knob left at None is filled by `tuned_knobs` for the
Triton host's CPU cores (`--cores`, default this machine's):

- CPU python models run one stub process per instance. With one instance, each execution decodes its
  images and then runs inference: the two never overlap, and ONNX Runtime's intra-op threads scale
  below 2x. With one instance per core and one inference thread each, one instance decodes while
  another infers, every core stays busy, and no thread pool spins against the other process. Past 8
  cores the instances get more threads instead (each instance holds its own copy of the model).
- Decoding runs in the instance's own thread (workers 1): a batch of a few images gains nothing from a
  pool when the other instances already fill the cores. With fewer instances than cores (--instances),
  threads and decode workers share the cores among them, and decoding runs in a pool ahead of inference.
- Batching: max_batch 16 with a 2 ms queue delay; under load the batch forms from the requests that
  queued while the instances were busy, so the delay only matters at low concurrency.

GPU models (--kind gpu) keep one instance per GPU and the backend's threads: the graph's work is the GPU's.
"""
from __future__ import annotations

import os
from dataclasses import dataclass

from clipscan.runtime import defaults as T

MAX_CPU_INSTANCES = 8  # beyond this, cores go to threads per instance (memory: one model copy per instance)


@dataclass(frozen=True)
class Knob:
    name: str        # the RepositoryOptions field; the flag is --name with dashes
    what: str        # the config field or parameter it sets, and what it does
    default: str     # how the value is chosen when not given
    minimum: int = 1

    @property
    def flag(self) -> str:
        return "--" + self.name.replace("_", "-")


KNOBS: tuple[Knob, ...] = (
    Knob("instances", "instance_group count: python-backend stub processes per device, each with its own model "
                      "and Scanner; executions of different instances run at the same time",
         "CPU: one per core of --cores, at most 8; GPU: 1"),
    Knob("threads", "ONNX Runtime intra-op threads per instance (model parameter `threads`)",
         "CPU: the cores over the instances (1 up to 8 cores); GPU: the backend's"),
    Knob("workers", "decode threads per instance (model parameter `workers`); 1 decodes in the instance's own "
                    "thread", "CPU: 1 with an instance per core, else the cores over the instances (at most 4); "
                              "GPU: the Scanner's (min(4, cores))"),
    Knob("max_batch", "max_batch_size: the most images one execution scans (and the Scanner's batch)",
         f"{T.TRITON_MAX_BATCH}"),
    Knob("queue_delay_us", "dynamic_batching max_queue_delay_microseconds: how long a request waits for others "
                           "to join its batch when an instance is free", f"{T.TRITON_QUEUE_DELAY_US}", minimum=0),
    Knob("cores", "the CPU cores of the Triton host the repository is tuned for (only picks the defaults above)",
         "this machine's (the cores this process may run on)"),
)


def host_cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


def tuned_knobs(kind: str, cores: int | None = None, instances: int | None = None) -> dict[str, int | None]:
    """The values `clipscan triton` writes for a `kind` ("cpu" or "gpu") model on a host with `cores` CPU cores
    (threads and decode workers share the cores among `instances` when that is given)."""
    cores = max(1, cores or host_cores())
    common = {"max_batch": T.TRITON_MAX_BATCH, "queue_delay_us": T.TRITON_QUEUE_DELAY_US, "cores": cores}
    if kind != "cpu":
        return {**common, "instances": instances or T.TRITON_INSTANCES, "threads": None, "workers": None}
    instances = instances or min(cores, MAX_CPU_INSTANCES)
    share = max(1, cores // instances)
    # fewer instances than cores: each decodes in a pool ahead of its inference (the Scanner's pipeline)
    return {**common, "instances": instances, "threads": share, "workers": 1 if share == 1 else min(4, share)}


def resolve_knobs(opts) -> None:
    """Fill every knob of `opts` (RepositoryOptions) left at None with its tuned value, in place."""
    tuned = tuned_knobs(opts.kind, opts.cores, opts.instances)
    for knob in KNOBS:
        if getattr(opts, knob.name) is None:
            setattr(opts, knob.name, tuned[knob.name])


def describe_knobs(opts) -> str:
    """'instances 2, threads 1, ...' of a resolved RepositoryOptions (reports and logs)."""
    return ", ".join(f"{k.name} {getattr(opts, k.name)}" for k in KNOBS if getattr(opts, k.name) is not None)
