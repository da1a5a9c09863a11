"""Format dispatch for reading, and the metadata every :class:`Volume` carries."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

import numpy as np

from ._dicom import DICOM_EXTENSIONS, folder_has_dicom, has_dicom_magic, read_dicom
from ._volume import Volume, VolumeIOError, describe_direction

__all__ = ["READ_EXTENSIONS", "detect_format", "is_supported_path", "read_volume"]

#: File name endings (lower case) read by :func:`read_volume`, and their format.
READ_EXTENSIONS: dict[str, str] = {
    ".nii.gz": "nifti",
    ".nii": "nifti",
    ".nrrd": "nrrd",
    ".nhdr": "nrrd",
    ".mha": "metaimage",
    ".mhd": "metaimage",
    **{ext: "dicom" for ext in DICOM_EXTENSIONS},
}


def detect_format(path: str | os.PathLike[str]) -> str | None:
    """Format name for ``path`` from its extension (``None`` if unknown).

    Parameters
    ----------
    path : path-like
        A file name.

    Returns
    -------
    str or None
        ``"nifti"``, ``"nrrd"``, ``"metaimage"``, ``"dicom"`` or ``None``.
    """
    name = Path(path).name.lower()
    for ext, fmt in READ_EXTENSIONS.items():
        if name.endswith(ext):
            return fmt
    return None


def is_supported_path(path: str | os.PathLike[str]) -> bool:
    """Cheap check that :func:`read_volume` can be tried on ``path``.

    True for a known extension, a file with the DICOM preamble (extension-less DICOM) or a
    folder where one of the first few files is DICOM. Nothing is decoded.

    Parameters
    ----------
    path : path-like
        File or folder.

    Returns
    -------
    bool
    """
    try:
        p = Path(path).expanduser()
    except TypeError:
        return False
    if p.is_dir():
        return folder_has_dicom(p)
    if detect_format(p) is not None:
        return True
    return p.is_file() and has_dicom_magic(p)


def _check_finite(data: np.ndarray, path: Path) -> None:
    if data.dtype.kind not in "fc":
        return
    finite = np.isfinite(data)
    if finite.all():
        return
    n_nan = int(np.isnan(data).sum())
    n_inf = int(data.size - finite.sum()) - n_nan
    raise VolumeIOError(
        f"{path}: image contains {n_nan} NaN and {n_inf} infinite value(s) out of "
        f"{data.size} voxels; replace them (e.g. with 0) before loading"
    )


def _dicom_list(paths: list[Path]) -> None:
    """Refuse a list of paths that are not all DICOM files (a list is one DICOM series)."""
    for f in paths:
        if not f.is_file():
            raise VolumeIOError(f"{f}: no such file (a list of paths is read as one DICOM "
                                "series)")
        fmt = detect_format(f)
        if not (fmt == "dicom" or (fmt is None and has_dicom_magic(f))):
            raise VolumeIOError(f"{f}: not a DICOM file; only DICOM files of one series can "
                                "be read together as one volume")


def _attach_label_classes(vol: Volume, p: Path, fmt: str) -> None:
    """Class names/colours from the label sidecars of a NIfTI/MetaImage file."""
    if fmt not in ("nifti", "metaimage") or vol.metadata.get("label_classes"):
        return
    from .labels_meta import read_label_sidecars

    try:
        classes = read_label_sidecars(p)
    except VolumeIOError as exc:  # a broken sidecar must not keep the scan from opening
        vol.metadata["label_classes_note"] = str(exc)
        return
    if classes:
        vol.metadata["label_classes"] = classes


def read_volume(
    path: str | os.PathLike[str] | list[str | os.PathLike[str]],
    *,
    series_uid: str | None = None,
    whole_series: bool = False,
) -> Volume:
    """Read a medical volume (NIfTI, NRRD, MetaImage or DICOM) into a :class:`Volume`.

    Parameters
    ----------
    path : path-like or list of path-like
        ``.nii``, ``.nii.gz``, ``.nrrd``, ``.nhdr``, ``.mha``, ``.mhd``, ``.dcm``/``.ima``
        (or an extension-less DICOM file), a folder of DICOM files, or a list of DICOM
        files read together as one series.
    series_uid : str, optional
        For DICOM: which series to read (default: the one with the most slices).
    whole_series : bool
        For a single DICOM file: read all files of its folder in the same series (what a
        user who picks one slice of a scan means). Default False: only that file.

    Returns
    -------
    Volume
        ``metadata`` always has ``modality``, ``source_path``, ``format``,
        ``original_dtype``, ``intensity_range``, ``latentseg_geometry`` and
        ``direction_note`` (``None`` when unknown / identity), plus format extras:
        ``label_classes`` (the class table, see :mod:`napari_latentseg.io.labels_meta`)
        when the file carries label names; ``dicom_window`` for DICOM. ``source_path`` is
        the folder for a list of files or an expanded series.

    Raises
    ------
    VolumeIOError
        Missing path, unsupported extension, folder without DICOM, corrupt or truncated
        file, 4D+ data, NaN/inf values, a list holding non-DICOM files.
    """
    if isinstance(path, list | tuple):
        paths = [Path(x).expanduser() for x in path]
        if not paths:
            raise VolumeIOError("no file given")
        if len(paths) > 1:
            _dicom_list(paths)
            vol = _guarded(paths[0].parent, "dicom", lambda: read_dicom(
                paths, series_uid=series_uid))
            return _finish(vol, paths[0].parent, "dicom")
        path = paths[0]
    p = Path(path).expanduser()
    if not p.exists():
        raise VolumeIOError(f"{p}: no such file or folder")
    if p.is_dir():
        fmt = "dicom"
    else:
        fmt = detect_format(p)
        if fmt is None:
            if has_dicom_magic(p):
                fmt = "dicom"
            else:
                raise VolumeIOError(
                    f"{p}: unsupported file type; expected one of "
                    + ", ".join(READ_EXTENSIONS)
                    + " or a DICOM folder"
                )

    def read() -> Volume:
        if fmt == "nifti":
            from ._nifti import read_nifti

            return read_nifti(p)
        if fmt == "nrrd":
            from ._nrrd import read_nrrd

            return read_nrrd(p)
        if fmt == "metaimage":
            from ._metaimage import read_metaimage

            return read_metaimage(p)
        return read_dicom(p, series_uid=series_uid, whole_series=whole_series)

    vol = _guarded(p, fmt, read)
    series = vol.metadata.get("dicom_series")
    if p.is_file() and isinstance(series, dict) and series.get("n_files", 1) > 1:
        p = p.parent  # a file expanded to its series: the folder is the source
    _attach_label_classes(vol, p, fmt)
    return _finish(vol, p, fmt)


def _guarded(p: Path, fmt: str, read: Callable[[], Volume]) -> Volume:
    """Run a format reader, turning any library failure into one clear VolumeIOError."""
    try:
        return read()
    except VolumeIOError:
        raise
    except MemoryError as exc:
        raise VolumeIOError(f"{p}: not enough memory to load the image") from exc
    except Exception as exc:  # any other library failure: still one clear message
        raise VolumeIOError(f"{p}: cannot read {fmt} file ({type(exc).__name__}: {exc})") from exc


def _finish(vol: Volume, p: Path, fmt: str) -> Volume:
    """Checks and the metadata every volume carries."""
    _check_finite(vol.data, p)
    if vol.data.size == 0:
        raise VolumeIOError(f"{p}: image is empty (shape {vol.data.shape})")
    if vol.data.dtype == np.bool_:
        vol.data = vol.data.astype(np.uint8)
    if not vol.data.dtype.isnative:  # big-endian files: torch/napari want native order
        vol.data = vol.data.astype(vol.data.dtype.newbyteorder("="))
    meta = vol.metadata
    meta.setdefault("modality", None)
    meta.setdefault("original_dtype", str(vol.data.dtype))
    meta["source_path"] = str(p)
    meta["format"] = fmt
    meta["intensity_range"] = [float(vol.data.min()), float(vol.data.max())]
    meta["direction_note"] = describe_direction(vol.direction)
    meta["latentseg_geometry"] = vol.geometry()
    return vol
