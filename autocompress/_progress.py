"""Progress that a CI log can read.

On a terminal this is rich's live bar. On a pipe or a file rich draws a live bar once, at the
end (or never, when it is transient), so a log shows nothing while the work goes on; there
:class:`LoggedProgress` prints plain lines instead, made of the bar's own text columns::

    trials 3/24 feasible 2 best feasible energy reduction 1.52x elapsed 0:00:41 left ~0:02:10
"""
from __future__ import annotations

import math

from rich.progress import BarColumn, Progress, ProgressColumn, TaskID
from rich.text import Text

__all__ = ["LoggedProgress"]


class LoggedProgress(Progress):
    """A rich ``Progress`` that, when its console is not a terminal, prints one plain line when a
    task's count moves, at most one every ``every`` seconds (0: every move), and always the line
    that finishes the task. ``disable=True`` silences both forms (e.g. when stdout carries JSON)."""

    def __init__(self, *columns, every: float = 5.0, disable: bool = False, **kwargs):
        super().__init__(*columns, disable=disable, **kwargs)
        self.plain = not disable and not self.console.is_terminal
        if self.plain:
            self.disable = True  # no live display: it would only be drawn at the end
        self.every = every
        self._logged: dict[TaskID, tuple[float, float]] = {}  # task -> (time, count) of its last line

    def update(self, task_id: TaskID, **kwargs) -> None:
        super().update(task_id, **kwargs)
        if self.plain:
            self._log(task_id)

    def advance(self, task_id: TaskID, advance: float = 1) -> None:
        super().advance(task_id, advance)
        if self.plain:
            self._log(task_id)

    def plain_line(self, task_id: TaskID) -> str:
        """The task as one line of text: every column but the bar itself."""
        with self._lock:
            task = self._tasks[task_id]
            parts = []
            for column in self.columns:
                if isinstance(column, BarColumn):
                    continue
                shown = column.format(task=task) if isinstance(column, str) else (
                    column.render(task) if isinstance(column, ProgressColumn) else None)
                if isinstance(shown, Text):
                    shown = shown.plain
                if isinstance(shown, str) and shown.strip():
                    parts.append(" ".join(shown.split()))
        return " ".join(parts)

    def _log(self, task_id: TaskID) -> None:
        with self._lock:
            task = self._tasks[task_id]
            now = self.get_time()
            last_time, last_count = self._logged.get(task_id, (-math.inf, math.nan))
            if task.completed == last_count:
                return  # only fields changed: the next count's line shows them
            done = task.total is not None and task.completed >= task.total
            if not done and now - last_time < self.every:
                return
            self._logged[task_id] = (now, task.completed)
        self.console.print(self.plain_line(task_id), markup=False, highlight=False, soft_wrap=True)
