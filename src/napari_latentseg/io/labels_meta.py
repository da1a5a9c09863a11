"""Named structures: label class tables, label-file names and where the names are stored.

A *class table* is a list of ``{"value": int, "name": str, "color": [r, g, b]}`` dicts
(colour components are floats in 0-1), sorted by value. It travels with a label volume:

NRRD (``.nrrd``, including Slicer's ``.seg.nrrd``)
    In the header, as 3D Slicer's segmentation fields (one labelmap layer):
    ``Segment<N>_ID``, ``_Name``, ``_Color`` (``"r g b"`` in 0-1), ``_LabelValue``,
    ``_Layer`` (0), ``_Extent`` (voxel bounding box, file index order) and the
    ``Segmentation_*`` fields, so Slicer opens the file as a named segmentation.
NIfTI and MetaImage
    Their headers have no room for names, so two sidecar files sit next to the volume:
    ``<stem>.labels.json`` (``{"labels": [{"value", "name", "color"}]}``; lossless, read
    first) and ``<stem>.label.txt`` in ITK-SNAP's label description format
    (``IDX -R- -G- -B- -A-- VIS MSH "LABEL"``, 0-255 colours) so ITK-SNAP users can
    import the names ("Label descriptions > Import"). ``<stem>`` is the file name without
    ``.nii.gz`` / ``.nii`` / ``.mha``.

Sidecars are written atomically (temporary file in the same folder, fsync, rename).
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import numpy as np

from ..runtime.files import atomic_write
from ._volume import VolumeIOError, strip_known_suffix

__all__ = [
    "atomic_write_text",
    "classes_from_nrrd_header",
    "classes_to_nrrd_fields",
    "default_label_color",
    "format_itksnap_labels",
    "looks_like_label_path",
    "normalize_classes",
    "parse_itksnap_labels",
    "read_label_sidecars",
    "sidecar_paths",
    "write_label_sidecars",
]

#: File names that hold a segmentation rather than an image: Slicer's ``.seg.nrrd``,
#: ``-label.nrrd`` / ``_label.nrrd``, ``*label*.nii[.gz]`` (``labels.nii.gz`` included),
#: ``*_seg*``, ``*segmentation*`` and ``*mask*``.
_LABEL_NAME = re.compile(
    r"(\.seg\.nrrd$|[-_]label|label[^/\\]*\.nii(\.gz)?$|_seg|segmentation|mask)", re.IGNORECASE
)
_JSON_SUFFIX = ".labels.json"
_ITKSNAP_SUFFIX = ".label.txt"
#: The colour cycle for classes given without a colour (tab10, as matplotlib's default).
_TAB10 = (
    (0.122, 0.467, 0.706), (1.0, 0.498, 0.055), (0.173, 0.627, 0.173), (0.839, 0.153, 0.157),
    (0.58, 0.404, 0.741), (0.549, 0.337, 0.294), (0.89, 0.467, 0.761), (0.498, 0.498, 0.498),
    (0.737, 0.741, 0.133), (0.09, 0.745, 0.812),
)


def looks_like_label_path(path: str | os.PathLike[str]) -> bool:
    """True when the file name says it holds labels (a segmentation), not an image.

    Parameters
    ----------
    path : path-like
        A file name (only the name is looked at).

    Returns
    -------
    bool
        For ``*.seg.nrrd``, ``*-label.nrrd``, ``*_label.*``, ``*label*.nii(.gz)``,
        ``*_seg*``, ``*segmentation*`` and ``*mask*``.
    """
    return bool(_LABEL_NAME.search(Path(path).name))


def default_label_color(value: int) -> list[float]:
    """A distinct colour (tab10 cycle) for a class given without one."""
    return [float(c) for c in _TAB10[(int(value) - 1) % len(_TAB10)]]


def _color(value: Any, label: int) -> list[float]:
    if value is None:
        return default_label_color(label)
    if isinstance(value, str):  # "#rrggbb" or Slicer's "r g b"
        text = value.strip().lstrip("#")
        if re.fullmatch(r"[0-9a-fA-F]{6}([0-9a-fA-F]{2})?", text):
            return [int(text[i : i + 2], 16) / 255.0 for i in (0, 2, 4)]
        try:
            value = [float(v) for v in text.replace(",", " ").split()]
        except ValueError:
            raise ValueError(f"label {label}: colour {value!r} is not 'r g b' or "
                             "'#rrggbb'") from None
    rgb = np.asarray(value, dtype=float).ravel()
    if rgb.size not in (3, 4) or not np.all(np.isfinite(rgb)):
        raise ValueError(f"label {label}: colour {value!r} must have 3 (or 4) numbers")
    rgb = rgb[:3]
    if rgb.max() > 1.0:  # 0-255 given
        rgb = rgb / 255.0
    return [float(c) for c in np.clip(rgb, 0.0, 1.0)]


def normalize_classes(classes: Any) -> list[dict[str, Any]]:
    """Turn the accepted spellings of a class table into the canonical list.

    Parameters
    ----------
    classes : mapping or iterable
        ``{value: name}``, ``{value: (name, colour)}``, ``{value: {"name", "color"}}`` or a
        list of ``{"value", "name", "color"}`` dicts (``"index"`` is accepted for
        ``"value"``). Colours are 3 floats in 0-1, 3 ints in 0-255 or ``"#rrggbb"``;
        missing colours come from a tab10 cycle. Keys may be strings of digits.

    Returns
    -------
    list of dict
        ``[{"value": int, "name": str, "color": [r, g, b]}]`` sorted by value.

    Raises
    ------
    ValueError
        For a negative or non-integer value, a duplicate value or a bad colour.
    """
    if classes is None:
        return []
    items: list[tuple[Any, Any, Any]] = []
    if isinstance(classes, Mapping):
        for key, spec in classes.items():
            if isinstance(spec, Mapping):
                items.append((key, spec.get("name"), spec.get("color")))
            elif isinstance(spec, list | tuple) and len(spec) == 2 and isinstance(spec[0], str):
                items.append((key, spec[0], spec[1]))
            else:
                items.append((key, spec, None))
    elif isinstance(classes, Iterable) and not isinstance(classes, str | bytes):
        for spec in classes:
            if not isinstance(spec, Mapping):
                raise ValueError(f"class table entries must be dicts, got {spec!r}")
            value = spec.get("value", spec.get("index"))
            items.append((value, spec.get("name"), spec.get("color")))
    else:
        raise ValueError(f"class table must be a dict or a list of dicts, got {classes!r}")
    out: dict[int, dict[str, Any]] = {}
    for key, name, color in items:
        try:
            value = int(str(key).strip()) if isinstance(key, str) else int(key)
        except (TypeError, ValueError):
            raise ValueError(f"label value {key!r} is not an integer") from None
        if isinstance(key, float) and key != value:
            raise ValueError(f"label value {key!r} is not an integer")
        if value < 0:
            raise ValueError(f"label value {value} is negative")
        if value in out:
            raise ValueError(f"label value {value} appears twice in the class table")
        text = str(name).strip() if name is not None else ""
        out[value] = {"value": value, "name": text or f"label {value}",
                      "color": _color(color, value)}
    return [out[v] for v in sorted(out)]


# --------------------------------------------------------------------------------- NRRD


def _extents(data: np.ndarray, values: list[int]) -> dict[int, str]:
    """Slicer ``Extent`` per value: ``"i0 i1 j0 j1 k0 k1"`` (file index order)."""
    from scipy import ndimage

    out = {}
    arr = np.asarray(data)
    top = max(values) if values else 0
    boxes = ndimage.find_objects(arr, max_label=top) if arr.dtype.kind in "iu" and top else []
    for v in values:
        box = boxes[v - 1] if 0 < v <= len(boxes) else None
        if box is None:
            out[v] = "0 -1 0 -1 0 -1"  # Slicer's empty extent
            continue
        bounds = [(s.start, s.stop - 1) for s in box][::-1]  # (k, j, i) -> (i, j, k)
        while len(bounds) < 3:
            bounds.append((0, 0))
        out[v] = " ".join(f"{a} {b}" for a, b in bounds)
    return out


def classes_to_nrrd_fields(classes: Any, data: np.ndarray | None = None) -> dict[str, str]:
    """Slicer segmentation header fields (one labelmap layer) for a class table.

    Parameters
    ----------
    classes : class table
        Anything :func:`normalize_classes` accepts; value 0 (background) is skipped.
    data : numpy.ndarray, optional
        The label volume (array-axis order), to fill ``Segment<N>_Extent``.

    Returns
    -------
    dict
        ``{"Segment0_ID": ..., ...}`` with string values (written as ``key:=value``).
    """
    table = [c for c in normalize_classes(classes) if c["value"] != 0]
    if not table:
        return {}
    extents = _extents(data, [c["value"] for c in table]) if data is not None else {}
    fields = {
        "Segmentation_MasterRepresentation": "Binary labelmap",
        "Segmentation_ContainedRepresentationNames": "Binary labelmap|",
        "Segmentation_ReferenceImageExtentOffset": "0 0 0",
    }
    for n, c in enumerate(table):
        key = f"Segment{n}_"
        name = " ".join(c["name"].split())  # one header line
        fields[key + "ID"] = f"Segment_{c['value']}"
        fields[key + "Name"] = name
        fields[key + "NameAutoGenerated"] = "0"
        fields[key + "Color"] = " ".join(f"{x:.6g}" for x in c["color"])
        fields[key + "ColorAutoGenerated"] = "0"
        fields[key + "LabelValue"] = str(c["value"])
        fields[key + "Layer"] = "0"
        fields[key + "Extent"] = extents.get(c["value"], "0 -1 0 -1 0 -1")
        fields[key + "Tags"] = "Segmentation.Status:inprogress|"
    return fields


def classes_from_nrrd_header(header: Mapping[str, Any]) -> list[dict[str, Any]] | None:
    """The class table stored as Slicer segment fields, or ``None`` when there is none.

    Segments without ``LabelValue`` get ``N + 1`` (Slicer's labelmap export order).
    Segments on another ``Layer`` than 0 are not representable in one label volume
    and make this raise.

    Raises
    ------
    ValueError
        For segments on several layers or unreadable fields.
    """
    pattern = re.compile(r"^Segment(\d+)_(\w+)$")
    segments: dict[int, dict[str, str]] = {}
    for key, value in header.items():
        m = pattern.match(str(key))
        if m:
            segments.setdefault(int(m.group(1)), {})[m.group(2)] = str(value).strip()
    if not segments:
        return None
    table = []
    layers = set()
    for n in sorted(segments):
        seg = segments[n]
        layers.add(seg.get("Layer", "0") or "0")
        color = seg.get("Color")
        table.append({
            "value": int(seg.get("LabelValue", n + 1)),
            "name": seg.get("Name") or seg.get("ID") or f"Segment {n}",
            "color": [float(c) for c in color.split()] if color else None,
        })
    if len(layers) > 1:
        raise ValueError(f"segments are stored on {len(layers)} layers (overlapping "
                         "segments); only single-layer segmentations are supported")
    return normalize_classes(table)


# ----------------------------------------------------------------------------- sidecars


def sidecar_paths(path: str | os.PathLike[str]) -> tuple[Path, Path]:
    """``(<stem>.labels.json, <stem>.label.txt)`` next to the label volume ``path``."""
    p = Path(path)
    stem = strip_known_suffix(p.name)
    return p.with_name(stem + _JSON_SUFFIX), p.with_name(stem + _ITKSNAP_SUFFIX)


def format_itksnap_labels(classes: Any) -> str:
    """A class table as an ITK-SNAP label description file (text)."""
    table = normalize_classes(classes)
    lines = [
        "################################################",
        "# ITK-SnAP Label Description File",
        "# File format: ",
        "# IDX   -R-  -G-  -B-  -A--  VIS MSH  LABEL",
        "# Fields: ",
        "#    IDX:   Zero-based index ",
        "#    -R-:   Red color component (0..255)",
        "#    -G-:   Green color component (0..255)",
        "#    -B-:   Blue color component (0..255)",
        "#    -A-:   Label transparency (0.00 .. 1.00)",
        "#    VIS:   Label visibility (0 or 1)",
        "#    MSH:   Label mesh visibility (0 or 1)",
        "#  LABEL:   Label description ",
        "#  Written by napari-latentseg",
        "################################################",
    ]
    if all(c["value"] != 0 for c in table):
        lines.append(f"{0:>5} {0:>5} {0:>4} {0:>4} {0:>8} {0:>2} {0:>2}    \"Clear Label\"")
    for c in table:
        r, g, b = (int(round(x * 255)) for x in c["color"])
        name = c["name"].replace('"', "'").replace("\n", " ")
        lines.append(f"{c['value']:>5} {r:>5} {g:>4} {b:>4} {1:>8} {1:>2} {1:>2}    \"{name}\"")
    return "\n".join(lines) + "\n"


_ITKSNAP_LINE = re.compile(
    r'^\s*(\d+)\s+(\d+)\s+(\d+)\s+(\d+)\s+([0-9.eE+-]+)\s+(\d+)\s+(\d+)\s+"(.*)"\s*$'
)


def parse_itksnap_labels(text: str) -> list[dict[str, Any]]:
    """Parse an ITK-SNAP label description file; the ``"Clear Label"`` 0 row is dropped.

    Raises
    ------
    ValueError
        On a line that is neither a comment nor a label row.
    """
    rows = []
    for n, line in enumerate(text.splitlines(), start=1):
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        m = _ITKSNAP_LINE.match(line)
        if m is None:
            raise ValueError(f"line {n} is not an ITK-SNAP label row: {line.strip()!r}")
        value, name = int(m.group(1)), m.group(8)
        if value == 0 and name.strip().lower() == "clear label":
            continue
        rows.append({"value": value, "name": name,
                     "color": [int(m.group(i)) / 255.0 for i in (2, 3, 4)]})
    return normalize_classes(rows)


def atomic_write_text(path: str | os.PathLike[str], text: str) -> Path:
    """Write ``text`` to ``path`` atomically (temporary file in the same folder, fsync,
    rename), replacing an existing file.

    Raises
    ------
    VolumeIOError
        When the folder is not writable (the temporary file is removed).
    """
    path = Path(path)
    try:
        with atomic_write(path) as fh:
            fh.write(text)
    except OSError as exc:
        raise VolumeIOError(f"{path}: cannot write ({exc})") from exc
    return path


def write_label_sidecars(path: str | os.PathLike[str], classes: Any) -> list[Path]:
    """Write the JSON and ITK-SNAP sidecars of the label volume ``path``.

    Returns
    -------
    list of pathlib.Path
        The two files written (none for an empty table).
    """
    table = normalize_classes(classes)
    if not table:
        return []
    json_path, txt_path = sidecar_paths(path)
    doc = {"format": "napari-latentseg label classes", "version": 1,
           "volume": Path(path).name, "labels": table}
    return [atomic_write_text(json_path, json.dumps(doc, indent=2, ensure_ascii=False) + "\n"),
            atomic_write_text(txt_path, format_itksnap_labels(table))]


def read_label_sidecars(path: str | os.PathLike[str]) -> list[dict[str, Any]] | None:
    """The class table stored next to ``path`` (JSON first, then ITK-SNAP), or ``None``.

    Raises
    ------
    VolumeIOError
        When a sidecar exists but cannot be parsed (names the sidecar).
    """
    json_path, txt_path = sidecar_paths(path)
    try:
        if json_path.is_file():
            doc = json.loads(json_path.read_text(encoding="utf-8"))
            labels = doc.get("labels") if isinstance(doc, dict) else doc
            return normalize_classes(labels)
        if txt_path.is_file():
            return parse_itksnap_labels(txt_path.read_text(encoding="utf-8", errors="replace"))
    except (ValueError, OSError) as exc:  # JSONDecodeError is a ValueError
        bad = json_path if json_path.is_file() else txt_path
        raise VolumeIOError(f"{bad}: cannot read the label names ({exc})") from exc
    return None
