"""napari (npe2) single-layer writers: save labels/images in the source scan's geometry.

Geometry: when the layer's ``metadata["latentseg_geometry"]`` (set by our reader) has the
layer's shape, that geometry is written; otherwise it is derived from the layer's
``scale``, ``translate``, ``rotate``, ``shear`` and ``affine`` (world = LPS z, y, x).

Label names: a Labels layer's class names and colours are saved with it (NRRD: 3D Slicer
segment fields in the header; NIfTI/MetaImage: ``<stem>.labels.json`` and ITK-SNAP's
``<stem>.label.txt`` next to the file). Names come from ``layer.features`` (columns
``index`` + ``name``, as our reader sets them), else ``metadata["label_classes"]`` /
``metadata["classes"]``; colours from the layer's colormap (what the user sees), else the
stored ones.

Overwriting: napari's save dialog already asks the user before an existing file is
chosen, so these writers call :func:`napari_latentseg.io.save_volume` with
``overwrite=True`` (the core default stays ``False``). The write is still atomic.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from ..io import VolumeIOError, geometry_from_dict, normalize_classes, save_volume

__all__ = [
    "classes_from_layer_attributes",
    "geometry_from_layer_attributes",
    "write_image",
    "write_labels",
]


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


def _names_from_features(features: Any) -> dict[int, str]:
    """``{value: name}`` from a features table (``index``/``value`` + ``name``/``class``)."""
    if features is None or not hasattr(features, "columns") or len(features) == 0:
        return {}
    cols = {str(c).lower(): c for c in features.columns}
    name_col = next((cols[c] for c in ("name", "class", "label") if c in cols), None)
    if name_col is None:
        return {}
    index_col = next((cols[c] for c in ("index", "value") if c in cols), None)
    values = features[index_col] if index_col is not None else range(len(features))
    out = {}
    for value, name in zip(values, features[name_col], strict=True):
        if name is None or (isinstance(name, float) and np.isnan(name)) or str(name) == "":
            continue
        try:
            out[int(value)] = str(name)
        except (TypeError, ValueError):
            continue
    return out


def classes_from_layer_attributes(attributes: dict[str, Any]) -> list[dict[str, Any]] | None:
    """The class table (value, name, colour) of a Labels layer, or ``None`` without names.

    Parameters
    ----------
    attributes : dict
        napari layer attributes (``features``, ``colormap``, ``metadata``).

    Returns
    -------
    list of dict or None
        ``[{"value", "name", "color"}]`` for every named value (background 0 only when
        it is named).
    """
    meta = attributes.get("metadata") or {}
    stored: dict[int, dict[str, Any]] = {}
    for key in ("classes", "label_classes"):  # the later, richer one wins
        try:
            table = normalize_classes(meta.get(key)) if isinstance(meta, dict) else []
        except ValueError:
            table = []
        stored.update({c["value"]: c for c in table})
    names = {v: c["name"] for v, c in stored.items()}
    names.update(_names_from_features(attributes.get("features")))
    if not names:
        return None
    colormap = attributes.get("colormap")
    out = []
    for value in sorted(names):
        colour = stored.get(value, {}).get("color")
        if colormap is not None and hasattr(colormap, "map"):
            try:
                rgba = np.asarray(colormap.map(np.array([value])), dtype=float).reshape(-1)
            except Exception:  # an unusual colormap: keep the stored colour
                rgba = None
            if rgba is not None and rgba.size >= 4 and rgba[3] > 0:
                colour = [float(c) for c in rgba[:3]]
        out.append({"value": value, "name": names[value], "color": colour})
    return normalize_classes(out)


def _layer_array(data: Any) -> np.ndarray:
    if isinstance(data, list | tuple):  # multiscale: write the full-resolution level
        data = data[0]
    return np.asarray(data)


def _write(path: str, data: Any, attributes: dict[str, Any], kind: str,
           classes: list[dict[str, Any]] | None = None) -> list[str]:
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
        classes=classes,
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
        The written path (the label-name sidecars of NIfTI/MetaImage are written next
        to it but not listed: napari expects the one file it asked for).
    """
    return _write(path, data, attributes, "labels", classes_from_layer_attributes(attributes))


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
