"""napari (npe2) reader hook for NIfTI, NRRD, MetaImage and DICOM volumes.

Layers are placed in world space (LPS, mm, axes z, y, x) with ``scale``, ``translate``
and ``rotate`` from the file, so an image and its label file overlay exactly.

Error handling: when a file we accepted turns out to be unreadable (corrupt, truncated,
4D, NaN...), the reader shows the problem once with ``show_error`` and returns napari's
"nothing to add" sentinel ``[(None,)]``. napari then adds no layer and raises nothing,
so the user sees one clear message instead of a traceback or a generic "Tried opening
with napari-latentseg, but failed" dialog.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..io import VolumeIOError, is_supported_path, read_volume

if TYPE_CHECKING:
    from ..io import Volume

__all__ = ["get_reader", "layer_data_from_volume", "read_path"]

PathOrPaths = str | Sequence[str]
LayerData = tuple[Any, ...]

#: File names that hold a segmentation rather than an image (with an integer dtype).
_LABEL_NAME = re.compile(r"(_label|_seg|mask)", re.IGNORECASE)


def get_reader(path: PathOrPaths) -> Callable[[PathOrPaths], list[LayerData]] | None:
    """Return a reader function if ``path`` is a volume we can read, else ``None``.

    Parameters
    ----------
    path : str or list of str
        A file or folder; a list is accepted only when it holds exactly one path.

    Returns
    -------
    callable or None
        :func:`read_path`, or ``None`` for unsupported extensions, folders without DICOM
        and lists of several paths (napari then tries other readers).
    """
    if isinstance(path, list | tuple):
        if len(path) != 1:
            return None
        path = path[0]
    try:
        ok = is_supported_path(path)
    except OSError:
        return None
    return read_path if ok else None


def _is_label_file(vol: Volume) -> bool:
    name = Path(str(vol.metadata.get("source_path", ""))).name
    return bool(_LABEL_NAME.search(name)) and vol.data.dtype.kind in "iub"


def layer_data_from_volume(vol: Volume) -> LayerData:
    """The napari LayerData tuple for a volume: ``(data, layer_kwargs, layer_type)``.

    Parameters
    ----------
    vol : Volume
        A volume from :func:`napari_latentseg.io.read_volume`.

    Returns
    -------
    tuple
        Layer type ``"labels"`` for integer ``*_label*``/``*_seg*``/``*mask*`` files,
        ``"image"`` otherwise (with the intensity range as contrast limits).
    """
    kwargs = vol.layer_kwargs()
    if _is_label_file(vol):
        return (vol.data, kwargs, "labels")
    lo, hi = vol.metadata.get("intensity_range") or (None, None)
    if lo is not None and hi is not None and hi > lo:
        kwargs["contrast_limits"] = [float(lo), float(hi)]
    return (vol.data, kwargs, "image")


def _notify_other_series(vol: Volume) -> None:
    series = vol.metadata.get("dicom_series")
    if not isinstance(series, dict):
        return
    from napari.utils.notifications import show_info

    if series.get("skipped_files"):
        show_info(f"{vol.metadata.get('source_path')}: {vol.metadata.get('geometry_note')}")
    if not series.get("others"):
        return

    others = "; ".join(
        f"{o.get('description') or '(no description)'} [{o.get('modality') or '?'}, "
        f"{o.get('n')} slices, UID {o.get('uid')}]"
        for o in series["others"]
    )
    show_info(
        f"{vol.metadata.get('source_path')}: loaded DICOM series "
        f"'{series.get('description') or series.get('uid')}' ({series.get('n_slices')} "
        f"slices). Other series in this folder: {others}. Use "
        "napari_latentseg.io.read_volume(path, series_uid=...) to load one of them."
    )


def read_path(path: PathOrPaths) -> list[LayerData]:
    """Read ``path`` into napari LayerData (the function returned by :func:`get_reader`).

    Parameters
    ----------
    path : str or list of str
        One file or folder (a one-element list is accepted).

    Returns
    -------
    list of tuple
        ``[(data, layer_kwargs, layer_type)]``, or ``[(None,)]`` (napari's "no layer"
        sentinel) after showing an error notification when the file cannot be read.
    """
    if isinstance(path, list | tuple):
        path = path[0]
    try:
        vol = read_volume(path)
    except (VolumeIOError, OSError, MemoryError) as exc:
        from napari.utils.notifications import show_error

        show_error(f"Cannot open {path}: {exc}" if str(path) not in str(exc) else str(exc))
        return [(None,)]
    _notify_other_series(vol)
    return [layer_data_from_volume(vol)]
