"""How the suite shares two cores between pytest-xdist workers (`pytest -n 2`, the README's test command).

Two rules, both no-ops in a plain `pytest` run:

* A test marked `alone` times something (good clients answered within 2 s under attack, requests gathered
  into batches within a delay, a 50,000-row report opened within 15 s), so it runs with no other test beside it: it takes an
  exclusive lock, every other test a shared one, held over the test's whole run protocol (setup, call,
  teardown: module fixtures included); the `alone` tests of one file keep it from the first to the last.
  The lock is fair: an `alone` test waiting for its turn holds a turnstile that every new shared holder
  passes through, so it waits for the other worker's current test only, never behind a stream of them.
* The slowest files are collected first and handed to the workers in that order (pytest-xdist would
  otherwise start with the files that hold the most tests), so that no slow file starts last on one
  worker while the other sits idle (each file runs whole on one worker: `--dist loadfile`). The list is
  a scheduling hint only; a file missing from it runs in its usual place.
"""
from __future__ import annotations

import contextlib
import fcntl
from pathlib import Path

# The slowest files on two workers of a 2-core machine (seconds per file, 2026-12-06), slowest first.
SLOW_FILES_FIRST = ("test_ray_scan.py", "test_triton_bar.py", "test_native_size.py", "test_iqa_heads.py",
                    "test_calibrate.py", "test_gaintseva.py", "test_corpus.py", "test_bench.py",
                    "test_variant_fidelity.py", "test_fp16.py", "test_triton_server.py", "test_threshold.py",
                    "test_gpu_check.py")


def slow_files_first(items: list) -> None:
    """Reorder `items` in place: the files of SLOW_FILES_FIRST first, in that order, then the rest as
    collected. Every worker computes the same order, as pytest-xdist requires."""
    rank = {name: i for i, name in enumerate(SLOW_FILES_FIRST)}
    order = {id(item): (rank.get(item.path.name, len(rank)), n) for n, item in enumerate(items)}
    items.sort(key=lambda item: order[id(item)])


def keep_collection_order(config) -> None:
    """pytest-xdist's file scheduler hands out the files with the most tests first unless told otherwise;
    hand them out in collection order, so SLOW_FILES_FIRST decides."""
    if hasattr(config.option, "loadscopereorder"):
        config.option.loadscopereorder = False


def lock_folder(config) -> Path | None:
    """The folder every worker of this run shares (the parent of each worker's basetemp), None outside
    pytest-xdist."""
    if not hasattr(config, "workerinput") or not config.option.basetemp:
        return None
    return Path(config.option.basetemp).parent


def is_alone(item) -> bool:
    return item.get_closest_marker("alone") is not None


class Turns:
    """This worker's side of the run's lock: shared for each ordinary test; exclusive for `alone` tests,
    taken once for a run of them in one file and kept until the file's last `alone` test is done (a wait
    for the other worker's current test per file, not per test)."""

    def __init__(self):
        self.files = None
        self.exclusive = False

    def _take(self, folder: Path, mode: int) -> None:
        if self.files is None:
            folder.mkdir(parents=True, exist_ok=True)
            self.files = (open(folder / "clipscan-turnstile.lock", "a+"), open(folder / "clipscan-turn.lock", "a+"))
        turnstile, lock = self.files
        fcntl.flock(turnstile, fcntl.LOCK_EX)
        try:
            fcntl.flock(lock, mode)
        finally:
            fcntl.flock(turnstile, fcntl.LOCK_UN)

    def _give(self) -> None:
        fcntl.flock(self.files[1], fcntl.LOCK_UN)

    @contextlib.contextmanager
    def around(self, item, nextitem):
        """Hold this worker's turn over one test's whole run protocol (setup, call, teardown)."""
        folder = lock_folder(item.config)
        if folder is None:
            yield
            return
        alone = is_alone(item)
        if not alone:
            self._take(folder, fcntl.LOCK_SH)
        elif not self.exclusive:
            self._take(folder, fcntl.LOCK_EX)
            self.exclusive = True
        try:
            yield
        finally:
            if not alone:
                self._give()
            elif not (nextitem is not None and is_alone(nextitem) and nextitem.path == item.path):
                self._give()
                self.exclusive = False


TURNS = Turns()
