"""tests/workers.py's lock: an `alone` test waits for the other worker's current test, then runs with nothing
beside it, and an ordinary test that asks while it waits goes after it; several `alone` tests of one file
keep the lock from the first to the last. Two Turns on one folder stand in for two workers (flock locks
belong to open files, so two in one process exclude each other as two processes would)."""
from __future__ import annotations

import threading
import time
from pathlib import Path
from types import SimpleNamespace

from .workers import Turns


def _item(tmp_path: Path, name: str, alone: bool, path: str = "test_a.py"):
    config = SimpleNamespace(workerinput={}, option=SimpleNamespace(basetemp=str(tmp_path / "gw")))
    return SimpleNamespace(config=config, name=name, path=Path(path),
                           get_closest_marker=lambda marker: object() if alone and marker == "alone" else None)


def test_an_alone_test_runs_with_nothing_beside_it_and_is_not_overtaken(tmp_path):
    worker_a, worker_b, log = Turns(), Turns(), []

    def run(turns, item, nextitem=None, seconds=0.3):
        with turns.around(item, nextitem):
            log.append(("start", item.name))
            time.sleep(seconds)
            log.append(("end", item.name))

    first = threading.Thread(target=run, args=(worker_a, _item(tmp_path, "ordinary-1", False)))
    first.start()
    time.sleep(0.1)                    # worker A's test is running
    alone = threading.Thread(target=run, args=(worker_b, _item(tmp_path, "alone", True)))
    alone.start()
    time.sleep(0.1)                    # the alone test waits for it ...
    second = threading.Thread(target=run, args=(Turns(), _item(tmp_path, "ordinary-2", False)))
    second.start()                     # ... and a test that asks now goes after the alone one
    for t in (first, alone, second):
        t.join(10)
    assert log == [("start", "ordinary-1"), ("end", "ordinary-1"), ("start", "alone"), ("end", "alone"),
                   ("start", "ordinary-2"), ("end", "ordinary-2")], log


def test_the_alone_tests_of_one_file_keep_the_lock_between_them(tmp_path):
    alone, other = Turns(), Turns()
    one, two = _item(tmp_path, "one", True), _item(tmp_path, "two", True)
    last = _item(tmp_path, "elsewhere", True, path="test_b.py")
    with alone.around(one, two):
        pass
    assert alone.exclusive, "kept for the next alone test of the file"
    got = threading.Event()

    def ordinary():
        with other.around(_item(tmp_path, "ordinary", False), None):
            got.set()

    waiter = threading.Thread(target=ordinary)
    waiter.start()
    assert not got.wait(0.3), "an ordinary test ran between two alone tests of one file"
    with alone.around(two, last):      # the next alone test is in another file: the lock is given back
        pass
    assert not alone.exclusive and got.wait(5)
    waiter.join(5)


def test_outside_xdist_nothing_is_locked(tmp_path):
    item = _item(tmp_path, "plain", True)
    item.config = SimpleNamespace(option=SimpleNamespace(basetemp=None))   # no workerinput: a plain pytest run
    with Turns().around(item, None):
        pass
    assert not (tmp_path / "clipscan-turn.lock").exists()
