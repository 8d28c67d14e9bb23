"""Stand-in training processes for the executor tests (a spawned process finds its target by module and
name, so they live in a module of their own)."""

from __future__ import annotations

import time
from typing import Any


def preparing_forever(job: Any, messages: Any, stop: Any) -> None:
    """Never gets past loading and preparing (as with a huge corpus): reports nothing and ignores the stop
    event, as the library does while it prepares data."""
    while True:
        time.sleep(1)
