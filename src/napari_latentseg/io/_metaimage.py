"""MetaImage (``.mha`` / ``.mhd`` + ``.raw``) reading and writing with SimpleITK."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np

from ._volume import Volume, VolumeIOError

__all__ = ["read_metaimage", "write_metaimage"]

_MET_MODALITY = {
    "MET_MOD_CT": "CT",
    "MET_MOD_MR": "MR",
    "MET_MOD_NM": "NM",
    "MET_MOD_US": "US",
    "MET_MOD_OTHER": None,
    "MET_MOD_UNKNOWN": None,
}


def _short_error(exc: Exception) -> str:
    """SimpleITK errors carry C++ file/line noise; keep the meaningful last line."""
    lines = [ln.strip() for ln in str(exc).strip().splitlines() if ln.strip()]
    return lines[-1] if lines else type(exc).__name__


def read_metaimage(path: str | os.PathLike[str]) -> Volume:
    """Read a MetaImage file with SimpleITK.

    Parameters
    ----------
    path : path-like
        ``.mha`` or ``.mhd`` file (the ``.mhd`` data file must be next to it).

    Returns
    -------
    Volume
        Modality from the MetaImage ``Modality`` field when it is set.

    Raises
    ------
    VolumeIOError
        On a corrupt file, multi-component pixels or 4D+ data.
    """
    import SimpleITK as sitk

    path = Path(path)
    reader = sitk.ImageFileReader()
    reader.SetImageIO("MetaImageIO")
    reader.SetFileName(str(path))
    try:
        img = reader.Execute()
    except RuntimeError as exc:
        raise VolumeIOError(f"{path}: not a readable MetaImage file ({_short_error(exc)})") from exc
    if img.GetNumberOfComponentsPerPixel() != 1:
        raise VolumeIOError(
            f"{path}: MetaImage has {img.GetNumberOfComponentsPerPixel()} components per "
            "pixel; only scalar images are supported"
        )
    size = img.GetSize()
    dim = img.GetDimension()
    if dim > 3:
        if any(s != 1 for s in size[3:]):
            raise VolumeIOError(f"{path}: MetaImage has size {size}; 4D+ data is not supported")
        img = img[(slice(None),) * 3 + (0,) * (dim - 3)]
        dim = 3
    data = sitk.GetArrayFromImage(img)
    direction = np.asarray(img.GetDirection(), dtype=float).reshape(dim, dim)
    meta: dict[str, Any] = {"original_dtype": str(data.dtype), "modality": None}
    if reader.HasMetaDataKey("Modality"):
        meta["modality"] = _MET_MODALITY.get(reader.GetMetaData("Modality").strip())
    return Volume(
        data=data,
        spacing=tuple(img.GetSpacing())[::-1],
        origin=tuple(img.GetOrigin())[::-1],
        direction=direction[::-1, ::-1].copy(),
        metadata=meta,
    )


def write_metaimage(
    path: str | os.PathLike[str],
    data: np.ndarray,
    spacing: tuple[float, ...],
    origin: tuple[float, ...],
    direction: np.ndarray,
    *,
    description: str = "",
) -> None:
    """Write a compressed single-file ``.mha`` with SimpleITK.

    Parameters
    ----------
    path : path-like
        Destination ending in ``.mha``.
    data : numpy.ndarray
        2D or 3D array in array-axis order.
    spacing, origin, direction
        Geometry in array-axis order (LPS).
    description : str
        Unused (MetaImage has no free-text field written by SimpleITK); kept for a
        uniform writer signature.
    """
    import SimpleITK as sitk

    del description
    img = sitk.GetImageFromArray(np.ascontiguousarray(data))
    img.SetSpacing([float(s) for s in spacing[::-1]])
    img.SetOrigin([float(o) for o in origin[::-1]])
    img.SetDirection([float(v) for v in np.asarray(direction)[::-1, ::-1].ravel()])
    writer = sitk.ImageFileWriter()
    writer.SetImageIO("MetaImageIO")
    writer.SetFileName(str(path))
    writer.UseCompressionOn()
    writer.Execute(img)
