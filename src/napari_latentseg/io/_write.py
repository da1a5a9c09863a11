"""Writing volumes (NIfTI, NRRD, MetaImage) atomically, in a given geometry."""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal

import numpy as np

from ..runtime.files import atomic_path
from ._volume import VolumeIOError, geometry_from_dict
from .labels_meta import classes_to_nrrd_fields, normalize_classes, write_label_sidecars

__all__ = ["WRITE_EXTENSIONS", "save_labels", "save_volume"]

#: File name endings (lower case) written by :func:`save_volume`, and their format.
WRITE_EXTENSIONS: dict[str, str] = {
    ".nii.gz": "nifti",
    ".nii": "nifti",
    ".nrrd": "nrrd",
    ".mha": "metaimage",
}


def _split_ext(path: Path) -> tuple[str, str]:
    """(stem, extension) with the extension as written in ``path``; raise if unsupported."""
    name = path.name
    low = name.lower()
    for ext in WRITE_EXTENSIONS:
        if low.endswith(ext) and len(name) > len(ext):
            return name[: -len(ext)], name[-len(ext) :]
    raise VolumeIOError(
        f"{path}: cannot write this file type; use one of " + ", ".join(WRITE_EXTENSIONS)
    )


def _label_array(data: np.ndarray, path: Path) -> np.ndarray:
    """Cast label data to the smallest unsigned integer type holding its maximum."""
    if data.dtype == np.bool_:
        return data.astype(np.uint8)
    if data.dtype.kind not in "iuf":
        raise VolumeIOError(f"{path}: labels must be integers, got dtype {data.dtype}")
    if data.size == 0:
        return data.astype(np.uint8)
    if data.dtype.kind == "f":
        finite = np.isfinite(data)
        if not finite.all():
            raise VolumeIOError(
                f"{path}: labels contain {int(data.size - finite.sum())} NaN/infinite value(s)"
            )
        if not np.array_equal(data, np.round(data)):
            raise VolumeIOError(
                f"{path}: labels must be integer-valued, got non-integer floats "
                f"(e.g. {float(data[data != np.round(data)].flat[0])})"
            )
    lo, hi = data.min(), data.max()
    if lo < 0:
        raise VolumeIOError(f"{path}: labels must not be negative (minimum is {lo})")
    for dt in (np.uint8, np.uint16, np.uint32):
        if hi <= np.iinfo(dt).max:
            return data.astype(dt, copy=False)
    raise VolumeIOError(f"{path}: label {hi} is too large (more than 32 bits)")


def _image_array(data: np.ndarray, path: Path) -> np.ndarray:
    if data.dtype == np.bool_:
        return data.astype(np.uint8)
    if data.dtype.kind == "f":
        return data.astype(np.float32, copy=False)
    if data.dtype.kind in "iu":
        return data
    raise VolumeIOError(f"{path}: cannot write image data of dtype {data.dtype}")


def _resolve_geometry(
    path: Path,
    nd: int,
    shape: tuple[int, ...],
    geometry: dict[str, Any] | None,
    spacing: Sequence[float] | None,
    origin: Sequence[float] | None,
    direction: Any | None,
    reference: str | os.PathLike[str] | None,
) -> tuple[tuple[float, ...], tuple[float, ...], np.ndarray]:
    explicit = any(v is not None for v in (spacing, origin, direction))
    if geometry is not None and explicit:
        raise VolumeIOError(
            f"{path}: pass either a geometry dict or spacing/origin/direction, not both"
        )
    if geometry is None and not explicit and reference is not None:
        from ._read import read_volume

        geometry = read_volume(reference).geometry()
    if geometry is not None:
        try:
            sp, org, dirn = geometry_from_dict(geometry)
        except ValueError as exc:
            raise VolumeIOError(f"{path}: invalid geometry: {exc}") from exc
        gshape = geometry.get("shape")
        if gshape is not None and tuple(int(s) for s in gshape) != shape:
            raise VolumeIOError(
                f"{path}: data shape {shape} does not match the geometry's shape "
                f"{tuple(int(s) for s in gshape)}"
            )
    else:
        sp = tuple(float(s) for s in (np.ones(nd) if spacing is None else np.ravel(spacing)))
        org = tuple(float(o) for o in (np.zeros(nd) if origin is None else np.ravel(origin)))
        dirn = np.eye(nd) if direction is None else np.asarray(direction, dtype=float)
        for label, n_given in (
            ("spacing", len(sp)),
            ("origin", len(org)),
            ("direction", len(dirn)),
        ):
            if n_given != nd:
                raise VolumeIOError(
                    f"{path}: {nd}D data (shape {shape}) but the geometry is {n_given}D "
                    f"({label} has {n_given} values)"
                )
        try:
            sp, org, dirn = geometry_from_dict({"spacing": sp, "origin": org, "direction": dirn})
        except ValueError as exc:
            raise VolumeIOError(f"{path}: invalid geometry: {exc}") from exc
    if len(sp) != nd:
        raise VolumeIOError(f"{path}: {nd}D data (shape {shape}) but the geometry is {len(sp)}D")
    return sp, org, dirn


