"""Layer keyword arguments that place a volume in the world and name its axes and units.

World frame (see :mod:`napari_latentseg.io._volume`): LPS millimetres with napari's axes
in (z, y, x) order, z increasing towards the patient's Superior, y towards Posterior and
x towards Left. The axes are therefore labelled ``("S", "P", "L")`` (the direction each
coordinate grows), in millimetres. Use these helpers for every layer shown over a scan
(images, labels, maps) so that the viewer's axis names and units agree.
"""

from __future__ import annotations

import inspect
from functools import lru_cache
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    from ..io import Volume

__all__ = ["WORLD_AXIS_LABELS", "axis_kwargs", "axis_kwargs_like", "layer_geometry_kwargs",
           "whole_steps"]

#: Labels of the world axes (z, y, x) of the LPS frame: the direction each one grows.
WORLD_AXIS_LABELS = ("S", "P", "L")


@lru_cache(maxsize=1)
def _supported() -> frozenset[str]:
    """Which of ``units`` / ``axis_labels`` the installed napari's layers accept."""
    try:
        from napari.layers import Image, Labels
    except ImportError:  # pragma: no cover - napari is a dependency of this package
        return frozenset()
    names = set(inspect.signature(Image.__init__).parameters)
    names &= set(inspect.signature(Labels.__init__).parameters)
    return frozenset(names & {"units", "axis_labels"})


def axis_kwargs(ndim: int) -> dict[str, Any]:
    """``units`` (mm) and ``axis_labels`` (S, P, L) for an ``ndim``-D layer in world space.

    Parameters
    ----------
    ndim : int
        Number of layer dimensions (2 or 3; the last ``ndim`` world axes are named).

    Returns
    -------
    dict
        The keywords the installed napari supports (napari >= 0.6 has both); empty for
        an older napari, so callers can always do ``add_image(data, **axis_kwargs(3))``.
    """
    ndim = int(ndim)
    supported = _supported()
    out: dict[str, Any] = {}
    if "units" in supported:
        out["units"] = ("mm",) * ndim
    if "axis_labels" in supported and ndim <= len(WORLD_AXIS_LABELS):
        out["axis_labels"] = WORLD_AXIS_LABELS[-ndim:]
    return out


def layer_geometry_kwargs(vol: Volume) -> dict[str, Any]:
    """:meth:`Volume.layer_kwargs` (scale, translate, rotate, metadata, name) plus
    :func:`axis_kwargs`: everything a layer needs to sit in world space, named. The scale
    and translation are those of :func:`whole_steps`: every slice on the slider."""
    kwargs = vol.layer_kwargs()
    kwargs["scale"], kwargs["translate"] = whole_steps(kwargs["scale"], kwargs["translate"],
                                                       vol.data.shape)
    kwargs.update(axis_kwargs(vol.ndim))
    return kwargs


def whole_steps(scale, translate, shape) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """``scale`` and ``translate`` freed of a header's float noise (12 significant digits),
    then each scale raised by a few ulps where napari would still count ``n - 1`` slices.

    napari counts a slider's positions as ``int(extent / step) + 1``: a spacing stored as
    6.499999999999998 mm (brain1's NRRD) gives 23.999... for 25 slices, and the last slice
    can be neither seen nor painted (napari issue 4861). The change is far below any
    header's precision; the files written keep the scan's own geometry (its metadata).
    """
    sc = [float(f"{float(v):.12g}") for v in scale]
    tr = [float(f"{float(v):.12g}") for v in translate]
    for i, n in enumerate(shape[-len(sc):] if sc else ()):
        for _ in range(16):
            if n < 2 or sc[i] <= 0 or _slider_count(sc[i], tr[i], n) >= n:
                break
            sc[i] = float(np.nextafter(sc[i], np.inf))
    return tuple(sc), tuple(tr)


def _slider_count(step: float, start: float, n: int) -> int:
    """napari's slider positions for ``n`` voxels of size ``step`` from ``start``, either way
    along the world axis (a flipped axis spans ``start - extent`` to ``start``)."""
    extent = step * (n - 1)
    return min(int(((start + extent) - start) / step), int((start - (start - extent)) / step),
               int(extent / step)) + 1


def axis_kwargs_like(layer: Any) -> dict[str, Any]:
    """``units`` and ``axis_labels`` copied from ``layer`` (where napari supports them).

    Layers the plugin derives from a scan take the scan's own, so the viewer never sees
    inconsistent units (it then drops units from rendering): mm and S, P, L for scans our
    reader opened, whatever the user's layer has otherwise.
    """
    out: dict[str, Any] = {}
    for key in _supported():
        value = getattr(layer, key, None)
        if value is not None:
            out[key] = tuple(value)
    return out
