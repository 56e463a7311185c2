"""A bounded, dependency-free progress bar on stderr for long CLI work (load, catch-up, audit)."""

from __future__ import annotations

import sys
import time
from types import TracebackType


class ProgressBar:
    """`with ProgressBar(total, "audit") as bar: bar.advance(n)`; redraws at most 10 times a second."""

    def __init__(self, total: int, label: str, width: int = 30) -> None:
        self.total = max(total, 1)
        self.label = label
        self.width = width
        self.done = 0
        self._last_draw = 0.0
        self._started = time.monotonic()
        self._tty = sys.stderr.isatty()

    def advance(self, count: int = 1) -> None:
        self.done = min(self.total, self.done + count)
        now = time.monotonic()
        if now - self._last_draw >= 0.1 or self.done == self.total:
            self._last_draw = now
            self._draw(final=False)

    def _draw(self, final: bool) -> None:
        filled = int(self.width * self.done / self.total)
        rate = self.done / max(time.monotonic() - self._started, 1e-6)
        line = f"{self.label} [{'#' * filled}{'.' * (self.width - filled)}] {self.done}/{self.total} {rate:,.0f}/s"
        if self._tty:
            sys.stderr.write("\r" + line + ("\n" if final else ""))
        elif final:
            sys.stderr.write(line + "\n")
        sys.stderr.flush()

    def __enter__(self) -> ProgressBar:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self._draw(final=True)
