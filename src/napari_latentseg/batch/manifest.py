"""Cohort manifests: the scans of a batch run and the id (output folder name) of each.

A cohort is either

- a **folder**: every scan file at its top level (``.nii``, ``.nii.gz``, ``.nrrd``, ``.nhdr``,
  ``.mha``, ``.mhd``) and every sub-folder holding a DICOM series; the id is the file name
  without its extension (or the sub-folder's name), with characters other than letters,
  digits and ``. _ + -`` replaced by ``_``; or
- a **CSV manifest** with a header row: a column ``image`` (or ``scan`` / ``path``), optionally
  ``annotations``, ``anomaly_map`` (task ``segment``: the scan's anomaly score, one more
  feature of the forest) and ``id``. Relative paths are resolved against the CSV's folder; an empty
  ``id`` is derived from the image path as for a folder. Comma, semicolon and tab separators
  are recognised.

Ids must be unique (case-insensitively: they name folders, and some file systems ignore case);
duplicates are refused with the rows that clash. Files that do not exist are *not* refused
here: a run records them as failed scans and goes on with the others.
"""

from __future__ import annotations

import csv
import os
import re
from dataclasses import dataclass, replace
from pathlib import Path

__all__ = [
    "ANNOTATION_COLUMNS",
    "ANOMALY_MAP_COLUMNS",
    "ID_COLUMNS",
    "IMAGE_COLUMNS",
    "SCAN_SUFFIXES",
    "ManifestError",
    "ScanJob",
    "find_annotations",
    "find_anomaly_map",
    "read_manifest",
    "safe_id",
]

#: Scan file endings picked up from a folder (DICOM series are sub-folders).
SCAN_SUFFIXES = (".nii.gz", ".nii", ".nrrd", ".nhdr", ".mha", ".mhd")
#: Accepted names (case-insensitive) of the CSV columns.
IMAGE_COLUMNS = ("image", "scan", "path")
ANNOTATION_COLUMNS = ("annotations", "annotation")
ANOMALY_MAP_COLUMNS = ("anomaly_map", "anomaly map")
ID_COLUMNS = ("id",)
#: Names a scan id may not take: files the run writes next to the scans' folders.
RESERVED_IDS = ("summary.csv",)

_ID_RE = re.compile(r"^[A-Za-z0-9_+-][A-Za-z0-9._+-]{0,199}$")
_DICOM_SUFFIXES = (".dcm", ".dicom", ".ima")


class ManifestError(ValueError):
    """The cohort cannot be listed: the message names the file, the row and the problem."""


@dataclass(frozen=True)
class ScanJob:
    """One scan of a cohort.

    Parameters
    ----------
    id : str
        Unique, file-system safe id: the scan's outputs go to ``OUTDIR/<id>/``.
    image : str
        Absolute path of the scan (file or DICOM folder).
    annotations : str or None
        Absolute path of its annotation volume (task ``segment``).
    anomaly_map : str or None
        Absolute path of its anomaly score on its grid (task ``segment``: a forest column).
    """

    id: str
    image: str
    annotations: str | None = None
    anomaly_map: str | None = None


def safe_id(name: str) -> str:
    """A file-system safe id derived from a file or folder name (extension removed)."""
    from ..io._volume import strip_known_suffix

    base = strip_known_suffix(name)
    out = re.sub(r"[^A-Za-z0-9._+-]", "_", base).lstrip(".")
    return out[:200] or "scan"


def _is_scan_file(p: Path) -> bool:
    return p.is_file() and p.name.lower().endswith(SCAN_SUFFIXES)


def _is_dicom_file(p: Path) -> bool:
    from ..io._dicom import has_dicom_magic

    return p.is_file() and (p.name.lower().endswith(_DICOM_SUFFIXES) or has_dicom_magic(p))


def _scan_folder(folder: Path) -> tuple[list[ScanJob], list[str]]:
    from ..io._dicom import folder_has_dicom

    entries = sorted(e for e in folder.iterdir() if not e.name.startswith("."))
    files = [e for e in entries if e.is_file()]
    # The folder is itself one DICOM series (DICOM files at its top level, no other scans).
    if not any(_is_scan_file(f) for f in files) and any(_is_dicom_file(f) for f in files[:32]):
        return [ScanJob(safe_id(folder.resolve().name), str(folder.resolve()))], []
    jobs, ignored, where = [], [], {}
    for e in entries:
        if _is_scan_file(e) or (e.is_dir() and folder_has_dicom(e)):
            job = ScanJob(safe_id(e.name), str(e.resolve()))
            jobs.append(job)
            where.setdefault(job.id.lower(), []).append(e.name)
        else:
            ignored.append(e.name)
    clashes = {k: v for k, v in where.items() if len(v) > 1}
    if clashes:
        detail = "; ".join(" and ".join(v) for v in clashes.values())
        raise ManifestError(
            f"{folder}: scans would share an output folder ({detail}); rename them or list "
            "them in a CSV manifest with an id column")
    return jobs, ignored


def _sniff(sample: str) -> type[csv.Dialect] | str:
    try:
        return csv.Sniffer().sniff(sample.splitlines()[0] if sample else "", delimiters=",;\t")
    except csv.Error:
        return "excel"


def _column(header: list[str], names: tuple[str, ...]) -> int | None:
    low = [h.strip().lower() for h in header]
    for n in names:
        if n in low:
            return low.index(n)
    return None


def _resolve(cell: str, base: Path) -> str:
    p = Path(os.path.expandvars(cell.strip())).expanduser()
    if not p.is_absolute():
        p = base / p
    return str(p.resolve())


