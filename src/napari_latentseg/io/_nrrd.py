"""NRRD reading and writing with pynrrd (``.nrrd`` and detached ``.nhdr``)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np

from ._volume import Volume, VolumeIOError, volume_from_itk_affine
from .labels_meta import classes_from_nrrd_header

__all__ = ["read_nrrd", "write_nrrd"]

#: Sign flips that take a 3D NRRD ``space`` to LPS.
_SPACE_TO_LPS: dict[str, tuple[float, float, float]] = {
    "left-posterior-superior": (1.0, 1.0, 1.0),
    "lps": (1.0, 1.0, 1.0),
    "right-anterior-superior": (-1.0, -1.0, 1.0),
    "ras": (-1.0, -1.0, 1.0),
    "left-anterior-superior": (1.0, -1.0, 1.0),
    "las": (1.0, -1.0, 1.0),
}
#: Spaces without an anatomical meaning: treated as LPS, with a note.
_UNANATOMICAL = {"scanner-xyz", "3d-right-handed", "3d-left-handed"}


def _domain_axes(header: dict[str, Any], shape_c: tuple[int, ...], path: Path) -> list[int]:
    """Indices (file order) of the spatial axes; raise when a real extra axis exists."""
    ndim = len(shape_c)
    sizes_f = shape_c[::-1]
    kinds = header.get("kinds") or ["domain"] * ndim
    directions = header.get("space directions")
    domain = []
    for ax in range(ndim):
        kind = str(kinds[ax]).lower() if ax < len(kinds) else "domain"
        no_direction = directions is not None and not np.all(
            np.isfinite(np.asarray(directions[ax], dtype=float))
        )
        if kind in ("domain", "space", "time") and not no_direction:
            domain.append(ax)
        elif sizes_f[ax] != 1:
            raise VolumeIOError(
                f"{path}: NRRD axis {ax} is of kind '{kind}' with {sizes_f[ax]} values; "
                "vector, colour, list and 4D+ data are not supported, only scalar 2D/3D volumes"
            )
    if len(domain) > 3:
        raise VolumeIOError(
            f"{path}: NRRD image has {len(domain)} spatial axes (sizes {list(sizes_f)}); "
            "4D+ data is not supported"
        )
    return domain


def read_nrrd(path: str | os.PathLike[str]) -> Volume:
    """Read a ``.nrrd`` or ``.nhdr`` (detached data) file.

    ``space directions`` and ``space origin`` give the geometry. ``space`` may be
    ``left-posterior-superior`` (LPS), ``right-anterior-superior`` or
    ``left-anterior-superior`` (converted to LPS); ``scanner-xyz``, ``3D-*-handed`` or a
    missing ``space`` are treated as LPS and noted in ``metadata["geometry_note"]``.
    Without ``space directions``, ``spacings`` (or 1.0) and an identity direction are used.

    Parameters
    ----------
    path : path-like
        The file.

    Returns
    -------
    Volume
        With metadata ``nrrd_space`` (the file's ``space`` field or ``None``) and
        ``label_classes`` when the header has Slicer segment fields (``.seg.nrrd``).

    Raises
    ------
    VolumeIOError
        On a corrupt file, 4D+ or non-scalar data.
    """
    import nrrd

    path = Path(path)
    try:
        data, header = nrrd.read(str(path), index_order="C")
    except Exception as exc:  # NRRDError, zlib.error, EOFError, UnicodeDecodeError...
        raise VolumeIOError(f"{path}: not a readable NRRD file ({exc})") from exc
    data = np.asarray(data)
    if data.dtype.kind not in "biuf":
        raise VolumeIOError(f"{path}: NRRD data type {data.dtype} is not supported")
    shape_c = tuple(int(s) for s in data.shape)
    domain = _domain_axes(header, shape_c, path)
    # drop the singleton non-spatial axes (file order f -> C order ndim-1-f)
    ndim = data.ndim
    drop = [ndim - 1 - ax for ax in range(ndim) if ax not in domain]
    if drop:
        data = data.reshape([s for a, s in enumerate(shape_c) if a not in drop])
    nd = len(domain)
    if nd < 2:
        raise VolumeIOError(f"{path}: NRRD image has {nd} spatial axis; need 2D or 3D")

    meta: dict[str, Any] = {"original_dtype": str(data.dtype), "nrrd_space": None}
    for key, value in header.items():  # a custom "modality" field, as some tools write
        if str(key).lower() == "modality" and str(value).strip():
            meta["modality"] = str(value).strip()
    space = header.get("space")
    directions = header.get("space directions")
    notes = []
    if directions is not None:
        dirs = np.asarray(directions, dtype=float)[domain]  # rows = axis vectors
        space_dim = dirs.shape[1]
        flips = np.ones(space_dim)
        if space is not None:
            meta["nrrd_space"] = str(space)
            key = str(space).lower()
            if key in _SPACE_TO_LPS:
                flips = np.asarray(_SPACE_TO_LPS[key])
            elif key in _UNANATOMICAL:
                notes.append(f"NRRD space '{space}' has no anatomical meaning; treated as LPS")
            else:
                raise VolumeIOError(
                    f"{path}: NRRD space '{space}' is not supported (time spaces and "
                    "unknown names); use left-posterior-superior or right-anterior-superior"
                )
        else:
            notes.append("NRRD file has no 'space' field; its axes are treated as LPS")
        if space_dim not in (2, 3):
            raise VolumeIOError(f"{path}: NRRD space dimension {space_dim} is not supported")
        origin = header.get("space origin")
        origin = np.zeros(space_dim) if origin is None else np.asarray(origin, dtype=float).ravel()
        if not np.all(np.isfinite(origin)):
            origin = np.zeros(space_dim)
            notes.append("NRRD 'space origin' is not set; origin taken as 0")
        lin = (dirs * flips[None, :]).T  # columns = axis vectors in LPS
        origin = origin * flips
        if space_dim == nd:
            matrix = np.eye(nd + 1)
            matrix[:nd, :nd] = lin
            matrix[:nd, nd] = origin
        elif space_dim == 3 and nd == 2:
            normal = np.cross(lin[:, 0], lin[:, 1])
            normal /= np.linalg.norm(normal) or 1.0
            matrix = np.eye(4)
            matrix[:3, :2] = lin
            matrix[:3, 2] = normal
            matrix[:3, 3] = origin
        else:
            raise VolumeIOError(
                f"{path}: NRRD has {nd} spatial axes in a {space_dim}D space; not supported"
            )
    else:
        spacings = header.get("spacings")
        sp = np.ones(ndim) if spacings is None else np.asarray(spacings, dtype=float)
        sp = np.where(np.isfinite(sp) & (sp > 0), sp, 1.0)[domain]
        matrix = np.eye(nd + 1)
        matrix[:nd, :nd] = np.diag(sp)
        notes.append(
            "NRRD file has no 'space directions'; spacing from 'spacings' (or 1.0), "
            "origin 0 and identity direction assumed"
        )
    try:
        classes = classes_from_nrrd_header(header)
    except ValueError as exc:
        raise VolumeIOError(f"{path}: {exc}") from exc
    if classes:
        meta["label_classes"] = classes
    units = header.get("space units")
    if units is not None and any(str(u) not in ("mm", "") for u in units):
        notes.append(f"NRRD space units are {list(units)}, not mm")
    if notes:
        meta["geometry_note"] = "; ".join(notes)
    return volume_from_itk_affine(data, matrix, path, metadata=meta)


def write_nrrd(
    path: str | os.PathLike[str],
    data: np.ndarray,
    spacing: tuple[float, ...],
    origin: tuple[float, ...],
    direction: np.ndarray,
    *,
    description: str = "",
    extra_fields: dict[str, str] | None = None,
) -> None:
    """Write ``data`` (array-axis order) to ``path`` as a gzip NRRD in LPS space.

    Parameters
    ----------
    path : path-like
        Destination ``.nrrd`` (attached data).
    data : numpy.ndarray
        2D or 3D array in array-axis order, already in its final dtype.
    spacing, origin, direction
        Geometry in array-axis order (LPS).
    description : str
        Stored in the ``content`` field.
    extra_fields : dict, optional
        Custom ``key:=value`` header fields (e.g. Slicer segment fields).
    """
    import nrrd

    nd = data.ndim
    sp = np.asarray(spacing, dtype=float)[::-1]
    dirn = np.asarray(direction, dtype=float)[::-1, ::-1]
    header: dict[str, Any] = {
        "space directions": (dirn * sp[None, :]).T,  # row a = world vector of file axis a
        "space origin": np.asarray(origin, dtype=float)[::-1],
        "kinds": ["domain"] * nd,
        "encoding": "gzip",
    }
    if nd == 3:
        header["space"] = "left-posterior-superior"
    else:
        header["space dimension"] = 2
    if data.dtype.itemsize > 1:  # pynrrd writes the array's byte order; use little endian
        data = data.astype(data.dtype.newbyteorder("<"), copy=False)
    if description:
        header["content"] = description.replace("\n", " ")
    for key, value in (extra_fields or {}).items():
        header[key] = str(value).replace("\n", " ")
    nrrd.write(str(path), np.ascontiguousarray(data), header, index_order="C", compression_level=3)
