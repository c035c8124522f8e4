"""Live progress on stderr (rich), or nothing when it is off or stderr is not a terminal."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable, Iterator

from rich.console import Console
from rich.progress import BarColumn, Progress, SpinnerColumn, TaskProgressColumn, TextColumn, TimeElapsedColumn

StatusFn = Callable[[], tuple[float, str]]


class Live:
    def __init__(self, console: Console, enabled: bool) -> None:
        self.console = console
        self.enabled = enabled and console.is_terminal
        self._progress: Progress | None = None
        if self.enabled:
            self._progress = Progress(
                SpinnerColumn(),
                TextColumn("[bold]{task.description}"),
                BarColumn(),
                TaskProgressColumn(),
                TimeElapsedColumn(),
                TextColumn("{task.fields[info]}"),
                console=console,
                refresh_per_second=4,
                transient=False,
            )

    def __enter__(self) -> Live:
        if self._progress is not None:
            self._progress.start()
        return self

    def __exit__(self, *_exc: object) -> None:
        if self._progress is not None:
            self._progress.stop()

    def note(self, message: str) -> None:
        """A line that stays (always printed, progress or not)."""
        self.console.print(message, highlight=False)

    @contextlib.contextmanager
    def counter(self, description: str, total: int) -> Iterator[Callable[[], None]]:
        progress = self._progress
        if progress is None or total <= 0:
            yield lambda: None
            return
        task = progress.add_task(description, total=total, info="")

        def advance() -> None:
            progress.advance(task)

        try:
            yield advance
        finally:
            progress.update(task, completed=total)

    @contextlib.contextmanager
    def status(self, description: str) -> Iterator[None]:
        progress = self._progress
        if progress is None:
            yield
            return
        task = progress.add_task(description, total=None, info="")
        try:
            yield
        finally:
            progress.update(task, total=1, completed=1)

    @contextlib.asynccontextmanager
    async def running(self, description: str, status: StatusFn) -> AsyncIterator[None]:
        progress = self._progress
        if progress is None:
            yield
            return
        task = progress.add_task(description, total=1000, info="")

        def refresh() -> None:
            fraction, info = status()
            progress.update(task, completed=int(1000 * fraction), info=info)

        async def tick() -> None:
            while True:
                refresh()
                await asyncio.sleep(0.25)

        ticker = asyncio.get_running_loop().create_task(tick())
        try:
            yield
        finally:
            ticker.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await ticker
            refresh()
