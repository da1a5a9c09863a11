"""NIfTI-1/2 reading and writing with nibabel (RAS on disk, LPS in memory)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np

from ._volume import Volume, VolumeIOError, itk_affine, volume_from_itk_affine

__all__ = ["read_nifti", "write_nifti"]

#: RAS <-> LPS: negate x and y (the same matrix both ways).
_RAS_TO_LPS = np.diag([-1.0, -1.0, 1.0, 1.0])


def _squeeze_extra_dims(arr_shape: tuple[int, ...], path: Path) -> int:
    """Number of spatial dims to keep; raise for real 4D+ data."""
    extra = arr_shape[3:]
    if any(int(n) != 1 for n in extra):
        raise VolumeIOError(
            f"{path}: NIfTI image has shape {tuple(arr_shape)}; 4D+ data (time series, "
            "vector or multi-channel images) is not supported, only 2D and 3D scalar volumes"
        )
    return min(len(arr_shape), 3)


def read_nifti(path: str | os.PathLike[str]) -> Volume:
    """Read a ``.nii`` / ``.nii.gz`` file.

    The sform is used when its code is > 0, else the qform when its code is > 0, else
    nibabel's default (pixdim-only) affine. Scaling (``scl_slope``/``scl_inter``) is
    applied as nibabel does.

    Parameters
    ----------
    path : path-like
        The file.

    Returns
    -------
    Volume
        With metadata ``nifti`` = ``{"sform_code", "qform_code", "affine_used"}``.

    Raises
    ------
    VolumeIOError
        On a corrupt/truncated file, 4D+ or non-scalar data.
    """
    import nibabel as nib

    path = Path(path)
    try:
        img = nib.load(str(path))
    except Exception as exc:  # nibabel raises many types for bad files
        raise VolumeIOError(f"{path}: not a readable NIfTI file ({exc})") from exc
    if not isinstance(img, nib.Nifti1Image | nib.Nifti2Image):
        raise VolumeIOError(f"{path}: not a NIfTI image (nibabel sees {type(img).__name__})")
    hdr = img.header
    disk_dtype = hdr.get_data_dtype()
    if disk_dtype.fields is not None:
        raise VolumeIOError(
            f"{path}: NIfTI data type {disk_dtype} (RGB/structured) is not supported; "
            "only scalar volumes can be read"
        )
    keep = _squeeze_extra_dims(img.shape, path)
    try:
        arr = np.asanyarray(img.dataobj)
    except Exception as exc:  # truncated gzip -> EOFError, zlib.error, OSError ...
        raise VolumeIOError(f"{path}: NIfTI file is corrupt or truncated ({exc})") from exc
    arr = np.asarray(arr).reshape(arr.shape[:keep])
    if np.iscomplexobj(arr):
        raise VolumeIOError(f"{path}: complex NIfTI data is not supported")

    sform_code = int(hdr["sform_code"])
    qform_code = int(hdr["qform_code"])
    if sform_code > 0:
        affine_ras, used = img.get_sform(), "sform"
    elif qform_code > 0:
        affine_ras, used = img.get_qform(), "qform"
    else:
        affine_ras, used = hdr.get_base_affine(), "base (no sform/qform in file)"
    matrix = _RAS_TO_LPS @ np.asarray(affine_ras, dtype=float)

    if arr.ndim == 1:
        raise VolumeIOError(f"{path}: NIfTI image is 1D (shape {arr.shape}); need 2D or 3D")
    data = arr.transpose(tuple(range(arr.ndim))[::-1])  # (i, j, k) -> (k, j, i), no copy
    data = np.ascontiguousarray(data)
    meta: dict[str, Any] = {
        "original_dtype": str(disk_dtype),
        "nifti": {"sform_code": sform_code, "qform_code": qform_code, "affine_used": used},
    }
    if used.startswith("base"):
        meta["geometry_note"] = (
            "the NIfTI file has no sform/qform orientation; positions use its voxel sizes "
            "with nibabel's default (centred, RAS-aligned) affine"
        )
    return volume_from_itk_affine(data, matrix, path, metadata=meta)


def write_nifti(
    path: str | os.PathLike[str],
    data: np.ndarray,
    spacing: tuple[float, ...],
    origin: tuple[float, ...],
    direction: np.ndarray,
    *,
    description: str = "",
) -> None:
    """Write ``data`` (array-axis order) to ``path`` as NIfTI-1 with sform = qform.

    Parameters
    ----------
    path : path-like
        Destination; ``.nii`` or ``.nii.gz`` (gzip by name).
    data : numpy.ndarray
        2D or 3D array in array-axis order, already in its final dtype.
    spacing, origin, direction
        Geometry in array-axis order (LPS).
    description : str
        Stored in the header's ``descrip`` field (cut to 79 characters).
    """
    import nibabel as nib

    nd = data.ndim
    lps = itk_affine(spacing, origin, direction)
    if nd == 2:  # embed the 2D geometry in the z = 0 plane, as ITK does
        full = np.eye(4)
        full[:2, :2] = lps[:2, :2]
        full[:2, 3] = lps[:2, 2]
        lps = full
    affine_ras = _RAS_TO_LPS @ lps
    img = nib.Nifti1Image(np.asarray(data).transpose(tuple(range(nd))[::-1]), affine_ras)
    hdr = img.header
    hdr.set_data_dtype(data.dtype)
    hdr.set_xyzt_units("mm")
    img.set_sform(affine_ras, code=1)  # scanner anatomical
    lin = affine_ras[:3, :3]
    unit = lin / np.linalg.norm(lin, axis=0)[None, :]
    if np.allclose(unit.T @ unit, np.eye(3), atol=1e-5):
        img.set_qform(affine_ras, code=1)
    else:  # a sheared grid cannot be stored in the qform; the sform keeps it exactly
        img.set_qform(affine_ras, code=0)
    if description:
        hdr["descrip"] = description.encode("ascii", "replace")[:79]
    nib.save(img, str(path))
