"""What long-running commands show a person: human-readable sizes and the one progress bar.

Why here and not in each caller: the importers, feature extraction and the synthetic generator
(and any later layer) show progress the same way, a rich bar on stderr with a throughput
column, so stdout stays clean for what the command prints; ``enabled=False`` (``-q``) makes
the same code silent.
"""

from __future__ import annotations

from types import TracebackType
from typing import TYPE_CHECKING, Any, Literal

if TYPE_CHECKING:
    from rich.progress import Progress, TaskID

#: What a bar counts: bytes (shown as size and MB/s) or images (shown as M/N and img/s).
ProgressUnit = Literal["bytes", "images"]


def human_bytes(n: int) -> str:
    """1536 -> '1.5 KiB'."""
    size = float(n)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if size < 1024 or unit == "GiB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    return f"{n} B"  # pragma: no cover


class ProgressBar:
    """A rich progress bar on stderr with throughput, or nothing; made by :func:`progress_bar`.

    Use as a context manager and call :meth:`advance`.
    """

    def __init__(self, bar: Progress | None = None, task: TaskID | None = None) -> None:
        self._bar = bar
        self._task = task

    def __enter__(self) -> ProgressBar:
        if self._bar is not None:
            self._bar.start()
        return self

    def advance(self, amount: float, description: str | None = None) -> None:
        """Count ``amount`` more units done (and optionally change the description)."""
        if self._bar is not None and self._task is not None:
            self._bar.update(self._task, advance=amount, description=description)

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self._bar is not None:
            self._bar.stop()


def progress_bar(
    description: str,
    total: int,
    *,
    unit: ProgressUnit = "bytes",
    enabled: bool = True,
    transient: bool = False,
) -> ProgressBar:
    """The progress bar of every long data operation: ``total`` units of ``unit``.

    ``enabled=False`` (``-q``) gives a bar that shows nothing; ``transient`` removes the bar when
    it stops (for steps whose result is printed after).
    """
    if not enabled:
        return ProgressBar()
    return ProgressBar(*_rich_bar(description, total, unit, transient))


def _rich_bar(
    description: str, total: int, unit: ProgressUnit, transient: bool
) -> tuple[Progress, TaskID]:
    # rich is imported only when a bar is shown: this module is on `msdn-tune run`'s start-up path
    from rich.console import Console
    from rich.progress import (
        BarColumn,
        DownloadColumn,
        MofNCompleteColumn,
        Progress,
        ProgressColumn,
        TextColumn,
        TimeRemainingColumn,
        TransferSpeedColumn,
    )
    from rich.text import Text

    class ImagesPerSecond(ProgressColumn):
        def render(self, task: Any) -> Text:
            speed = task.finished_speed or task.speed
            return Text("? img/s" if speed is None else f"{speed:.1f} img/s")

    columns: list[ProgressColumn]
    if unit == "bytes":
        columns = [DownloadColumn(), TransferSpeedColumn()]
    else:
        columns = [MofNCompleteColumn(), ImagesPerSecond()]
    bar = Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        *columns,
        TimeRemainingColumn(),
        console=Console(stderr=True),
        transient=transient,
    )
    return bar, bar.add_task(description, total=total)
