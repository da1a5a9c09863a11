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

if TYPE_CHECKING:
    from ..io import Volume

__all__ = ["WORLD_AXIS_LABELS", "axis_kwargs", "axis_kwargs_like", "layer_geometry_kwargs"]

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
    :func:`axis_kwargs`: everything a layer needs to sit in world space, named."""
    kwargs = vol.layer_kwargs()
    kwargs.update(axis_kwargs(vol.ndim))
    return kwargs


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