def _read_csv(path: Path) -> list[ScanJob]:
    try:
        text = path.read_text(encoding="utf-8-sig")
    except (OSError, UnicodeDecodeError) as exc:
        raise ManifestError(f"{path}: cannot read the manifest ({exc})") from None
    rows = list(csv.reader(text.splitlines(), _sniff(text)))
    # Blank lines and comment lines (first cell starting with '#') are skipped.
    numbered = [(i + 1, r) for i, r in enumerate(rows)
                if any(c.strip() for c in r) and not r[0].lstrip().startswith("#")]
    if not numbered:
        raise ManifestError(f"{path}: the manifest is empty; expected a header row with an "
                            "image column")
    _, header = numbered[0]
    i_img = _column(header, IMAGE_COLUMNS)
    if i_img is None:
        raise ManifestError(
            f"{path}: no image column; the header must name one of {', '.join(IMAGE_COLUMNS)} "
            f"(found: {', '.join(h.strip() for h in header) or 'nothing'})")
    i_ann = _column(header, ANNOTATION_COLUMNS)
    i_map = _column(header, ANOMALY_MAP_COLUMNS)
    i_id = _column(header, ID_COLUMNS)
    base = path.resolve().parent

    def cell(row: list[str], i: int | None) -> str:
        return row[i].strip() if i is not None and i < len(row) else ""

    jobs, lines = [], []
    for line, row in numbered[1:]:
        image = cell(row, i_img)
        if not image:
            raise ManifestError(f"{path}, line {line}: no image path")
        given = cell(row, i_id)
        if given:
            if not _ID_RE.match(given) or given.lower() in RESERVED_IDS:
                raise ManifestError(
                    f"{path}, line {line}: id {given!r} names the scan's output folder: use "
                    "letters, digits and . _ + - only (not first: '.'), at most 200 characters")
            sid = given
        else:
            sid = safe_id(Path(image.rstrip("/\\")).name)
        ann, score = cell(row, i_ann), cell(row, i_map)
        jobs.append(ScanJob(sid, _resolve(image, base), _resolve(ann, base) if ann else None,
                            _resolve(score, base) if score else None))
        lines.append(line)
    if not jobs:
        raise ManifestError(f"{path}: the manifest lists no scan (only a header row)")
    seen: dict[str, list[int]] = {}
    for job, line in zip(jobs, lines, strict=True):
        seen.setdefault(job.id.lower(), []).append(line)
    dups = {k: v for k, v in seen.items() if len(v) > 1}
    if dups:
        detail = "; ".join(f"{k!r} on lines {', '.join(map(str, v))}" for k, v in dups.items())
        raise ManifestError(f"{path}: ids must be unique: {detail}"
                            + ("" if i_id is not None else "; add an id column"))
    return jobs


def find_annotations(folder: str | os.PathLike[str], scan_id: str) -> str | None:
    """The annotation file for ``scan_id`` in ``folder``: ``<id>`` plus a scan extension."""
    folder = Path(folder)
    for suffix in SCAN_SUFFIXES:
        cand = folder / f"{scan_id}{suffix}"
        if cand.is_file():
            return str(cand.resolve())
    return None


def find_anomaly_map(folder: str | os.PathLike[str], scan_id: str) -> str | None:
    """The anomaly score of ``scan_id`` in ``folder``: ``<id>/anomaly_map.<ext>`` (what
    ``batch --task reconstruct --anomaly-map`` writes), else ``<id>.<ext>``."""
    found = find_annotations(Path(folder) / scan_id, "anomaly_map")
    return found or find_annotations(folder, scan_id)


def read_manifest(
    source: str | os.PathLike[str],
    *,
    annotations_dir: str | os.PathLike[str] | None = None,
    anomaly_maps_dir: str | os.PathLike[str] | None = None,
) -> tuple[list[ScanJob], list[str]]:
    """List the scans of a cohort.

    Parameters
    ----------
    source : path-like
        A folder of scans or a CSV manifest (see the module docstring).
    annotations_dir : path-like, optional
        Folder of annotation volumes named by scan id (``<id>.nii.gz``...), used for scans
        the manifest gives no annotations.
    anomaly_maps_dir : path-like, optional
        Folder of anomaly scores (:func:`find_anomaly_map`), for scans the manifest gives
        none.

    Returns
    -------
    jobs : list of ScanJob
        In folder (sorted by name) or manifest order.
    ignored : list of str
        Entries of a folder that are not scans (to tell the user).

    Raises
    ------
    ManifestError
        Missing source, unreadable or malformed manifest, duplicate ids, an empty cohort.
    """
    p = Path(source).expanduser()
    if not p.exists():
        raise ManifestError(f"{p}: no such file or folder")
    ignored: list[str] = []
    if p.is_dir():
        jobs, ignored = _scan_folder(p)
        if not jobs:
            raise ManifestError(
                f"{p}: no scans found (expected {', '.join(SCAN_SUFFIXES)} files or DICOM "
                "sub-folders)")
    elif p.name.lower().endswith((".csv", ".tsv", ".txt")):
        jobs = _read_csv(p)
    else:
        raise ManifestError(f"{p}: expected a folder of scans or a CSV manifest (.csv)")
    if annotations_dir is not None:
        adir = Path(annotations_dir).expanduser()
        if not adir.is_dir():
            raise ManifestError(f"{adir}: annotations folder not found")
        jobs = [j if j.annotations else replace(j, annotations=find_annotations(adir, j.id))
                for j in jobs]
    if anomaly_maps_dir is not None:
        mdir = Path(anomaly_maps_dir).expanduser()
        if not mdir.is_dir():
            raise ManifestError(f"{mdir}: anomaly maps folder not found")
        jobs = [j if j.anomaly_map else replace(j, anomaly_map=find_anomaly_map(mdir, j.id))
                for j in jobs]
    return jobs, ignored
