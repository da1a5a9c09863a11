"""Finding DICOM image files and grouping them into series (headers only, no pixels)."""

from __future__ import annotations

import os
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ._volume import VolumeIOError

__all__ = [
    "DICOM_EXTENSIONS",
    "dicom_series_uid",
    "folder_has_dicom",
    "has_dicom_magic",
    "list_dicom_series",
]

DICOM_EXTENSIONS = (".dcm", ".dicom", ".ima")
#: SOP classes that never hold an image volume (DICOMDIR media storage directory).
_NON_IMAGE_SOP = {"1.2.840.10008.1.3.10"}


def has_dicom_magic(path: str | os.PathLike[str]) -> bool:
    """Return True when the file has the DICOM Part 10 preamble (``DICM`` at byte 128)."""
    try:
        with open(path, "rb") as fh:
            head = fh.read(132)
    except OSError:
        return False
    return len(head) == 132 and head[128:132] == b"DICM"


def _iter_files(folder: Path) -> Iterator[Path]:
    """Files under ``folder``, recursively, in a stable (sorted) order; hidden ones skipped."""
    for root, dirs, files in os.walk(folder):
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        for name in sorted(files):
            if not name.startswith("."):
                yield Path(root) / name


def folder_has_dicom(folder: str | os.PathLike[str], max_files: int = 32) -> bool:
    """Cheap check: does one of the first ``max_files`` files in ``folder`` look like DICOM?

    Parameters
    ----------
    folder : path-like
        Folder to look into (recursively).
    max_files : int
        How many files to open at most.

    Returns
    -------
    bool
    """
    for n, f in enumerate(_iter_files(Path(folder))):
        if n >= max_files:
            return False
        if f.name.upper() != "DICOMDIR" and has_dicom_magic(f):
            return True
    return False


@dataclass
class _Entry:
    """One DICOM image file found while scanning (header only)."""

    path: Path
    ds: Any  # pydicom Dataset, without pixel data
    n_frames: int
    rows: int
    cols: int
    series_uid: str

    @property
    def multi_frame(self) -> bool:
        return self.n_frames > 1 or "PerFrameFunctionalGroupsSequence" in self.ds


def _read_header(path: Path) -> Any | None:
    """The header of an image DICOM file, or None if it is not one."""
    import pydicom
    from pydicom.errors import InvalidDicomError

    force = False
    if not has_dicom_magic(path):
        if path.suffix.lower() not in DICOM_EXTENSIONS:
            return None
        force = True  # a .dcm without preamble: let pydicom try
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            ds = pydicom.dcmread(str(path), stop_before_pixels=True, force=force)
    except (InvalidDicomError, OSError, EOFError, ValueError, KeyError, TypeError):
        return None
    if "Rows" not in ds or "Columns" not in ds:
        return None
    sop = str(ds.get("SOPClassUID", "")) or str(
        getattr(getattr(ds, "file_meta", None), "MediaStorageSOPClassUID", "")
    )
    if sop in _NON_IMAGE_SOP:
        return None
    return ds


def _entry(path: Path, ds: Any) -> _Entry:
    try:
        n_frames = int(ds.get("NumberOfFrames", 1) or 1)
    except (TypeError, ValueError):
        n_frames = 1
    return _Entry(
        path=path,
        ds=ds,
        n_frames=max(n_frames, 1),
        rows=int(ds.Rows),
        cols=int(ds.Columns),
        series_uid=str(ds.get("SeriesInstanceUID", "") or "unknown"),
    )


def _scan(path: Path | list[Path]) -> dict[str, list[_Entry]]:
    """Group the image files under ``path`` (a folder, one file or a list of files) by
    series UID."""
    if isinstance(path, list):
        files: Iterator[Path] = iter(path)
    elif path.is_dir():
        files = _iter_files(path)
    else:
        files = iter([path])
    series: dict[str, list[_Entry]] = {}
    seen_instances: set[str] = set()
    for f in files:
        if f.name.upper() == "DICOMDIR":
            continue
        ds = _read_header(f)
        if ds is None:
            continue
        sop_uid = str(ds.get("SOPInstanceUID", "")) or str(f)
        if sop_uid in seen_instances:  # the same image copied twice
            continue
        seen_instances.add(sop_uid)
        e = _entry(f, ds)
        series.setdefault(e.series_uid, []).append(e)
    return series


def _series_size(entries: list[_Entry]) -> int:
    if any(e.multi_frame for e in entries):
        return max(e.n_frames for e in entries)
    return len(entries)


def _series_summary(uid: str, entries: list[_Entry]) -> dict[str, Any]:
    first = entries[0].ds
    return {
        "uid": uid,
        "description": str(first.get("SeriesDescription", "") or ""),
        "modality": str(first.get("Modality", "") or "") or None,
        "n_files": len(entries),
        "shape": [_series_size(entries), entries[0].rows, entries[0].cols],
    }


def _sorted_series(series: dict[str, list[_Entry]]) -> list[tuple[str, list[_Entry]]]:
    return sorted(
        series.items(),
        key=lambda kv: (-_series_size(kv[1]), -kv[1][0].rows * kv[1][0].cols, kv[0]),
    )


def list_dicom_series(folder: str | os.PathLike[str]) -> list[dict[str, Any]]:
    """List the image series found under ``folder`` (recursively), largest first.

    Parameters
    ----------
    folder : path-like
        A folder (or a single DICOM file).

    Returns
    -------
    list of dict
        ``{"uid", "description", "modality", "n_files", "shape"}`` per series, ``shape``
        being ``[n_slices, rows, cols]``; sorted by number of slices, largest first.

    Raises
    ------
    VolumeIOError
        If ``folder`` does not exist.
    """
    path = Path(folder).expanduser()
    if not path.exists():
        raise VolumeIOError(f"{path}: no such file or folder")
    return [_series_summary(uid, entries) for uid, entries in _sorted_series(_scan(path))]


def dicom_series_uid(path: str | os.PathLike[str]) -> str | None:
    """``SeriesInstanceUID`` of a DICOM image file (``"unknown"`` when it has none), or
    ``None`` when ``path`` is not a DICOM image; reads the header only."""
    p = Path(path)
    ds = _read_header(p)
    return None if ds is None else _entry(p, ds).series_uid


def _series_files(path: Path, series_uid: str | None) -> tuple[list[Path] | Path, str | None]:
    """For a single-frame DICOM file: the files of its folder (not recursive) and its
    series UID, so that the whole series is read; otherwise ``path`` unchanged."""
    ds = _read_header(path)
    if ds is None or _entry(path, ds).multi_frame:
        return path, series_uid
    siblings = [f for f in sorted(path.parent.iterdir())
                if f.is_file() and not f.name.startswith(".") and f.name.upper() != "DICOMDIR"]
    return siblings, series_uid or _entry(path, ds).series_uid
