"""A terminal progress bar usable as ``download(…, progress=bar)``.

Public interface::

    ProgressBar(stream, label, *, width=24, interval=0.1, clock=time.monotonic)
        bar(done: int, total: int | None) -> None      # the ProgressCallback
        bar.close() -> None                             # ends the line if anything was drawn
        with ProgressBar(sys.stderr, "example.com/app") as bar: …

Core modules never print: the CLI creates the bar (on stderr) and passes it in. It draws
only when the stream is a TTY, so logs and pipes stay clean.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from types import TracebackType
from typing import TextIO

_UNITS = ("B", "KiB", "MiB", "GiB", "TiB")


def human_size(n: float) -> str:
    """``1536`` → ``1.5 KiB``."""
    for unit in _UNITS:
        if n < 1024 or unit == _UNITS[-1]:
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    raise AssertionError("unreachable")


class ProgressBar:
    def __init__(
        self,
        stream: TextIO,
        label: str,
        *,
        width: int = 24,
        interval: float = 0.1,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.stream = stream
        self.label = label
        self.width = width
        self.interval = interval
        self.clock = clock
        isatty = getattr(stream, "isatty", None)
        self.enabled = bool(isatty and isatty())
        self._last: float | None = None
        self._drawn = False

    def render(self, done: int, total: int | None) -> str:
        """The line for ``done`` of ``total`` bytes, without the carriage return."""
        if total:
            frac = min(1.0, done / total)
            fill = int(frac * self.width)
            bar = "#" * fill + " " * (self.width - fill)
            return f"{self.label} [{bar}] {frac * 100:3.0f}% {human_size(done)}/{human_size(total)}"
        return f"{self.label} {human_size(done)}"

    def __call__(self, done: int, total: int | None) -> None:
        if not self.enabled:
            return
        now = self.clock()
        final = total is not None and done >= total
        # Redrawing on every 64 KiB chunk would cost more than the download on a fast link.
        if not final and self._last is not None and now - self._last < self.interval:
            return
        self._last = now
        self.stream.write("\r\x1b[K" + self.render(done, total))
        self.stream.flush()
        self._drawn = True

    def close(self) -> None:
        if self._drawn:
            self.stream.write("\n")
            self.stream.flush()
            self._drawn = False

    def __enter__(self) -> ProgressBar:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()
