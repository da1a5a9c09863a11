"""Crash-safe copies of the user's annotations, kept per scan until restored or discarded.

The dock autosaves each annotation layer a few seconds after it was painted; after a crash,
reopening the scan offers to restore them. This module holds everything but the timer: where
the copies live, how they are named, written and read (no napari, no Qt).

Layout
------
``<root>/<key>/<name>.npz`` where

- ``<root>`` is ``$LATENTSEG_RECOVERY_DIR`` when set (tests point it at a temporary folder),
  else ``~/.cache/napari-latentseg/recovery``;
- ``<key>`` is 16 hex digits of the SHA-256 of the scan's absolute source path (or, for a scan
  that never was a file, its layer name) and its shape: the same scan reopened finds its copies,
  another scan of the same name or shape does not;
- ``<name>`` is the annotation layer's name made safe for a file name.

Each ``.npz`` holds ``labels`` (the array) and ``meta`` (JSON: layer name, class table, locked
classes, scan source and shape, time saved). It is written with
:func:`~napari_latentseg.runtime.files.atomic_write` (temporary file in the same folder, fsync,
rename), so a crash or ``kill -9`` mid-save leaves the previous complete copy or the new one,
never a half-written file.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from .runtime.files import atomic_write

__all__ = [
    "ENV_VAR",
    "Snapshot",
    "discard_snapshots",
    "list_snapshots",
    "load_snapshot",
    "recovery_root",
    "save_snapshot",
    "scan_folder",
    "scan_key",
]

#: Environment variable that moves the recovery folder (tests, shared machines).
ENV_VAR = "LATENTSEG_RECOVERY_DIR"
_SUFFIX = ".npz"
#: Temporary files of a writer killed mid-save are removed once they are this old (seconds).
_STALE_TMP_S = 600.0


@dataclass
class Snapshot:
    """An autosaved annotation layer.

    Attributes
    ----------
    labels : np.ndarray
        The annotations (0 = not annotated).
    name : str
        The layer's name when it was saved.
    classes : list of dict
        ``[{"value", "name", "color"}]`` (may be empty).
    locked : list of int
        Classes the user had locked.
    source : str or None
        The scan it belongs to (path or ``"layer:<name>"``).
    saved_at : float
        Seconds since the epoch.
    path : Path or None
        The file it was read from.
    """

    labels: np.ndarray
    name: str
    classes: list[dict[str, Any]] = field(default_factory=list)
    locked: list[int] = field(default_factory=list)
    source: str | None = None
    saved_at: float = 0.0
    path: Path | None = None

    @property
    def painted(self) -> int:
        """Number of annotated voxels."""
        return int(np.count_nonzero(self.labels))


def recovery_root() -> Path:
    """The folder holding every scan's recovery copies (``$LATENTSEG_RECOVERY_DIR`` first)."""
    env = os.environ.get(ENV_VAR)
    if env:
        return Path(env).expanduser()
    return Path.home() / ".cache" / "napari-latentseg" / "recovery"


def scan_key(source: str, shape: Sequence[int]) -> str:
    """16 hex digits naming a scan by its source (absolute path or layer name) and shape."""
    if not source:
        raise ValueError("a scan needs a source path or name to have a recovery folder")
    if not source.startswith("layer:"):
        source = os.path.abspath(os.path.expanduser(source))
    text = f"{source}|{tuple(int(s) for s in shape)}"
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:16]


def scan_folder(source: str, shape: Sequence[int], *, create: bool = False) -> Path:
    """The recovery folder of a scan (created with ``create``)."""
    folder = recovery_root() / scan_key(source, shape)
    if create:
        folder.mkdir(parents=True, exist_ok=True)
    return folder


def _file_name(name: str) -> str:
    safe = re.sub(r"[^A-Za-z0-9._-]+", "_", name).strip("._") or "annotations"
    return safe[:120] + _SUFFIX


def save_snapshot(
    folder: str | os.PathLike[str],
    name: str,
    labels: np.ndarray,
    *,
    classes: Iterable[dict[str, Any]] = (),
    locked: Iterable[int] = (),
    source: str | None = None,
) -> Path:
    """Write (or replace) the copy of annotation layer ``name`` atomically.

    Parameters
    ----------
    folder : path-like
        The scan's recovery folder (see :func:`scan_folder`); created if missing.
    name : str
        The layer's name (the file is named after it).
    labels : np.ndarray
        The annotations; the caller passes a copy it no longer changes.
    classes, locked, source
        Stored with the labels (see :class:`Snapshot`).

    Returns
    -------
    Path
        The written file.

    Raises
    ------
    ValueError
        If ``labels`` is not a 2D or 3D integer array.
    """
    arr = np.asarray(labels)
    if arr.ndim not in (2, 3) or arr.dtype.kind not in "iub":
        raise ValueError(f"annotations must be a 2D or 3D integer array, got {arr.dtype} "
                         f"{arr.shape}")
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    meta = {
        "name": str(name),
        "classes": [{"value": int(c["value"]), "name": str(c["name"]),
                     "color": [float(v) for v in c.get("color") or []]} for c in classes],
        "locked": sorted(int(c) for c in locked),
        "source": source,
        "shape": [int(s) for s in arr.shape],
        "saved_at": time.time(),
    }
    path = folder / _file_name(name)
    with atomic_write(path, "wb", suffix=_SUFFIX) as fh:
        np.savez_compressed(fh, labels=arr, meta=np.array(json.dumps(meta)))
    _remove_stale_temporaries(folder)
    return path


def _remove_stale_temporaries(folder: Path) -> None:
    """Temporary files left by a writer that was killed (never a live writer's file)."""
    now = time.time()
    for tmp in folder.glob(f".*.tmp-*{_SUFFIX}"):
        try:
            if now - tmp.stat().st_mtime > _STALE_TMP_S:
                tmp.unlink()
        except OSError:
            pass


def load_snapshot(path: str | os.PathLike[str]) -> Snapshot:
    """Read a copy written by :func:`save_snapshot`.

    Raises
    ------
    ValueError
        If the file is not a recovery copy (one sentence naming the file).
    """
    path = Path(path)
    try:
        with np.load(path, allow_pickle=False) as z:
            labels = np.array(z["labels"])
            meta = json.loads(str(z["meta"]))
    except (OSError, KeyError, ValueError) as exc:
        raise ValueError(f"{path}: not a readable recovery copy ({exc})") from exc
    return Snapshot(labels, str(meta.get("name") or path.stem), list(meta.get("classes") or []),
                    [int(c) for c in meta.get("locked") or []], meta.get("source"),
                    float(meta.get("saved_at") or 0.0), path)


def list_snapshots(folder: str | os.PathLike[str]) -> list[Path]:
    """The recovery copies in ``folder``, newest first (temporary files are skipped)."""
    folder = Path(folder)
    if not folder.is_dir():
        return []
    files = [p for p in folder.glob(f"*{_SUFFIX}") if not p.name.startswith(".")]
    return sorted(files, key=lambda p: p.stat().st_mtime, reverse=True)


def discard_snapshots(paths: Iterable[str | os.PathLike[str]]) -> int:
    """Delete recovery copies; returns how many were removed."""
    n = 0
    for p in paths:
        try:
            Path(p).unlink()
            n += 1
        except FileNotFoundError:
            pass
    return n
