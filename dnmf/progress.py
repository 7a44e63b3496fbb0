"""Progress display of a fit: a live line on a terminal, plain lines otherwise.

Knows nothing of how the fit runs: it is a callback fed :class:`dnmf.solvers.IterationInfo`.
"""

from __future__ import annotations

import math
import sys
import time
from typing import IO, Any

from rich.console import Console
from rich.live import Live
from rich.text import Text

from dnmf.solvers import IterationInfo

#: Without a terminal, one line every this many iterations (plus the first and the last).
PLAIN_EVERY = 10


def format_eta(seconds: float, remaining: int) -> str:
    """``remaining`` steps of ``seconds`` each as ``M:SS`` (``H:MM:SS`` from an hour)."""
    total = int(seconds * remaining)
    minutes, secs = divmod(total, 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours:d}:{minutes:02d}:{secs:02d}" if hours else f"{minutes:d}:{secs:02d}"


def format_iteration(info: IterationInfo) -> str:
    """One line: iteration, loss, relative error, s/iteration, GB/s read, ETA at this rate."""
    rate = f"{info.bytes_read / info.seconds / 1e9:5.2f} GB/s" if info.bytes_read else "in memory"
    # β-divergences: the relative (Frobenius) error is only known at the end
    rel = "" if math.isnan(info.relative_error) else f"rel.err {info.relative_error:.6f}  "
    # loss_every: the iterations between two evaluations have no loss (NaN in the history)
    loss = "not evaluated" if math.isnan(info.loss) else f"{info.loss:.6e}"
    return (
        f"iter {info.iteration:>5}/{info.max_iter}  loss {loss:>13}  "
        f"{rel}{info.seconds:6.2f} s/it  {rate}  "
        f"ETA {format_eta(info.seconds, info.max_iter - info.iteration)}"
    )


class FitProgress:
    """Per-iteration progress for the CLI.

    Parameters
    ----------
    quiet : bool
        Show nothing.
    stream : file, optional
        Where to write (default: stderr: stdout carries results only). A live display is used
        only when it is a terminal.
    every : int
        Iterations between plain lines when not on a terminal.
    """

    def __init__(self, *, quiet: bool = False, stream: IO[str] | None = None,
                 every: int = PLAIN_EVERY) -> None:
        self.quiet = quiet
        self.stream = stream or sys.stderr
        self.every = every
        self.console = Console(file=self.stream, highlight=False)
        self.live: Live | None = None
        self.last: IterationInfo | None = None
        self.t0 = time.perf_counter()

    @property
    def interactive(self) -> bool:
        return bool(getattr(self.stream, "isatty", lambda: False)()) and self.console.is_terminal

    def __enter__(self) -> FitProgress:
        if not self.quiet and self.interactive:
            self.live = Live(Text("starting ..."), console=self.console, transient=False,
                             refresh_per_second=4)
            self.live.__enter__()
        return self

    def __exit__(self, *exc: Any) -> None:
        if self.live is not None:
            self.live.__exit__(*exc)
            self.live = None
        elif self.last is not None and not self.quiet and self.last.iteration % self.every:
            self.echo(format_iteration(self.last))  # the last iteration always shows

    def echo(self, text: str) -> None:
        """A line of text (not shown with ``quiet``)."""
        if self.quiet:
            return
        if self.live is not None:
            self.live.console.print(text)
        else:
            print(text, file=self.stream, flush=True)

    def __call__(self, info: IterationInfo) -> None:
        self.last = info
        if self.quiet:
            return
        if self.live is not None:
            self.live.update(Text(format_iteration(info)))
        elif info.iteration == 1 or info.iteration % self.every == 0:
            self.echo(format_iteration(info))


class TaskProgress:
    """A progress bar over the tasks of in-process Dask computations (a terminal only).

    Wraps :class:`dask.callbacks.Callback`; computations on a distributed cluster show no bar
    (the dashboard has one).
    """

    def __init__(self, description: str, *, stream: IO[str] | None = None,
                 quiet: bool = False) -> None:
        from dask.callbacks import Callback
        from rich.progress import BarColumn, Progress, TaskProgressColumn, TimeRemainingColumn

        self.stream = stream or sys.stderr
        enabled = not quiet and bool(getattr(self.stream, "isatty", lambda: False)())
        self.progress = Progress(
            "[progress.description]{task.description}", BarColumn(), TaskProgressColumn(),
            TimeRemainingColumn(), console=Console(file=self.stream), transient=True,
            disable=not enabled,
        )
        bar = self.progress
        task_id = bar.add_task(description, total=None)

        class _Callback(Callback):
            def _start_state(self, dsk: Any, state: Any) -> None:
                bar.update(task_id, total=len(dsk), completed=0)

            def _posttask(self, key: Any, result: Any, dsk: Any, state: Any, id: Any) -> None:
                bar.advance(task_id)

        self.callback = _Callback()

    def __enter__(self) -> TaskProgress:
        self.progress.__enter__()
        self.callback.__enter__()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.callback.__exit__(*exc)
        self.progress.__exit__(*exc)
