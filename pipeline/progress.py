"""Progress reporting for long steps. Stages receive a Progress; only the CLI makes a loud one."""
from __future__ import annotations

import sys
import time
from typing import TextIO


class Progress:
    """Writes step messages and simple progress bars to a stream (stderr by default)."""

    def __init__(self, stream: TextIO | None = None, quiet: bool = False):
        self.stream = stream if stream is not None else sys.stderr
        self.quiet = quiet
        self.tty = hasattr(self.stream, "isatty") and self.stream.isatty()

    def log(self, message: str) -> None:
        if not self.quiet:
            print(message, file=self.stream, flush=True)

    def warn(self, message: str) -> None:
        print(f"warning: {message}", file=self.stream, flush=True)

    def banner(self, lines: list[str]) -> None:
        """A message that must not be missed (e.g. falling back to the reference model)."""
        width = max(len(line) for line in lines) + 4
        print("!" * width, file=self.stream)
        for line in lines:
            print(f"! {line.ljust(width - 4)} !", file=self.stream)
        print("!" * width, file=self.stream, flush=True)

    def bar(self, label: str, total: int) -> "Bar":
        return Bar(self, label, total)


class Bar:
    def __init__(self, progress: Progress, label: str, total: int):
        self.progress, self.label, self.total = progress, label, max(total, 1)
        self.done = 0
        self.started = time.monotonic()
        self._last = 0.0

    def update(self, n: int = 1) -> None:
        self.done += n
        now = time.monotonic()
        if self.progress.quiet or (now - self._last < 0.5 and self.done < self.total):
            return
        self._last = now
        if self.progress.tty:
            pct = self.done / self.total
            fill = int(pct * 30)
            print(f"\r  {self.label} [{'#' * fill}{'.' * (30 - fill)}] {self.done}/{self.total} "
                  f"{now - self.started:5.1f}s", end="", file=self.progress.stream, flush=True)
        elif self.done >= self.total or now - self.started > 10 and self.done % max(self.total // 4, 1) == 0:
            print(f"  {self.label}: {self.done}/{self.total} ({now - self.started:.1f}s)",
                  file=self.progress.stream, flush=True)

    def close(self) -> None:
        if self.progress.tty and not self.progress.quiet:
            print(file=self.progress.stream, flush=True)

    def __enter__(self) -> "Bar":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
