"""One sentence for the user from an exception: the CLI, the batch summary and the dock share it."""

from __future__ import annotations

from dataclasses import dataclass

from .progress import Cancelled

__all__ = ["UserError", "ErrorReport", "explain", "CLI_HINTS", "DOCK_HINTS", "BATCH_HINTS"]


class UserError(Exception):
    """A problem of the user's input or request, explained by its message alone."""


# What to do about running out of memory differs by where the user is.
CLI_HINTS = {
    "gpu_oom": "the GPU ran out of memory; use a smaller --tile or --device cpu",
    "oom": "out of memory; use a smaller --tile or a smaller configuration (cpu-2d-fine)",
}
BATCH_HINTS = {
    "gpu_oom": "GPU out of memory while processing this scan (use --device cpu or a smaller "
               "--tile)",
    "oom": "out of memory while processing this scan (use fewer workers per machine)",
}
DOCK_HINTS = {
    "gpu_oom": "the GPU ran out of memory. Choose the CPU under Device (section 2), a smaller "
               "Tile size (section 3) or a smaller configuration such as cpu-2d-fine, or close "
               "other programs using the GPU.",
    "oom": "not enough memory. Close other programs, crop the scan, or choose a smaller "
           "configuration (cpu-2d-fine).",
}

# Exceptions whose message is the whole story: input, files, settings.
_EXPECTED = (UserError, ValueError, FileExistsError, FileNotFoundError, NotADirectoryError,
             IsADirectoryError, PermissionError)


@dataclass(frozen=True)
class ErrorReport:
    """What to tell the user about an exception.

    Attributes
    ----------
    message : str
        One line, at most ``limit`` characters.
    kind : {"input", "memory", "cancelled", "failure"}
        ``input``: a problem of the input or request, the message says what to change;
        ``memory``: out of (GPU) memory, the message says what to try; ``cancelled``: stopped
        by the user; ``failure``: anything else (worth a traceback in a log).
    """

    message: str
    kind: str

    @property
    def expected(self) -> bool:
        """True unless the failure is unexplained (a bug or an environment problem)."""
        return self.kind != "failure"


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0].strip() if text else ""


def explain(exc: BaseException, hints: dict[str, str] | None = None,
            limit: int = 500) -> ErrorReport:
    """Turn ``exc`` into one line for the user.

    Parameters
    ----------
    exc : BaseException
        The exception.
    hints : dict, optional
        ``gpu_oom`` and ``oom`` sentences for out-of-memory errors, phrased for where the user
        is (:data:`CLI_HINTS`, :data:`BATCH_HINTS`, :data:`DOCK_HINTS`); default CLI's.
    limit : int
        Longest message.
    """
    hints = {**CLI_HINTS, **(hints or {})}
    text = _first_line(exc)
    if isinstance(exc, Cancelled):
        return ErrorReport(text or "cancelled", "cancelled")
    if "outofmemory" in type(exc).__name__.lower() or (
            isinstance(exc, RuntimeError) and "out of memory" in text.lower()):
        return ErrorReport(hints["gpu_oom"][:limit], "memory")
    if isinstance(exc, MemoryError):
        return ErrorReport(hints["oom"][:limit], "memory")
    if isinstance(exc, _EXPECTED):
        msg = text or type(exc).__name__
        return ErrorReport(msg[:limit], "input")
    msg = f"{type(exc).__name__}: {text}" if text else type(exc).__name__
    return ErrorReport(msg[:limit], "failure")
