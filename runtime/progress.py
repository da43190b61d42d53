"""A progress bar for long work (scan, calibrate, verify, bench) on stderr, only when stderr is a terminal.

With tqdm installed (it comes with `clipscan[export]`) the bar is tqdm's; the base install (numpy, pillow,
onnxruntime only) gets `LineBar`, a one-line bar written here with no dependency. Either way it shows
items done of the total (once known), items/s, the ETA, errors so far and a note (the backend), and it
is silent when the stream is not a terminal or the caller turns it off (`-q`, `--no-progress`).
Log records that go to the same stream while a bar is shown are printed above it, not through it.
"""
from __future__ import annotations

import logging
import os
import shutil
import sys
import threading
import time
from collections.abc import Callable, Iterable

REDRAW_SECONDS = 0.2  # at most five redraws a second: a bar must never cost the scan time


def is_terminal(stream) -> bool:
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError, OSError):
        return False


def _clock(seconds: float) -> str:
    seconds = int(max(seconds, 0))
    h, rest = divmod(seconds, 3600)
    m, s = divmod(rest, 60)
    return f"{h}:{m:02d}:{s:02d}" if h else f"{m}:{s:02d}"


def _reported_columns(stream) -> int:
    """The width the stream's terminal reports: 0 when it reports none (`script`, some `docker exec -t`)."""
    try:
        return os.get_terminal_size(stream.fileno()).columns
    except (AttributeError, ValueError, OSError):
        return 0


def _columns(stream) -> int:
    """The width to draw in: the terminal's, else $COLUMNS, else 100 (a terminal that says 0 gets a bar too)."""
    return _reported_columns(stream) or shutil.get_terminal_size((100, 24)).columns


class LineBar:
    """The dependency-free bar: one line, redrawn in place with a carriage return."""

    def __init__(self, label: str, total: int | None, unit: str, stream):
        self.label, self.total, self.unit, self.stream = label, total, unit, stream
        self.n, self.note = 0, ""
        self._start = time.perf_counter()

    def line(self) -> str:
        elapsed = time.perf_counter() - self._start
        rate = self.n / elapsed if elapsed > 0 else 0.0
        parts = [self.label]
        if self.total:
            done = min(self.n / self.total, 1.0)
            width = 20
            parts.append(f"{self.n}/{self.total} [{'#' * int(width * done):-<{width}}] {100 * done:3.0f}%")
        else:
            parts.append(f"{self.n} {self.unit} (counting...)" if self.total is None else f"{self.n} {self.unit}")
        parts.append(f"{rate:.1f} {self.unit}/s")
        if self.total and rate > 0:
            parts.append(f"ETA {_clock((self.total - self.n) / rate)}")
        elif not self.total:
            parts.append(f"elapsed {_clock(elapsed)}")
        if self.note:
            parts.append(self.note)
        return "  ".join(parts)[:max(_columns(self.stream) - 1, 20)]

    def draw(self) -> None:
        self.stream.write("\r\x1b[K" + self.line())
        self.stream.flush()

    def clear(self) -> None:
        self.stream.write("\r\x1b[K")

    def finish(self) -> None:
        self.draw()
        self.stream.write("\n")
        self.stream.flush()


def _tqdm_class():
    try:
        from tqdm import tqdm
    except ImportError:
        return None
    return tqdm


class _AboveBar:
    """A stream for log handlers: each write clears the bar, writes the text, and draws the bar again."""

    def __init__(self, progress: Progress):
        self.progress = progress

    def write(self, text: str) -> None:
        self.progress.write(text)

    def flush(self) -> None:
        self.progress.stream.flush()


