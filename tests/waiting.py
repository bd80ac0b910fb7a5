"""Waiting on what a test needs (a file's content, a process's exit), never on a wall-clock
deadline that a busy machine misses."""
from __future__ import annotations

import subprocess
import time
from typing import Callable

# only a guard against a hung process: every wait ends on its event long before this
HUNG_S = 1800.0


def wait_until(ready: Callable[[], bool], proc: subprocess.Popen | None = None, *, poll_s: float = 0.25) -> bool:
    """Block until ``ready()`` holds or ``proc`` has exited; True when ``ready()`` held."""
    start = time.monotonic()
    while not ready():
        if proc is not None and proc.poll() is not None:
            return ready()
        if time.monotonic() - start > HUNG_S:
            raise AssertionError(f"nothing happened in {HUNG_S:.0f} s: the process looks hung")
        time.sleep(poll_s)
    return True
