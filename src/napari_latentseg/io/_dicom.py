"""DICOM reading with pydicom (SimpleITK/GDCM as a fallback pixel decoder).

A folder is scanned recursively; files that are not DICOM images (other files, DICOMDIR,
structured reports, RT structures ...) are ignored. Images are grouped by
``SeriesInstanceUID``; the requested series, else the one with the most slices, is read.

Finding files and grouping them by series lives in :mod:`._dicom_scan`.

Slice geometry follows the DICOM standard (PS3.3 C.7.6.2): the first triplet of
``ImageOrientationPatient`` is the direction of increasing column index ``i``, the second
that of increasing row index ``j``; slices are sorted by the projection of
``ImagePositionPatient`` on the normal ``row x col`` and the slice spacing comes from those
positions (not from ``SliceThickness``). ``RescaleSlope``/``RescaleIntercept`` are applied
per slice (CT values are then in HU).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ._dicom_pixels import _decode
from ._dicom_scan import (
    DICOM_EXTENSIONS,
    _Entry,
    _series_files,
    _series_size,
    _sorted_series,
    dicom_series_uid,
    folder_has_dicom,
    has_dicom_magic,
    list_dicom_series,
)
from ._dicom_scan import _scan as _scan
from ._volume import Volume, VolumeIOError, volume_from_itk_affine

__all__ = [
    "DICOM_EXTENSIONS",
    "dicom_series_uid",
    "folder_has_dicom",
    "has_dicom_magic",
    "list_dicom_series",
    "read_dicom",
]

# --------------------------------------------------------------------------------------
# reading one series


@dataclass
class _Frame:
    """One 2D image of the volume: a single-frame file or a frame of a multi-frame file."""

    entry: _Entry
    index: int | None  # frame index inside a multi-frame file
    ipp: np.ndarray | None
    iop: np.ndarray | None
    pixel_spacing: tuple[float, float] | None
    slope: float
    intercept: float
    order: float  # InstanceNumber (or frame number) for files without positions


def _floats(value: Any, n: int) -> np.ndarray | None:
    if value is None:
        return None
    try:
        arr = np.asarray([float(v) for v in value], dtype=float)
    except (TypeError, ValueError):
        return None
    if arr.size != n or not np.all(np.isfinite(arr)):
        return None
    return arr


def _float(value: Any, default: float) -> float:
    try:
        out = float(value)
    except (TypeError, ValueError):
        return default
    return out if np.isfinite(out) else default


def _rescale(ds: Any) -> tuple[float, float]:
    slope = ds.get("RescaleSlope")
    if slope is None and "DoseGridScaling" in ds:  # RT dose: stored * scaling = Gy
        slope = ds.get("DoseGridScaling")
    return _float(slope, 1.0), _float(ds.get("RescaleIntercept"), 0.0)


def _frames_single(entries: list[_Entry]) -> list[_Frame]:
    frames = []
    for n, e in enumerate(entries):
        ds = e.ds
        ps = _floats(ds.get("PixelSpacing"), 2)
        slope, intercept = _rescale(ds)
        frames.append(
            _Frame(
                entry=e,
                index=None,
                ipp=_floats(ds.get("ImagePositionPatient"), 3),
                iop=_floats(ds.get("ImageOrientationPatient"), 6),
                pixel_spacing=None if ps is None else (float(ps[0]), float(ps[1])),
                slope=slope,
                intercept=intercept,
                order=_float(ds.get("InstanceNumber"), float(n)),
            )
        )
    return frames


def _group_item(ds: Any, frame: int, sequence: str) -> Any | None:
    """First item of a functional group ``sequence`` for ``frame`` (per-frame, else shared)."""
    for groups_name, idx in (
        ("PerFrameFunctionalGroupsSequence", frame),
        ("SharedFunctionalGroupsSequence", 0),
    ):
        groups = ds.get(groups_name)
        if groups is None or len(groups) <= idx:
            continue
        seq = groups[idx].get(sequence)
        if seq is not None and len(seq) > 0:
            return seq[0]
    return None


def _frames_multi(entry: _Entry, notes: list[str]) -> list[_Frame]:
    ds = entry.ds
    n = entry.n_frames
    frames = []
    if "PerFrameFunctionalGroupsSequence" in ds or "SharedFunctionalGroupsSequence" in ds:
        for f in range(n):
            pos = _group_item(ds, f, "PlanePositionSequence")
            ori = _group_item(ds, f, "PlaneOrientationSequence")
            meas = _group_item(ds, f, "PixelMeasuresSequence")
            pvt = _group_item(ds, f, "PixelValueTransformationSequence")
            ipp = _floats(pos.get("ImagePositionPatient") if pos is not None else None, 3)
            iop = _floats(ori.get("ImageOrientationPatient") if ori is not None else None, 6)
            ps = _floats(meas.get("PixelSpacing") if meas is not None else None, 2)
            if ps is None:
                ps = _floats(ds.get("PixelSpacing"), 2)
            slope, intercept = _rescale(pvt if pvt is not None else ds)
            frames.append(
                _Frame(
                    entry=entry,
                    index=f,
                    ipp=ipp if ipp is not None else _floats(ds.get("ImagePositionPatient"), 3),
                    iop=iop if iop is not None else _floats(ds.get("ImageOrientationPatient"), 6),
                    pixel_spacing=None if ps is None else (float(ps[0]), float(ps[1])),
                    slope=slope,
                    intercept=intercept,
                    order=float(f),
                )
            )
        return frames

    # classic multi-frame: one position/orientation, frames stacked along the normal
    ipp = _floats(ds.get("ImagePositionPatient"), 3)
    iop = _floats(ds.get("ImageOrientationPatient"), 6)
    ps = _floats(ds.get("PixelSpacing"), 2)
    slope, intercept = _rescale(ds)
    offsets = _floats(ds.get("GridFrameOffsetVector"), n) if "GridFrameOffsetVector" in ds else None
    if offsets is not None:
        offsets = offsets - offsets[0]
    else:
        dz, how = _fallback_slice_spacing(ds)
        offsets = np.arange(n) * dz
        if ipp is not None and iop is not None:
            notes.append(f"multi-frame file without per-frame positions: frames {how}")
    for f in range(n):
        frame_ipp = None
        if ipp is not None and iop is not None:
            normal = np.cross(iop[:3], iop[3:])
            frame_ipp = ipp + offsets[f] * normal / (np.linalg.norm(normal) or 1.0)
        frames.append(
            _Frame(
                entry=entry,
                index=f,
                ipp=frame_ipp,
                iop=iop,
                pixel_spacing=None if ps is None else (float(ps[0]), float(ps[1])),
                slope=slope,
                intercept=intercept,
                order=float(offsets[f]),
            )
        )
    return frames


def _fallback_slice_spacing(ds: Any) -> tuple[float, str]:
    for key in ("SpacingBetweenSlices", "SliceThickness"):
        value = _float(ds.get(key), 0.0)
        if value > 0:
            return abs(value), f"spaced by {key} = {value:g} mm"
    return 1.0, "spaced by 1 mm (no SpacingBetweenSlices/SliceThickness)"


def _geometry(frames: list[_Frame], where: str, notes: list[str]) -> tuple[list[int], np.ndarray]:
    """Sort the frames and return (order, ITK-order 4x4 LPS matrix)."""
    first = frames[0]
    ps = first.pixel_spacing
    if ps is None or min(ps) <= 0:
        ps = (1.0, 1.0)
        notes.append("no PixelSpacing: in-plane spacing taken as 1 mm")
    matrix = np.eye(4)
    if all(f.ipp is not None and f.iop is not None for f in frames):
        iop = first.iop
        for f in frames[1:]:
            if not np.allclose(f.iop, iop, atol=1e-4):
                raise VolumeIOError(
                    f"{where}: slices have different orientations "
                    f"({iop.tolist()} vs {f.iop.tolist()}); cannot stack them into one volume"
                )
        row = iop[:3] / np.linalg.norm(iop[:3])
        col = iop[3:] / np.linalg.norm(iop[3:])
        normal = np.cross(row, col)
        normal /= np.linalg.norm(normal)
        pos = np.array([float(f.ipp @ normal) for f in frames])
        order = [int(i) for i in np.argsort(pos, kind="stable")]
        pos = pos[order]
        if len(frames) > 1:
            steps = np.diff(pos)
            if np.any(steps < 1e-3):
                n_dup = int(np.sum(steps < 1e-3))
                raise VolumeIOError(
                    f"{where}: {n_dup} slice(s) share a position with another slice "
                    "(multi-echo, time series or several stacks?); 4D data is not supported"
                )
            dz = float((pos[-1] - pos[0]) / (len(pos) - 1))
            if np.max(np.abs(steps - dz)) > max(0.01 * dz, 1e-3):
                notes.append(
                    f"irregular slice spacing ({steps.min():.4g} to {steps.max():.4g} mm); "
                    f"mean {dz:.4g} mm used"
                )
            step = (frames[order[-1]].ipp - frames[order[0]].ipp) / (len(frames) - 1)
            in_plane = step - (step @ normal) * normal
            if np.linalg.norm(in_plane) > 1e-3 * dz:
                notes.append(
                    "slice positions are not along the slice normal (gantry tilt?); "
                    "volume placed along the normal"
                )
        else:
            dz, how = _fallback_slice_spacing(first.entry.ds)
            notes.append(f"single slice: slice axis {how}")
        matrix[:3, 0] = row * ps[1]  # columns i: along the row direction, column spacing
        matrix[:3, 1] = col * ps[0]  # rows j: along the column direction, row spacing
        matrix[:3, 2] = normal * dz
        matrix[:3, 3] = frames[order[0]].ipp
    else:
        order = [int(i) for i in np.argsort([f.order for f in frames], kind="stable")]
        dz, how = _fallback_slice_spacing(first.entry.ds)
        matrix[:3, :3] = np.diag([ps[1], ps[0], dz])
        notes.append(
            "no ImagePositionPatient/ImageOrientationPatient: slices ordered by instance "
            f"number, {how}, origin 0 and identity direction assumed"
        )
    return order, matrix


def _smallest_int_dtype(lo: float, hi: float) -> np.dtype:
    candidates = (np.uint8, np.uint16, np.uint32) if lo >= 0 else (np.int8, np.int16, np.int32)
    for dt in candidates:
        info = np.iinfo(dt)
        if info.min <= lo and hi <= info.max:
            return np.dtype(dt)
    return np.dtype(np.int64)


def _window(ds: Any) -> dict[str, float] | None:
    """The first ``WindowCenter``/``WindowWidth`` pair of ``ds`` (``None`` without one)."""

    def first(value: Any) -> float | None:
        if value is None:
            return None
        if not isinstance(value, str | bytes) and hasattr(value, "__len__"):
            value = value[0] if len(value) else None
        out = _float(value, float("nan"))
        return out if np.isfinite(out) else None

    centre, width = first(ds.get("WindowCenter")), first(ds.get("WindowWidth"))
    if centre is None or width is None or width <= 0:
        return None
    return {"center": centre, "width": width}


def read_dicom(
    path: str | os.PathLike[str] | list[str | os.PathLike[str]],
    *,
    series_uid: str | None = None,
    whole_series: bool = False,
) -> Volume:
    """Read a DICOM series from a folder, a list of files, or a single DICOM file.

    Parameters
    ----------
    path : path-like or list of path-like
        Folder (searched recursively), file, or list of files read together (the
        largest series among them, as for a folder).
    series_uid : str, optional
        ``SeriesInstanceUID`` to read; default: the series with the most slices (for
        ``whole_series``: the series of the given file).
    whole_series : bool
        For a single-frame file: read every file of its folder (not recursive) that
        belongs to the same series, instead of that one slice.

    Returns
    -------
    Volume
        Always 3D; a single-slice image has shape ``(1, rows, cols)``. Metadata has
        ``modality``, ``rescale_applied``, ``dicom_transfer_syntax`` and ``dicom_series``
        (``uid``, ``description``, ``modality``, ``n_files``, ``n_slices`` and ``others``,
        the other series found as ``{"uid", "description", "modality", "n"}``), and
        ``dicom_window`` (``{"center", "width"}`` of the first slice, first value of
        each, or ``None``).

    Raises
    ------
    VolumeIOError
        No DICOM image found, unknown ``series_uid``, inconsistent slices, 4D data,
        colour images, undecodable pixel data.
    """
    files: list[Path] | Path
    if isinstance(path, list | tuple):
        files = [Path(p).expanduser() for p in path]
        if not files:
            raise VolumeIOError("no DICOM files given")
        missing = [str(f) for f in files if not f.is_file()]
        if missing:
            raise VolumeIOError(f"{missing[0]}: no such file")
        path = files[0].parent
        if len(files) == 1:
            files = files[0]
    else:
        path = files = Path(path).expanduser()
        if not path.exists():
            raise VolumeIOError(f"{path}: no such file or folder")
    if whole_series and isinstance(files, Path) and files.is_file():
        files, series_uid = _series_files(files, series_uid)
    series = _scan(files)
    if not series:
        if isinstance(files, list):
            what = f"none of the {len(files)} files is a DICOM image"
        elif path.is_dir():
            what = "folder contains no DICOM image files"
        else:
            what = "is not a readable DICOM image file"
        raise VolumeIOError(f"{path}: {what}")
    ranked = _sorted_series(series)
    if series_uid is not None:
        if series_uid not in series:
            raise VolumeIOError(
                f"{path}: no DICOM series with SeriesInstanceUID {series_uid}; found "
                + ", ".join(uid for uid, _ in ranked)
            )
        uid = series_uid
    else:
        uid = ranked[0][0]
    entries = series[uid]
    where = f"{path} (series {uid})"
    notes: list[str] = []
    skipped_files = 0

    # consistent subset: one multi-frame file, or single-frame files of one size
    if any(e.multi_frame for e in entries):
        entry = max(entries, key=lambda e: e.n_frames)
        if len(entries) > 1:
            notes.append(
                f"series has {len(entries)} files including multi-frame ones; only "
                f"{entry.path.name} ({entry.n_frames} frames) was read"
            )
        frames = _frames_multi(entry, notes)
        skipped_files = len(entries) - 1
    else:
        groups: dict[tuple, list[_Entry]] = {}
        for e in entries:
            iop = _floats(e.ds.get("ImageOrientationPatient"), 6)
            key = (e.rows, e.cols, None if iop is None else tuple(np.round(iop, 3) + 0.0))
            groups.setdefault(key, []).append(e)
        chosen = max(groups.values(), key=len)
        skipped = len(entries) - len(chosen)
        if skipped:
            notes.append(
                f"{skipped} of the series' {len(entries)} images have another size or "
                "orientation (localizer, projections?) and were skipped"
            )
        frames = _frames_single(chosen)
        skipped_files = skipped

    order, matrix = _geometry(frames, where, notes)
    frames = [frames[i] for i in order]

    # pixels
    decoded: dict[Path, tuple[np.ndarray, bool]] = {}
    slices = []
    rescaled_by_gdcm = []
    for f in frames:
        if f.entry.path not in decoded:
            decoded[f.entry.path] = _decode(f.entry, where)
        arr, gdcm = decoded[f.entry.path]
        slices.append(arr[f.index or 0])
        rescaled_by_gdcm.append(gdcm)
    stored = np.stack(slices)
    original_dtype = str(stored.dtype)
    slopes = np.array(
        [1.0 if g else f.slope for f, g in zip(frames, rescaled_by_gdcm, strict=True)]
    )
    inters = np.array(
        [0.0 if g else f.intercept for f, g in zip(frames, rescaled_by_gdcm, strict=True)]
    )
    # GDCM applies the header's rescale itself: report what the headers asked for
    rescale_applied = any(f.slope != 1.0 or f.intercept != 0.0 for f in frames)
    identity_int = (
        stored.dtype.kind in "iub"
        and bool(np.all(slopes == 1.0))
        and bool(np.all(inters == np.round(inters)))
    )
    if identity_int:
        if np.all(inters == 0):
            data = stored
        else:
            lo = float(stored.min()) + float(inters.min())
            hi = float(stored.max()) + float(inters.max())
            work = np.int64 if stored.dtype.itemsize >= 4 else np.int32
            data = (stored.astype(work) + inters.astype(work)[:, None, None]).astype(
                _smallest_int_dtype(lo, hi)
            )
    else:  # float32 throughout: exact for 16-bit stored values, half the memory of float64
        data = stored.astype(np.float32)
        data *= slopes.astype(np.float32)[:, None, None]
        data += inters.astype(np.float32)[:, None, None]

    ds0 = frames[0].entry.ds
    syntax = getattr(getattr(ds0, "file_meta", None), "TransferSyntaxUID", None)
    others = [
        {
            "uid": s_uid,
            "description": str(s_entries[0].ds.get("SeriesDescription", "") or ""),
            "modality": str(s_entries[0].ds.get("Modality", "") or "") or None,
            "n": _series_size(s_entries),
        }
        for s_uid, s_entries in ranked
        if s_uid != uid
    ]
    meta: dict[str, Any] = {
        "modality": str(ds0.get("Modality", "") or "") or None,
        "original_dtype": original_dtype,
        "rescale_applied": rescale_applied,
        "dicom_transfer_syntax": None if syntax is None else str(syntax.name),
        "dicom_window": _window(ds0),
        "dicom_series": {
            "uid": uid,
            "description": str(ds0.get("SeriesDescription", "") or ""),
            "modality": str(ds0.get("Modality", "") or "") or None,
            "n_files": len({f.entry.path for f in frames}),
            "n_slices": len(frames),
            "skipped_files": skipped_files,
            "others": others,
        },
    }
    if notes:
        meta["geometry_note"] = "; ".join(notes)
    return volume_from_itk_affine(data, matrix, path, metadata=meta)
