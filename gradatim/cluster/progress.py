"""Progress reporting for slow, multi-step work (Go builds, cluster start-up).

The control plane code only talks to the small `Progress` interface; the CLI
passes a `ConsoleProgress` (rich spinner plus one line per finished step), tests
pass `PlainProgress` so the output reads well in captured logs.
"""

from __future__ import annotations

import sys
import time
from contextlib import AbstractContextManager, contextmanager
from typing import Iterator, Protocol, TextIO


class Progress(Protocol):
    def step(self, title: str) -> AbstractContextManager[None]:
        """Context manager around one step; reports its duration and outcome."""

    def update(self, detail: str) -> None:
        """Shows what the current step is doing right now (e.g. a `go build` line)."""

    def info(self, message: str) -> None:
        """Prints a message outside any step."""


class PlainProgress:
    """Writes one line per finished step to a stream; updates are dropped."""

    def __init__(self, stream: TextIO | None = None) -> None:
        self.stream = stream or sys.stderr

    @contextmanager
    def step(self, title: str) -> Iterator[None]:
        started = time.monotonic()
        try:
            yield
        except BaseException:
            self._write(f"FAILED {title} ({time.monotonic() - started:.1f}s)")
            raise
        self._write(f"done   {title} ({time.monotonic() - started:.1f}s)")

    def update(self, detail: str) -> None:
        pass

    def info(self, message: str) -> None:
        self._write(message)

    def _write(self, line: str) -> None:
        print(line, file=self.stream, flush=True)


class ConsoleProgress:
    """A rich spinner with the step title, a live elapsed-time counter and the latest detail;
    each finished step leaves one line with its duration. Without a terminal (CI logs), a heartbeat
    line with the elapsed time and latest detail every `HEARTBEAT_SECONDS` instead of the spinner."""

    HEARTBEAT_SECONDS = 20.0

    def __init__(self) -> None:
        from rich.console import Console

        self.console = Console(stderr=True, highlight=False)
        self._update = None

    @contextmanager
    def step(self, title: str) -> Iterator[None]:
        if not self.console.is_terminal:
            with self._heartbeat_step(title):
                yield
            return
        from rich.progress import Progress as RichProgress
        from rich.progress import SpinnerColumn, TextColumn, TimeElapsedColumn

        columns = (SpinnerColumn(), TimeElapsedColumn(), TextColumn("{task.description}"))
        started = time.monotonic()
        with RichProgress(*columns, console=self.console, transient=True) as bar:
            task = bar.add_task(title, total=None)
            self._update = lambda detail: bar.update(task, description=f"{title} [dim]{detail}[/dim]")
            try:
                yield
            except BaseException:
                self.console.print(f"[red]✗[/red] {title} [dim]({time.monotonic() - started:.1f}s)[/dim]")
                raise
            finally:
                self._update = None
        self.console.print(f"[green]✓[/green] {title} [dim]({time.monotonic() - started:.1f}s)[/dim]")

    @contextmanager
    def _heartbeat_step(self, title: str) -> Iterator[None]:
        started = last = time.monotonic()

        def beat(detail: str) -> None:
            nonlocal last
            if time.monotonic() - last >= self.HEARTBEAT_SECONDS:
                last = time.monotonic()
                print(f"... {title}: {last - started:.0f}s, {detail}", file=sys.stderr, flush=True)

        self._update = beat
        try:
            yield
        except BaseException:
            print(f"FAILED {title} ({time.monotonic() - started:.1f}s)", file=sys.stderr, flush=True)
            raise
        finally:
            self._update = None
        print(f"done   {title} ({time.monotonic() - started:.1f}s)", file=sys.stderr, flush=True)

    def update(self, detail: str) -> None:
        if self._update is not None:
            self._update(detail if len(detail) < 80 else detail[:77] + "...")

    def info(self, message: str) -> None:
        self.console.print(message)


class SilentProgress:
    """Reports nothing; for callers that only want the result."""

    @contextmanager
    def step(self, title: str) -> Iterator[None]:
        yield

    def update(self, detail: str) -> None:
        pass

    def info(self, message: str) -> None:
        pass