def save_volume(
    path: str | os.PathLike[str],
    data: Any,
    geometry: dict[str, Any] | None = None,
    *,
    spacing: Sequence[float] | None = None,
    origin: Sequence[float] | None = None,
    direction: Any | None = None,
    kind: Literal["labels", "image"] = "image",
    overwrite: bool = False,
    reference: str | os.PathLike[str] | None = None,
    classes: Any = None,
) -> Path:
    """Write a 2D/3D array to ``path`` in a physical geometry, atomically.

    Parameters
    ----------
    path : path-like
        Destination; the format follows the extension: ``.nii.gz``, ``.nii``, ``.nrrd`` or
        ``.mha``.
    data : array-like
        2D or 3D array in array-axis order (``data[k, j, i]``).
    geometry : dict, optional
        As returned by :meth:`Volume.geometry` / stored in
        ``metadata["latentseg_geometry"]``; its ``shape`` must match ``data``.
    spacing, origin, direction : optional
        Explicit geometry in array-axis order (defaults: 1, 0, identity). Not allowed
        together with ``geometry``.
    kind : {"image", "labels"}
        ``"labels"``: integer-valued, non-negative data stored as the smallest of
        uint8/uint16/uint32 that holds the largest label. ``"image"``: floats are stored
        as float32, integers keep their dtype.
    overwrite : bool
        Replace an existing file. Default False: an existing file raises
        :class:`FileExistsError` and is left untouched.
    reference : path-like, optional
        Image whose geometry is used when neither ``geometry`` nor explicit values are
        given; its file name is also recorded in the header (NIfTI ``descrip``, NRRD
        ``content``).
    classes : class table, optional
        Only with ``kind="labels"``: names and colours of the label values, in any form
        :func:`napari_latentseg.io.labels_meta.normalize_classes` accepts (e.g.
        ``{1: "liver", 2: ("tumour", [1, 0, 0])}``). NRRD stores them in the header as
        3D Slicer segment fields; NIfTI/MetaImage in ``<stem>.labels.json`` and
        ``<stem>.label.txt`` (ITK-SNAP) next to the file. Read back by
        :func:`read_volume` as ``metadata["label_classes"]``.

    Returns
    -------
    pathlib.Path
        The written file.

    Raises
    ------
    VolumeIOError
        Unsupported extension, bad data for the kind, geometry/shape mismatch, or a
        failure of the writing library (the temporary file is removed).
    FileExistsError
        If ``path`` exists and ``overwrite`` is False.

    Notes
    -----
    The file is first written to a hidden temporary file in the same folder
    (``.<name>.tmp-XXXXXXXX<ext>``, keeping the extension so the library picks the
    format) and then moved into place with :func:`os.replace`, so readers never see a
    half-written file and a failed write leaves any existing file untouched.
    """
    path = Path(path).expanduser()
    stem, ext = _split_ext(path)
    fmt = WRITE_EXTENSIONS[ext.lower()]
    if kind not in ("labels", "image"):
        raise VolumeIOError(f"{path}: kind must be 'labels' or 'image', got {kind!r}")
    table: list[dict[str, Any]] = []
    if classes is not None:
        if kind != "labels":
            raise VolumeIOError(f"{path}: class names can only be saved with kind='labels'")
        try:
            table = normalize_classes(classes)
        except ValueError as exc:
            raise VolumeIOError(f"{path}: invalid class table: {exc}") from exc
    if path.exists() and not overwrite:
        raise FileExistsError(f"{path}: file already exists; pass overwrite=True to replace it")
    if path.is_dir():
        raise VolumeIOError(f"{path}: is a folder")
    folder = path.parent
    if not folder.is_dir():
        raise VolumeIOError(f"{path}: folder {folder} does not exist")

    arr = np.asarray(data)
    if arr.ndim not in (2, 3):
        raise VolumeIOError(f"{path}: only 2D and 3D data can be written, got shape {arr.shape}")
    arr = _label_array(arr, path) if kind == "labels" else _image_array(arr, path)
    if kind == "image" and arr.dtype.kind == "f" and not np.all(np.isfinite(arr)):
        raise VolumeIOError(f"{path}: image contains NaN/infinite values")
    sp, org, dirn = _resolve_geometry(
        path, arr.ndim, tuple(arr.shape), geometry, spacing, origin, direction, reference
    )
    description = f"latentseg {kind}"
    if reference is not None:
        description += f"; ref={Path(reference).name}"

    extra: dict[str, Any] = {}
    if fmt == "nifti":
        from ._nifti import write_nifti as writer
    elif fmt == "nrrd":
        from ._nrrd import write_nrrd as writer

        if table:
            extra["extra_fields"] = classes_to_nrrd_fields(table, arr)
    else:
        from ._metaimage import write_metaimage as writer

    try:
        with atomic_path(path, overwrite=overwrite, suffix=ext) as tmp:
            try:
                writer(tmp, arr, sp, org, dirn, description=description, **extra)
            except Exception as exc:
                raise VolumeIOError(
                    f"{path}: writing failed ({type(exc).__name__}: {exc})") from exc
    except FileExistsError:
        raise FileExistsError(
            f"{path}: file already exists; pass overwrite=True to replace it") from None
    except OSError as exc:
        raise VolumeIOError(f"{path}: cannot write ({exc})") from exc
    if table and fmt != "nrrd":  # after the volume: sidecars never describe a missing file
        write_label_sidecars(path, table)
    return path


def save_labels(
    path: str | os.PathLike[str],
    data: Any,
    geometry: dict[str, Any] | None = None,
    *,
    classes: Any = None,
    **kwargs: Any,
) -> Path:
    """Write a label volume with its class names and colours (see :func:`save_volume`).

    Parameters
    ----------
    path : path-like
        ``.nrrd`` (``.seg.nrrd`` opens as a segmentation in 3D Slicer), ``.nii.gz``,
        ``.nii`` or ``.mha``.
    data : array-like
        Non-negative integer labels in array-axis order.
    geometry : dict, optional
        As for :func:`save_volume`.
    classes : class table, optional
        ``{value: name}``, ``{value: (name, colour)}`` or ``[{"value", "name", "color"}]``.
    **kwargs
        ``spacing``, ``origin``, ``direction``, ``overwrite``, ``reference``.

    Returns
    -------
    pathlib.Path
        The written label volume.
    """
    return save_volume(path, data, geometry, kind="labels", classes=classes, **kwargs)
