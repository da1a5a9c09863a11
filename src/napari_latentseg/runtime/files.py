"""Atomic file writes: a reader never sees a half-written file, a crash leaves the old one."""

from __future__ import annotations

import contextlib
import os
import secrets
from collections.abc import Iterator
from pathlib import Path
from typing import IO

__all__ = ["atomic_write", "atomic_path", "temporary_sibling", "move_into_place"]


def temporary_sibling(path: str | os.PathLike[str], suffix: str = "") -> Path:
    """Create an empty, hidden, uniquely named file next to ``path`` and return its path.

    In the same folder, so the final rename stays on one file system (and is atomic).
    ``suffix`` keeps an extension that a format library needs to pick its writer.
    """
    path = Path(path)
    base = path.name[: -len(suffix)] if suffix and path.name.endswith(suffix) else path.name
    for _ in range(100):
        tmp = path.with_name(f".{base}.tmp-{secrets.token_hex(4)}{suffix}")
        try:
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
        except FileExistsError:
            continue
        os.close(fd)
        return tmp
    raise OSError(f"{path}: cannot create a temporary file next to it")


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def move_into_place(tmp: str | os.PathLike[str], path: str | os.PathLike[str],
                    overwrite: bool = True) -> None:
    """fsync ``tmp`` and rename it to ``path``.

    Raises
    ------
    FileExistsError
        If ``overwrite`` is False and ``path`` exists, also when it appeared while ``tmp`` was
        being written (a hard link refuses an existing target atomically).
    """
    tmp, path = Path(tmp), Path(path)
    _fsync(tmp)
    if overwrite:
        os.replace(tmp, path)
        return
    try:
        os.link(tmp, path)
    except FileExistsError:
        raise FileExistsError(f"{path}: file already exists; nothing was overwritten") from None
    except OSError:  # file systems without hard links
        if path.exists():
            raise FileExistsError(
                f"{path}: file already exists; nothing was overwritten") from None
        os.replace(tmp, path)
        return
    tmp.unlink()


@contextlib.contextmanager
def atomic_write(path: str | os.PathLike[str], mode: str = "w", *, overwrite: bool = True,
                 suffix: str = "", encoding: str | None = None) -> Iterator[IO]:
    """Open a temporary file next to ``path``; on success fsync it and rename it to ``path``.

    On an exception (or Ctrl-C) the temporary file is removed and ``path`` is left as it was.

    Parameters
    ----------
    path : path-like
        The file to write.
    mode : {"w", "wb"}
        Text or binary.
    overwrite : bool
        Replace an existing ``path``; without it a ``FileExistsError`` is raised, also when
        the file appeared during the write.
    suffix : str
        Extension of the temporary file.
    encoding : str, optional
        Text encoding (text mode; default UTF-8).
    """
    if mode not in ("w", "wb"):
        raise ValueError(f"mode must be 'w' or 'wb', got {mode!r}")
    path = Path(path)
    if not overwrite and path.exists():
        raise FileExistsError(f"{path}: file already exists; nothing was overwritten")
    tmp = temporary_sibling(path, suffix)
    try:
        kw = {"encoding": encoding or "utf-8"} if mode == "w" else {}
        with open(tmp, mode, **kw) as fh:
            yield fh
            fh.flush()
        move_into_place(tmp, path, overwrite)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike[str], *, overwrite: bool = True,
                suffix: str = "") -> Iterator[Path]:
    """Like :func:`atomic_write` for libraries that write to a path themselves."""
    path = Path(path)
    if not overwrite and path.exists():
        raise FileExistsError(f"{path}: file already exists; nothing was overwritten")
    tmp = temporary_sibling(path, suffix)
    try:
        yield tmp
        move_into_place(tmp, path, overwrite)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
