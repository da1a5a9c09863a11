"""Layer helpers for the dock: geometry, plugin-owned output layers, messages (no Qt, no torch).

Output layers
-------------
Every result goes into a layer the plugin owns, named ``"<scan> <role>"`` (e.g.
``"phantom T1 reconstruction"``) and tagged with ``metadata["latentseg_output"] =
"<scan>/<role>"``. A re-run finds the layer by that tag and updates its data (the user's colour
and opacity choices stay), so results never pile up. The user's own layers (the scan, the
annotations) are never written to by these helpers.

Geometry
--------
Outputs copy ``scale``, ``translate``, ``rotate``, ``shear`` and ``affine`` from the source
layer, so they overlay it in world coordinates, and carry the source geometry in
``metadata["latentseg_geometry"]`` so napari's *Save layer* (our writer) writes them in the
scan's geometry.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

import numpy as np

from .._layer_geometry import axis_kwargs_like
from .._writer import geometry_from_layer_attributes

if TYPE_CHECKING:
    import napari.layers
    import napari.viewer

    from ...pipeline import Scan

__all__ = [
    "OUTPUT_KEY",
    "check_scan_layer",
    "colour_like_annotations",
    "describe_error",
    "find_output",
    "geometry_kwargs",
    "is_output",
    "layer_array",
    "output_name",
    "slice_target",
    "source_geometry",
    "same_layer",
    "scan_from_layer",
    "scan_modality",
    "upsert_output",
]

OUTPUT_KEY = "latentseg_output"

_log = logging.getLogger("napari_latentseg")


def same_layer(a: object, b: object) -> bool:
    """Identity of two layers, seeing through napari's ``PublicOnlyProxy``.

    napari hands plugin widgets a proxied viewer: ``viewer.add_labels(...)`` returns a proxy
    while iterating ``viewer.layers`` yields the layers themselves, so ``is`` alone fails.
    """
    return getattr(a, "__wrapped__", a) is getattr(b, "__wrapped__", b)


def is_output(layer: napari.layers.Layer) -> bool:
    """True for layers the plugin created to hold a result."""
    meta = getattr(layer, "metadata", None) or {}
    return bool(meta.get(OUTPUT_KEY))


def layer_array(layer: napari.layers.Layer) -> np.ndarray:
    """The layer's data as a numpy array (full resolution for multiscale layers).

    Call it on the GUI thread; the array, not the layer, goes to a worker.
    """
    data = layer.data
    if getattr(layer, "multiscale", False):
        data = data[0]
    return np.asarray(data)


def check_scan_layer(layer: napari.layers.Layer | None) -> str | None:
    """Why ``layer`` cannot be used as a scan, as a sentence saying what to do, or None."""
    from napari.layers import Image

    if layer is None:
        return ("No scan chosen: open a scan (section 1 or File > Open) and pick it under "
                "'Scan' at the top of the LatentSeg dock.")
    if not isinstance(layer, Image):
        return (f"'{layer.name}' is a {type(layer).__name__} layer, not an image: pick a CT or "
                "MR image layer under 'Scan'.")
    if getattr(layer, "rgb", False):
        return (f"'{layer.name}' is an RGB picture: pick a grayscale CT or MR image under "
                "'Scan'.")
    if layer.ndim not in (2, 3):
        return (f"'{layer.name}' has {layer.ndim} dimensions: LatentSeg works on a 2D image or "
                "a 3D volume; split time series or channels into separate layers first.")
    return None


def geometry_kwargs(layer: napari.layers.Layer) -> dict[str, Any]:
    """``scale``, ``translate``, ``rotate``, ``shear`` and ``affine`` of ``layer`` (copies)."""
    return {
        "scale": np.array(layer.scale, dtype=float),
        "translate": np.array(layer.translate, dtype=float),
        "rotate": np.array(layer.rotate, dtype=float),
        "shear": np.array(layer.shear, dtype=float),
        "affine": np.array(layer.affine.affine_matrix, dtype=float),
    }


def source_geometry(layer: napari.layers.Layer, shape: tuple[int, ...]) -> dict:
    """Geometry dict (for :func:`~napari_latentseg.io.save_volume`) of data on ``layer``'s grid.

    The scan's stored ``metadata["latentseg_geometry"]`` when its shape matches (exactly the
    file's geometry), otherwise the geometry derived from the layer transform.
    """
    attributes = dict(geometry_kwargs(layer), metadata=dict(layer.metadata or {}))
    return geometry_from_layer_attributes(attributes, tuple(int(s) for s in shape))


def scan_from_layer(layer: napari.layers.Layer) -> Scan:
    """The layer's data, geometry and modality as the pipeline's :class:`Scan` (read on the
    GUI thread; the array is the layer's own, not a copy: jobs never write to it)."""
    from ...pipeline import Scan

    data = layer_array(layer)
    try:
        geometry = source_geometry(layer, data.shape)
    except ValueError:  # a layer transform without a file geometry (sheared, say)
        geometry = {}
    return Scan(data, geometry, (layer.metadata or {}).get("modality"), layer.name)


def scan_modality(layer: napari.layers.Layer) -> tuple[str, bool]:
    """(``"CT"`` or ``"MR"``, whether it was guessed): the file header's modality, else the
    engine's guess from the intensities (HU below -500 mean CT), as every job will make it."""
    from ...engine.normalize import guess_modality

    header = (layer.metadata or {}).get("modality")
    data = layer_array(layer)
    return guess_modality(data if data.ndim == 3 else data[None], header), not header


def output_name(source: napari.layers.Layer, role: str) -> str:
    """Display name of the output ``role`` of ``source``, e.g. ``"scan reconstruction"``."""
    return f"{source.name} {role}"


def find_output(viewer: napari.viewer.Viewer, source_name: str, role: str):
    """The plugin's output layer for ``role`` of the scan named ``source_name``, or None."""
    key = f"{source_name}/{role}"
    for layer in viewer.layers:
        if (layer.metadata or {}).get(OUTPUT_KEY) == key:
            return layer
    return None


def upsert_output(
    viewer: napari.viewer.Viewer,
    source: napari.layers.Layer,
    role: str,
    data: np.ndarray,
    kind: str,
    *,
    contrast_limits: tuple[float, float] | None = None,
    **display: Any,
) -> napari.layers.Layer:
    """Add the output layer ``role`` of ``source``, or update it if this plugin made it before.

    Parameters
    ----------
    viewer : napari.viewer.Viewer
        The viewer.
    source : napari.layers.Layer
        The scan the result belongs to; its geometry is copied.
    role : str
        ``"reconstruction"``, ``"error"``, ``"anomalies"``, ``"clusters"``, ...
    data : np.ndarray
        The result, on the source's grid.
    kind : {"image", "labels"}
        Layer type.
    contrast_limits : tuple of float, optional
        Image contrast limits (set on creation and on update).
    **display
        Display keywords used when the layer is created (colormap, opacity, blending...).

    Returns
    -------
    napari.layers.Layer
        The new or updated layer.
    """
    geom = geometry_kwargs(source)
    metadata = {
        OUTPUT_KEY: f"{source.name}/{role}",
        "source_layer": source.name,
        "modality": (source.metadata or {}).get("modality"),
    }
    try:
        metadata["latentseg_geometry"] = source_geometry(source, data.shape)
    except ValueError as exc:  # a degenerate transform: the writer will say so on save
        _log.debug("no geometry for %s: %s", role, exc)
    layer = find_output(viewer, source.name, role)
    expected = "Labels" if kind == "labels" else "Image"
    if layer is not None and type(layer).__name__ == expected:
        layer.data = data
        for key, value in geom.items():
            setattr(layer, key, value)
        layer.metadata = dict(layer.metadata or {}, **metadata)
        if contrast_limits is not None:
            layer.contrast_limits = contrast_limits
        return layer
    kwargs = dict(display, name=output_name(source, role), metadata=metadata, **geom,
                  **axis_kwargs_like(source))
    if kind == "labels":
        return viewer.add_labels(data, **kwargs)
    if contrast_limits is not None:
        kwargs["contrast_limits"] = contrast_limits
    return viewer.add_image(data, **kwargs)


def slice_target(layer: napari.layers.Layer, axis: int, index: int) -> tuple[int, float]:
    """World axis and world coordinate that show data slice ``index`` along data ``axis``.

    Uses the layer's data-to-world transform, so flipped, shifted and anisotropic scans land
    on the right slice. For an oblique scan the world axis closest to the data axis is used.

    Returns
    -------
    tuple
        ``(world_axis, world_value)``; ``world_axis`` counts the layer's dimensions (add
        ``viewer.dims.ndim - layer.ndim`` for viewers with extra leading dimensions).
    """
    shape = layer_array(layer).shape
    point = np.array([(s - 1) / 2.0 for s in shape], dtype=float)
    point[axis] = float(index)
    step = point.copy()
    step[axis] += 1.0
    world = np.asarray(layer.data_to_world(point), dtype=float)
    direction = np.asarray(layer.data_to_world(step), dtype=float) - world
    world_axis = int(np.argmax(np.abs(direction)))
    return world_axis, float(world[world_axis])


def describe_error(exc: BaseException, action: str) -> str:
    """One sentence for the user: what went wrong during ``action`` and what to do."""
    from ...runtime.errors import DOCK_HINTS, explain

    report = explain(exc, DOCK_HINTS)
    if report.expected:
        return f"{action}: {report.message}"
    _log.error("%s failed", action, exc_info=exc)
    return (f"{action} failed ({report.message}). Check the chosen layers and model; the full "
            "traceback is in the terminal.")


def colour_like_annotations(pred, classes: list[int], ann, table_classes: list[dict],
                            named: list[dict] | None = None) -> None:
    """Give the segmentation layer ``pred`` the names and colours of the class table
    ``table_classes`` when there is an annotation layer ``ann`` (else of ``named``, else
    ``pred``'s own colours); class 1 (background) is shown transparent. The full table is kept
    in the layer's metadata (``label_classes``) for saving, since class 1 shows no colour."""
    from napari.utils.colormaps import DirectLabelColormap

    source = ann.colormap if ann is not None else pred.colormap
    table = {c["value"]: c for c in (table_classes if ann is not None else named or [])}
    clear = np.zeros(4, dtype=np.float32)
    colors = {None: clear, 0: clear}
    for c in sorted(set(map(int, classes)) | set(table)):
        rgba = ([*table[c]["color"], 1.0] if c in table else source.map(c))
        colors[c] = clear if c == 1 else np.asarray(rgba, np.float32)
    pred.colormap = DirectLabelColormap(color_dict=colors)
    if table:
        pred.features = {"index": list(table), "name": [table[v]["name"] for v in table]}
        pred.metadata = dict(pred.metadata, label_classes=list(table.values()))