class Progress:
    """Progress of one piece of long work.

    >>> with Progress("scan", unit="img", note="cpu", enabled=not quiet) as bar:
    ...     bar.set_total(5000)           # may come later, from another thread (a counting walk)
    ...     bar.update(errors=1)

    Shown only when `enabled` and `stream` (default stderr) is a terminal; otherwise every call is a no-op.
    """

    def __init__(self, label: str, total: int | None = None, *, unit: str = "files", note: str = "",
                 enabled: bool = True, stream=None, show_errors: bool = True):
        self.stream = stream if stream is not None else sys.stderr
        self.enabled = bool(enabled) and is_terminal(self.stream)
        self.label, self.unit, self.note, self.show_errors = label, unit, note, show_errors
        self.n, self.errors, self.total = 0, 0, total
        self._pending_total: int | None = None
        self._last = 0.0
        self._bar = self._tqdm = None
        self._handlers: list[tuple[logging.StreamHandler, object]] = []
        if not self.enabled:
            return
        tqdm = _tqdm_class()
        if tqdm is not None:
            # tqdm follows the terminal's size; one that reports 0x0 would get empty lines (no width, and its
            # line hidden below a 0-row screen): a fixed size then
            fallback = shutil.get_terminal_size((100, 24))
            sized = ({"dynamic_ncols": True} if _reported_columns(self.stream) else
                     {"ncols": fallback.columns, "nrows": fallback.lines or 24})
            self._tqdm = tqdm(total=total, desc=label, unit=f" {unit}", file=self.stream, mininterval=REDRAW_SECONDS,
                              smoothing=0.1, leave=True, **sized)
        else:
            self._bar = LineBar(label, total, unit, self.stream)
        self._postfix()
        self._redirect_logging()
        self.refresh()

    # -- what the work reports -------------------------------------------------------------------
    def set_total(self, total: int) -> None:
        """The number of items, once known (thread-safe: applied by the next update)."""
        self._pending_total = int(total)

    def set_note(self, note: str) -> None:
        """What the bar says after the counts (the backend, the step running); shown at once."""
        self.note = note
        self._postfix()
        if self.enabled:
            self._apply_total()
            if self._tqdm is not None:  # the count so far, with the note of what runs now
                self._tqdm.update(self.n - self._tqdm.n)
            self.refresh()

    def update(self, k: int = 1, *, errors: int = 0) -> None:
        self.n += k
        self.errors += errors
        if not self.enabled:
            return
        now = time.perf_counter()
        if self._pending_total is not None or now - self._last >= REDRAW_SECONDS:
            self._apply_total()
            if errors:
                self._postfix()
            if self._tqdm is not None:
                self._tqdm.update(self.n - self._tqdm.n)
            self._last = now
            self.refresh()
        elif errors:
            self._postfix()

    def write(self, text: str) -> None:
        """Print text above the bar (what log records do while it is shown)."""
        if self._tqdm is not None:
            self._tqdm.write(text.rstrip("\n"), file=self.stream)
            return
        if self._bar is not None:
            self._bar.clear()
        self.stream.write(text)
        if self._bar is not None:
            self._bar.draw()
        else:
            self.stream.flush()

    def refresh(self) -> None:
        if self._tqdm is not None:
            self._tqdm.refresh()
        elif self._bar is not None:
            self._bar.n = self.n
            self._bar.draw()

    def close(self) -> None:
        """Leave the bar's final state on its line and give the stream back to log records."""
        if not self.enabled:
            return
        self.enabled = False
        self._apply_total()
        self._postfix()
        if self._tqdm is not None:
            self._tqdm.update(self.n - self._tqdm.n)
            self._tqdm.close()
        else:
            self._bar.n = self.n
            self._bar.finish()
        for handler, stream in self._handlers:
            handler.setStream(stream)
        self._handlers = []

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # -- internals --------------------------------------------------------------------------------
    def _apply_total(self) -> None:
        if self._pending_total is None:
            return
        self.total, self._pending_total = self._pending_total, None
        if self._tqdm is not None:
            self._tqdm.total = self.total
        elif self._bar is not None:
            self._bar.total = self.total

    def _postfix(self) -> None:
        text = ", ".join(t for t in (f"errors {self.errors}" if self.show_errors else "", self.note) if t)
        if self._tqdm is not None:
            self._tqdm.set_postfix_str(text, refresh=False)
        elif self._bar is not None:
            self._bar.note = text

    def _redirect_logging(self) -> None:
        above = _AboveBar(self)
        for logger in (logging.getLogger(), logging.getLogger("clipscan")):
            for h in logger.handlers:
                if isinstance(h, logging.StreamHandler) and getattr(h, "stream", None) is self.stream:
                    self._handlers.append((h, h.setStream(above)))


def count_in_background(count: Callable[[], Iterable], progress: Progress) -> threading.Thread | None:
    """Count the items `count()` yields in a daemon thread and hand the number to `progress.set_total`
    (a folder walk of 50,000 files takes a moment; the bar runs without a total until then)."""
    if not progress.enabled:
        return None

    def run() -> None:
        try:
            progress.set_total(sum(1 for _ in count()))
        except Exception:  # a count that fails leaves the bar without a total, never the work
            logging.getLogger("clipscan").debug("counting the inputs failed", exc_info=True)

    thread = threading.Thread(target=run, name="clipscan-count", daemon=True)
    thread.start()
    return thread
