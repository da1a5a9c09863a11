"""napari (npe2) single-layer writers: save labels/images in the source scan's geometry.

Geometry: when the layer's ``metadata["latentseg_geometry"]`` (set by our reader) has the
layer's shape, that geometry is written; otherwise it is derived from the layer's
``scale``, ``translate``, ``rotate``, ``shear`` and ``affine`` (world = LPS z, y, x).

Overwriting: napari's save dialog already asks the user before an existing file is
chosen, so these writers call :func:`napari_latentseg.io.save_volume` with
``overwrite=True`` (the core default stays ``False``). The write is still atomic.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from ..io import VolumeIOError, geometry_from_dict, save_volume

__all__ = ["geometry_from_layer_attributes", "write_image", "write_labels"]


def _full_affine(attributes: dict[str, Any], ndim: int) -> np.ndarray:
    """Data-to-world ``(ndim+1)^2`` matrix from napari layer attributes."""
    from napari.utils.transforms import Affine

    def get(key: str) -> Any:
        value = attributes.get(key)
        return None if value is None else np.asarray(value, dtype=float)

    scale = get("scale")
    translate = get("translate")
    rotate = get("rotate")
    shear = get("shear")
    kwargs: dict[str, Any] = {"ndim": ndim}
    if scale is not None:
        kwargs["scale"] = scale
    if translate is not None:
        kwargs["translate"] = translate
    if rotate is not None:
        kwargs["rotate"] = rotate
    if shear is not None:
        kwargs["shear"] = shear
    layer_tf = Affine(**kwargs).affine_matrix
    extra = attributes.get("affine")
    if extra is not None:
        extra = np.asarray(getattr(extra, "affine_matrix", extra), dtype=float)
        if extra.shape == (ndim + 1, ndim + 1):
            layer_tf = extra @ layer_tf
    return layer_tf


def geometry_from_layer_attributes(attributes: dict[str, Any], shape: tuple[int, ...]) -> dict:
    """Geometry dict (as :meth:`Volume.geometry`) for a layer of ``shape``.

    Parameters
    ----------
    attributes : dict
        napari layer attributes (``layer.as_layer_data_tuple()[1]``).
    shape : tuple of int
        Shape of the layer data.

    Returns
    -------
    dict
        The stored ``metadata["latentseg_geometry"]`` when its shape matches, else the
        geometry derived from the layer transform (spacing = column norms, direction =
        normalised columns, origin = translation).
    """
    meta = attributes.get("metadata") or {}
    stored = meta.get("latentseg_geometry") if isinstance(meta, dict) else None
    if isinstance(stored, dict) and [int(s) for s in stored.get("shape", [])] == list(shape):
        try:
            geometry_from_dict(stored)
        except ValueError:
            pass
        else:
            return stored
    nd = len(shape)
    m = _full_affine(attributes, nd)
    lin = m[:nd, :nd]
    spacing = np.linalg.norm(lin, axis=0)
    if np.any(spacing <= 0):
        raise VolumeIOError(f"layer transform is degenerate (scale 0): {lin.tolist()}")
    return {
        "spacing": [float(s) for s in spacing],
        "origin": [float(o) for o in m[:nd, nd]],
        "direction": (lin / spacing[None, :]).tolist(),
        "shape": [int(s) for s in shape],
    }


def _layer_array(data: Any) -> np.ndarray:
    if isinstance(data, list | tuple):  # multiscale: write the full-resolution level
        data = data[0]
    return np.asarray(data)


def _write(path: str, data: Any, attributes: dict[str, Any], kind: str) -> list[str]:
    arr = _layer_array(data)
    if arr.ndim not in (2, 3):
        raise VolumeIOError(
            f"{path}: only 2D and 3D layers can be saved as medical volumes, got shape {arr.shape}"
        )
    geometry = geometry_from_layer_attributes(attributes, tuple(arr.shape))
    meta = attributes.get("metadata") or {}
    reference = meta.get("source_path") if isinstance(meta, dict) else None
    out = save_volume(
        path,
        arr,
        geometry,
        kind=kind,  # type: ignore[arg-type]
        overwrite=True,  # napari's save dialog has already confirmed replacing a file
        reference=reference if isinstance(reference, str) else None,
    )
    return [str(Path(out))]


def write_labels(path: str, data: Any, attributes: dict[str, Any]) -> list[str]:
    """npe2 single-layer writer for Labels layers (``.nii.gz``, ``.nii``, ``.nrrd``).

    Parameters
    ----------
    path : str
        Destination file.
    data : array-like
        The labels array.
    attributes : dict
        Layer attributes (``metadata``, ``scale``, ``translate``, ``rotate`` ...).

    Returns
    -------
    list of str
        The written path.
    """
    return _write(path, data, attributes, "labels")


def write_image(path: str, data: Any, attributes: dict[str, Any]) -> list[str]:
    """npe2 single-layer writer for Image layers (``.nii.gz``, ``.nii``, ``.nrrd``).

    Parameters
    ----------
    path : str
        Destination file.
    data : array-like
        The image array (floats are written as float32).
    attributes : dict
        Layer attributes (``metadata``, ``scale``, ``translate``, ``rotate`` ...).

    Returns
    -------
    list of str
        The written path.
    """
    return _write(path, data, attributes, "image")
