"""How the suite shares two cores between pytest-xdist workers (`pytest -n 2`, the README's test command).

Two rules, both no-ops in a plain `pytest` run:

* A test marked `alone` times something (good clients answered within 2 s under attack, requests gathered
  into batches within a delay, a progress bar moving), so it runs with no other test beside it: it takes an
  exclusive lock, every other test a shared one, held over the test's whole run protocol (setup, call,
  teardown: module fixtures included). The lock is fair: an `alone` test waiting for its turn holds a
  turnstile that every new shared holder passes through, so it never waits behind an endless stream of
  other tests.
* Files that take a minute or more are collected first, so they do not start last on one worker while the
  other sits idle (each file runs whole on one worker: `--dist loadfile`). The list is a scheduling hint
  only; a file missing from it runs in its usual place.
"""
from __future__ import annotations

import contextlib
import fcntl
from pathlib import Path

# The slowest files of a 2-core run (pytest --durations=0, summed per file), slowest first.
SLOW_FILES_FIRST = ("test_ray_scan.py", "test_triton_bar.py", "test_native_size.py", "test_gaintseva.py",
                    "test_calibrate.py", "test_variant_fidelity.py", "test_iqa_heads.py", "test_bench.py",
                    "test_triton_server.py", "test_corpus.py")


def slow_files_first(items: list) -> None:
    """Reorder `items` in place: the files of SLOW_FILES_FIRST first, in that order, then the rest as
    collected. Every worker computes the same order, as pytest-xdist requires."""
    rank = {name: i for i, name in enumerate(SLOW_FILES_FIRST)}
    order = {id(item): (rank.get(Path(str(item.fspath)).name, len(rank)), n) for n, item in enumerate(items)}
    items.sort(key=lambda item: order[id(item)])


def lock_folder(config) -> Path | None:
    """The folder every worker of this run shares (the parent of each worker's basetemp), None outside
    pytest-xdist."""
    if not hasattr(config, "workerinput") or not config.option.basetemp:
        return None
    return Path(config.option.basetemp).parent


@contextlib.contextmanager
def turn(folder: Path | None, exclusive: bool):
    """Hold the run's lock, exclusively for an `alone` test, shared for the others."""
    if folder is None:
        yield
        return
    folder.mkdir(parents=True, exist_ok=True)
    with open(folder / "clipscan-turnstile.lock", "a+") as turnstile, open(folder / "clipscan-turn.lock", "a+") as lock:
        fcntl.flock(turnstile, fcntl.LOCK_EX)
        try:
            fcntl.flock(lock, fcntl.LOCK_EX if exclusive else fcntl.LOCK_SH)
        finally:
            fcntl.flock(turnstile, fcntl.LOCK_UN)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)
