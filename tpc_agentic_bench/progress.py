"""A progress bar on stderr: redrawn in place on a terminal, one line per phase otherwise.

    >>> import io
    >>> out = io.StringIO()
    >>> p = Progress(stream=out, enabled=True)
    >>> p.start(4); p.label("W1 naive"); p.advance(2); p.finish()
    >>> "W1 naive" in out.getvalue()
    True
"""

from __future__ import annotations

import sys
import time
from typing import TextIO


class Progress:
    """Counts finished queries out of the run's total and shows the current phase."""

    def __init__(self, stream: TextIO | None = None, *, enabled: bool = True, width: int = 28) -> None:
        self.stream = stream if stream is not None else sys.stderr
        self.enabled = enabled
        self.width = width
        self.total = 0
        self.done = 0
        self.phase = ""
        self._began = time.perf_counter()
        self._live = enabled and bool(getattr(self.stream, "isatty", lambda: False)())

    def message(self, text: str) -> None:
        """A line of its own (setup steps before the bar starts)."""
        if self.enabled:
            self._clear()
            print(f"[bench] {text}", file=self.stream, flush=True)

    def start(self, total: int) -> None:
        self.total, self.done = max(total, 1), 0
        self._began = time.perf_counter()

    def label(self, phase: str) -> None:
        self.phase = phase
        if self.enabled and not self._live:
            print(f"[bench] {self._line()}", file=self.stream, flush=True)
        self._draw()

    def advance(self, count: int = 1) -> None:
        self.done = min(self.total, self.done + count)
        self._draw()

    def finish(self) -> None:
        if self.enabled:
            self.phase = "done"
            if self._live:
                self._draw()
                print(file=self.stream, flush=True)
            else:
                print(f"[bench] {self._line()}", file=self.stream, flush=True)

    def _line(self) -> str:
        filled = int(self.width * self.done / self.total) if self.total else 0
        bar = "#" * filled + "-" * (self.width - filled)
        elapsed = int(time.perf_counter() - self._began)
        return (
            f"[{bar}] {self.done}/{self.total} queries  {elapsed // 60}:{elapsed % 60:02d}  "
            f"{self.phase}"
        )

    def _draw(self) -> None:
        if self.enabled and self._live:
            self.stream.write("\r\x1b[2K" + self._line())
            self.stream.flush()

    def _clear(self) -> None:
        if self._live:
            self.stream.write("\r\x1b[2K")
