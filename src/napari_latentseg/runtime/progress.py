"""Helpers shared by the core's long-running generators."""

from __future__ import annotations

import threading
from collections.abc import Callable, Generator

__all__ = ["Cancelled", "drive", "check_stop"]


class Cancelled(Exception):
    """Raised by a core generator when its ``stop_event`` is set and it has nothing to return."""


def check_stop(stop_event: threading.Event | None, what: str) -> None:
    """Raise :class:`Cancelled` if ``stop_event`` is set."""
    if stop_event is not None and stop_event.is_set():
        raise Cancelled(f"{what} was cancelled")


def drive(
    gen: Generator[dict, None, object],
    progress: Callable[[dict], None] | None = None,
):
    """Run a core generator to completion, passing each yielded dict to ``progress``.

    Returns the generator's return value.
    """
    while True:
        try:
            ev = next(gen)
        except StopIteration as stop:
            return stop.value
        if progress is not None:
            progress(ev)
