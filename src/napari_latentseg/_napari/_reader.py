"""napari (npe2) reader hook for NIfTI, NRRD, MetaImage and DICOM volumes.

Layers are placed in world space (LPS, mm, axes z, y, x) with ``scale``, ``translate``
and ``rotate`` from the file, so an image and its label file overlay exactly.

Error handling: when a file we accepted turns out to be unreadable (corrupt, truncated,
4D, NaN...), the reader shows the problem once with ``show_error`` and returns napari's
"nothing to add" sentinel ``[(None,)]``. napari then adds no layer and raises nothing,
so the user sees one clear message instead of a traceback or a generic "Tried opening
with napari-latentseg, but failed" dialog.

What a layer opens with (set once, here; nothing re-sets it later, so the user's own
contrast and colours stay):

- images: ``contrast_limits`` from :func:`napari_latentseg.io.default_contrast_limits` (the
  DICOM window or a soft-tissue window for CT, 0.5-99.5 percentiles otherwise);
- label files (see :func:`napari_latentseg.io.looks_like_label_path`, or any integer file
  with stored class names): a Labels layer with ``features`` (``index``, ``name``) and a
  colormap from the stored class colours;
- every layer: ``units`` mm and ``axis_labels`` S, P, L (:mod:`._layer_geometry`).

DICOM: a selected file opens its whole series (the files of its folder with the same
SeriesInstanceUID); several selected files (napari's "open as stack") open as one volume.
napari's plain "Open Files" hands the files over one at a time, so a file whose series was
opened moments ago is skipped with a note instead of opening the series once per file.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from ..io import (
    VolumeIOError,
    default_contrast_limits,
    is_supported_path,
    looks_like_label_path,
    read_volume,
)
from ..io._dicom import DICOM_EXTENSIONS, dicom_series_uid, has_dicom_magic
from ._layer_geometry import layer_geometry_kwargs

if TYPE_CHECKING:
    from ..io import Volume

__all__ = [
    "get_reader",
    "label_layer_kwargs",
    "layer_data_from_volume",
    "read_path",
    "widen_contrast_range",
]

PathOrPaths = str | Sequence[str]
LayerData = tuple[Any, ...]

#: Seconds during which a DICOM file of a just-opened series is skipped (see module doc).
RECENT_SERIES_S = 5.0
#: (folder, series UID) -> [monotonic time last seen, number of files, note shown].
_recent_series: dict[tuple[str, str], list] = {}
#: Largest label value for which unnamed labels get napari's usual colours one by one.
_MAX_COLOURED_VALUE = 1024


def get_reader(path: PathOrPaths) -> Callable[[PathOrPaths], list[LayerData]] | None:
    """Return a reader function if ``path`` is a volume we can read, else ``None``.

    Parameters
    ----------
    path : str or list of str
        A file or folder, or a list: one path, or several DICOM files (one series).

    Returns
    -------
    callable or None
        :func:`read_path`, or ``None`` for unsupported extensions, folders without DICOM
        and lists of several paths that are not all DICOM files (napari then tries other
        readers).
    """
    if isinstance(path, list | tuple):
        if len(path) > 1:
            return read_path if all(_is_dicom_file(p) for p in path) else None
        if not path:
            return None
        path = path[0]
    try:
        ok = is_supported_path(path)
    except OSError:
        return None
    return read_path if ok else None


def _is_dicom_file(path: Any) -> bool:
    try:
        p = Path(path)
        return p.is_file() and (p.suffix.lower() in DICOM_EXTENSIONS or has_dicom_magic(p))
    except (TypeError, OSError):
        return False


def _is_label_file(vol: Volume) -> bool:
    meta = vol.metadata
    if vol.data.dtype.kind not in "iub":
        return False
    if meta.get("format") == "dicom":  # a folder called "..._seg" still holds images
        return str(meta.get("modality") or "").upper() == "SEG"
    return bool(meta.get("label_classes")) or looks_like_label_path(
        str(meta.get("source_path", "")))


def label_layer_kwargs(classes: list[dict] | None, max_value: int | None = None) -> dict:
    """``features`` and ``colormap`` of a Labels layer from a class table.

    Parameters
    ----------
    classes : list of dict or None
        ``[{"value", "name", "color"}]`` (see :mod:`napari_latentseg.io.labels_meta`).
    max_value : int, optional
        Largest label in the data: values up to it without a class keep napari's usual
        colours (up to 1024; above, unnamed values share one grey).

    Returns
    -------
    dict
        Empty without classes; else ``features`` (columns ``index``, ``name``) and a
        ``colormap`` dict ``{value: RGBA}`` (0 transparent) for napari's
        DirectLabelColormap.
    """
    if not classes:
        return {}
    from napari.utils.colormaps import label_colormap

    colours: dict[Any, Any] = {0: np.zeros(4, np.float32), None: np.array([.6, .6, .6, 1.0])}
    top = int(max_value) if max_value is not None else 0
    top = max([top] + [int(c["value"]) for c in classes])
    if top <= _MAX_COLOURED_VALUE:  # unnamed labels keep the colours napari would give them
        values = np.arange(1, top + 1)
        for v, rgba in zip(values, label_colormap().map(values), strict=True):
            colours[int(v)] = np.asarray(rgba, np.float32)
    for c in classes:
        colours[int(c["value"])] = np.array([*c["color"][:3], 1.0], np.float32)
    if not any(c["value"] == 0 for c in classes):
        colours[0] = np.zeros(4, np.float32)
    return {
        "features": {"index": [int(c["value"]) for c in classes],
                     "name": [str(c["name"]) for c in classes]},
        "colormap": colours,
    }


def layer_data_from_volume(vol: Volume) -> LayerData:
    """The napari LayerData tuple for a volume: ``(data, layer_kwargs, layer_type)``.

    Parameters
    ----------
    vol : Volume
        A volume from :func:`napari_latentseg.io.read_volume`.

    Returns
    -------
    tuple
        Layer type ``"labels"`` for integer label files (by name, see
        :func:`napari_latentseg.io.looks_like_label_path`, or with stored class names),
        with ``features``/``colormap`` from the class names; ``"image"`` otherwise, with
        the default contrast (recorded in ``metadata["display_window"]``). Both carry
        ``units``/``axis_labels`` where napari supports them.
    """
    kwargs = layer_geometry_kwargs(vol)
    if _is_label_file(vol):
        hi = (vol.metadata.get("intensity_range") or [0, 0])[1]
        kwargs.update(label_layer_kwargs(vol.metadata.get("label_classes"), int(hi)))
        return (vol.data, kwargs, "labels")
    window = default_contrast_limits(vol)
    kwargs["contrast_limits"] = [float(v) for v in window["contrast_limits"]]
    kwargs["metadata"]["display_window"] = window
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
        One file or folder (a one-element list is accepted), or several DICOM files of
        one series.

    Returns
    -------
    list of tuple
        ``[(data, layer_kwargs, layer_type)]``, or ``[(None,)]`` (napari's "no layer"
        sentinel) after showing an error notification when the file cannot be read, or
        an information when the file's series was opened moments ago.
    """
    if isinstance(path, list | tuple):
        path = list(path) if len(path) > 1 else path[0]
    single_dicom = isinstance(path, str | Path) and _is_dicom_file(path)
    if single_dicom and _opened_recently(Path(path)):
        return [(None,)]
    try:
        vol = read_volume(path, whole_series=True)
    except (VolumeIOError, OSError, MemoryError) as exc:
        from napari.utils.notifications import show_error

        where = str(path if not isinstance(path, list) else Path(path[0]).parent)
        show_error(f"Cannot open {where}: {exc}" if where not in str(exc) else str(exc))
        return [(None,)]
    _remember_series(vol)
    _notify_other_series(vol)
    layer_data = layer_data_from_volume(vol)
    if layer_data[2] == "image":
        _widen_when_added(layer_data[1]["metadata"])
    return [layer_data]


