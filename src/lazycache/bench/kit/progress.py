"""What a run shows on a terminal while it measures: nothing elsewhere, nothing in its output."""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Callable, TextIO


class Progress:
    """A one-line progress bar on a terminal: section, bar, what runs now, elapsed time.

    Silent unless enabled (stderr is a TTY and the output is not JSON), and until the
    run has lasted `delay` seconds: a quick run prints nothing.
    """

    def __init__(
        self, enabled: bool, stream: TextIO | None = None, delay: float = 1.0, sections: int = 1
    ) -> None:
        self.enabled = enabled
        self.stream = stream if stream is not None else sys.stderr
        self.delay = delay
        self.sections = sections
        self.started = time.monotonic()
        self._index = 0
        self._title = ""
        self._total = 1
        self._done = 0
        self._drawn = False
        self._last_draw = 0.0

    def section(self, title: str, total: int) -> None:
        """A new section of `total` steps begins."""
        self._index += 1
        self._title = title
        self._total = max(1, total)
        self._done = 0

    def advance(self, label: str) -> None:
        """The next step, described by `label`, begins (the previous one is done)."""
        self._draw(label)
        self._done += 1

    def _draw(self, label: str) -> None:
        if not self.enabled:
            return
        now = time.monotonic()
        if now - self.started < self.delay or now - self._last_draw < 0.1:
            return
        self._last_draw = now
        width = 24
        filled = min(width, self._done * width // self._total)
        elapsed = int(now - self.started)
        line = (
            f"lazycache bench {elapsed // 60}:{elapsed % 60:02d} [{self._index}/{self.sections}] {self._title} "
            f"[{'#' * filled}{'.' * (width - filled)}] {self._done * 100 // self._total:3d}% {label}"
        )
        columns = _terminal_columns(self.stream)
        print(f"\r{line[: columns - 1]}\033[K", end="", file=self.stream, flush=True)
        self._drawn = True

    def close(self) -> None:
        """Erases the bar."""
        if self._drawn:
            print("\r\033[K", end="", file=self.stream, flush=True)
            self._drawn = False


def _terminal_columns(stream: TextIO) -> int:
    try:
        return os.get_terminal_size(stream.fileno()).columns
    except (OSError, ValueError, AttributeError):
        return 100


NO_PROGRESS = Progress(enabled=False)


@contextmanager
def status_line(stream: TextIO | None = None) -> Iterator[Callable[[str], None]]:
    """A function that shows `measuring <message>...` on one line of a terminal, erased at the end.

    Silent when `stream` (default: stderr) is not a terminal.
    """
    out = stream if stream is not None else sys.stderr
    interactive = out.isatty()

    def show(message: str) -> None:
        if interactive:
            print(f"\rmeasuring {message}...\033[K", end="", file=out, flush=True)

    try:
        yield show
    finally:
        if interactive:
            print("\r\033[K", end="", file=out, flush=True)
