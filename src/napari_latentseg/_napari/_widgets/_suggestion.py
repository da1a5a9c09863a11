"""*Next slice*: the round's suggestion of what to annotate next, in words and in the viewer
(see :mod:`._segment`)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from napari.utils.notifications import show_error, show_info

from ._layers import slice_target

if TYPE_CHECKING:
    import napari

__all__ = ["go_to_suggestion", "suggestion_text"]

_AXES = {0: "axial (z)", 1: "coronal (y)", 2: "sagittal (x)"}


def suggestion_text(suggestion: dict | None, scan: napari.layers.Layer | None) -> str:
    """The summary's line for a round's ``suggestion`` (the engine's ``suggest_slices``) of
    ``scan``."""
    s = suggestion or {}
    if s.get("index") is None:
        return "No unannotated slice left to suggest."
    if scan is not None and scan.ndim == 2:
        return ("2D image: look where the uncertainty layer is bright and paint there.")
    where = f"Next slice to annotate: {_AXES.get(s['axis'], s['axis'])} {s['index']}"
    if s.get("reason"):
        return f"{where} ({s['reason']})."
    return f"{where} (uncertainty {float(s.get('score') or 0):.2f})."


def go_to_suggestion(viewer: napari.viewer.Viewer, suggestion: dict | None,
                     scan: napari.layers.Layer | None,
                     annotations: napari.layers.Labels | None) -> bool:
    """Move ``viewer`` to the suggested slice of ``scan`` (world coordinates) and select the
    ``annotations`` layer to paint on; returns whether it moved."""
    s = suggestion
    if not s or scan is None or scan not in viewer.layers:
        show_error("No suggestion yet: press Segment first.")
        return False
    if s.get("index") is None:
        show_info("Every slice already has annotations: nothing to suggest.")
        return False
    if scan.ndim == 2:
        show_info(suggestion_text(s, scan))
        return False
    world_axis, value = slice_target(scan, int(s["axis"]), int(s["index"]))
    dims = viewer.dims
    axis = dims.ndim - scan.ndim + world_axis
    if dims.ndisplay == 2 and axis in dims.displayed:
        # The scan's other two axes shown in their own order (a visit to a sagittal slice
        # left the next axial one transposed: rows L, columns P).
        own = range(dims.ndim - scan.ndim, dims.ndim)
        dims.order = tuple([a for a in dims.order if a not in own] + [axis]
                           + [a for a in own if a != axis])
    dims.set_point(axis, value)
    _superior_up(viewer, scan)
    if annotations is not None:
        viewer.layers.selection.active = annotations
    show_info(suggestion_text(s, scan))
    return True


def _superior_up(viewer: napari.viewer.Viewer, scan: napari.layers.Layer) -> None:
    """Superior at the top of a coronal or sagittal slice (napari draws a row axis growing
    downwards, so the vertex was at the bottom); axial slices as before, anterior at the top.
    Only for a scan in the reader's world frame (axes S, P, L)."""
    dims, camera = viewer.dims, viewer.camera
    labels = tuple(getattr(scan, "axis_labels", ()) or ())
    if dims.ndisplay != 2 or not labels or labels[0] != "S" \
            or not hasattr(camera, "orientation2d"):
        return
    superior = dims.ndim - scan.ndim  # the scan's first world axis
    vertical = "up" if dims.order[-2] == superior else "down"
    camera.orientation2d = (vertical, camera.orientation2d[1])