def widen_contrast_range(layer: Any) -> None:
    """Let an image layer's contrast slider reach the whole intensity range.

    napari narrows the slider's range to the limits a layer is created with, so a CT
    opened with a soft-tissue window could not be dragged to a lung or bone window. This
    widens the range to ``metadata["intensity_range"]`` and keeps the limits as they are.
    """
    rng = (getattr(layer, "metadata", None) or {}).get("intensity_range")
    if not rng or not hasattr(layer, "contrast_limits_range"):
        return
    lo, hi = (float(v) for v in layer.contrast_limits)
    lo, hi = min(float(rng[0]), lo), max(float(rng[1]), hi)
    if hi > lo:
        layer.contrast_limits_range = (lo, hi)


def _widen_when_added(metadata: dict) -> None:
    """Widen the contrast range of the layer napari adds next from this read (one shot)."""
    try:
        import napari

        viewer = napari.current_viewer()
    except Exception:  # no Qt viewer (scripts, tests with a ViewerModel)
        return
    if viewer is None:
        return
    inserted = viewer.layers.events.inserted

    def on_inserted(event: Any) -> None:
        inserted.disconnect(on_inserted)  # one shot, whatever layer comes next
        layer = event.value
        if getattr(layer, "metadata", {}).get("display_window") is metadata.get(
                "display_window"):
            widen_contrast_range(layer)

    inserted.connect(on_inserted)


def _series_key(folder: Path, uid: str) -> tuple[str, str]:
    return (str(folder.resolve()), uid)


def _remember_series(vol: Volume) -> None:
    series = vol.metadata.get("dicom_series")
    source = vol.metadata.get("source_path")
    if not isinstance(series, dict) or not source or series.get("n_files", 0) < 2:
        return
    folder = Path(source) if Path(source).is_dir() else Path(source).parent
    _recent_series[_series_key(folder, str(series.get("uid")))] = [
        time.monotonic(), int(series["n_files"]), False]


def _opened_recently(file: Path) -> bool:
    """True (and a note shown) when ``file``'s series was opened in the last seconds."""
    if not _recent_series:
        return False
    uid = dicom_series_uid(file)
    seen = None if uid is None else _recent_series.get(_series_key(file.parent, uid))
    now = time.monotonic()
    if seen is None or now - seen[0] > RECENT_SERIES_S:
        return False
    seen[0] = now  # a long list of files keeps the window open
    if not seen[2]:
        from napari.utils.notifications import show_info

        seen[2] = True
        show_info(f"The other selected files of this series ({seen[1]} files in all) were "
                  "opened with it as one volume, not one by one.")
    return True
