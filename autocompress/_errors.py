"""The one exception type the CLI turns into a one-line message and exit code 2."""
from __future__ import annotations

import difflib


class UserError(Exception):
    """Bad input from the user: the message says what is wrong and how to fix it."""


class NothingFeasible(Exception):
    """A search finished but no candidate met the constraints (CLI exit code 3).

    ``result`` holds the SearchResult (every trial) when a search raised it."""

    def __init__(self, message: str, result=None):
        super().__init__(message)
        self.result = result


def unknown_name(kind: str, name: str, valid: list[str]) -> UserError:
    close = difflib.get_close_matches(name, valid, n=1)
    hint = f" Did you mean {close[0]!r}?" if close else ""
    return UserError(f"unknown {kind} {name!r}.{hint} Valid: {', '.join(sorted(valid))}")
