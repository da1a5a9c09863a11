"""Anomaly candidates as a CSV table, with their centres in voxels and in world millimetres.

One row per candidate (connected component of the anomaly labels, ``id`` = its label value):
``id, volume_ml, voxels, peak_score``, the centre of mass as array indices (``voxel_z,
voxel_y, voxel_x``; 2D: ``voxel_y, voxel_x``) and as a world point in LPS millimetres
(``lps_x_mm, lps_y_mm[, lps_z_mm]``), the frame DICOM and ITK use, so a reader can jump to a
finding in any viewer (3D Slicer shows RAS: negate x and y).
"""

from __future__ import annotations

import csv
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ..runtime.files import atomic_write
from ._volume import affine_from_geometry, geometry_from_dict

__all__ = ["CANDIDATE_FIELDS", "candidate_rows", "write_candidates_csv"]

CANDIDATE_FIELDS = ("id", "volume_ml", "voxels", "peak_score")


def candidate_rows(candidates: Sequence[Mapping[str, Any]],
                   geometry: Mapping[str, Any] | None) -> list[dict[str, Any]]:
    """Table rows of anomaly candidates (see the module docstring for the columns).

    Parameters
    ----------
    candidates : sequence of dict
        As the anomaly scoring lists them: ``id``, ``volume_ml``, ``voxels``,
        ``peak_score`` and ``centroid`` (array indices, one per axis).
    geometry : dict or None
        The scan's ``spacing``, ``origin`` and ``direction`` (array-axis order, world
        (z, y, x) LPS); None: no world columns.
    """
    affine = affine_from_geometry(*geometry_from_dict(dict(geometry))) if geometry else None
    rows = []
    for c in candidates:
        centre = np.asarray(c["centroid"], dtype=float)
        axes = "zyx"[-centre.size:]
        row: dict[str, Any] = {"id": int(c["id"]), "volume_ml": round(float(c["volume_ml"]), 4),
                               "voxels": int(c["voxels"]),
                               "peak_score": round(float(c["peak_score"]), 3)}
        row.update({f"voxel_{a}": round(float(v), 2) for a, v in zip(axes, centre, strict=True)})
        if affine is not None:
            if len(affine) != centre.size + 1:
                raise ValueError(f"a candidate centre has {centre.size} coordinates, the "
                                 f"geometry {len(affine) - 1}")
            world = affine[:-1, :-1] @ centre + affine[:-1, -1]  # (z, y, x) order
            row.update({f"lps_{a}_mm": round(float(v), 2)
                        for a, v in zip(reversed(axes), world[::-1], strict=True)})
        rows.append(row)
    return rows


def write_candidates_csv(path: str | os.PathLike[str], candidates: Sequence[Mapping[str, Any]],
                         geometry: Mapping[str, Any] | None = None, *,
                         overwrite: bool = False, ndim: int | None = None) -> Path:
    """Write anomaly candidates to a CSV file, atomically; returns the path.

    Parameters
    ----------
    path : path-like
        The ``.csv`` file.
    candidates : sequence of dict
        See :func:`candidate_rows`; an empty list writes the header only.
    geometry : dict, optional
        The scan's geometry, for the world columns.
    overwrite : bool
        Replace an existing file (otherwise ``FileExistsError``).
    ndim : int, optional
        Dimensions of the scan (default: the geometry's, else the candidates', else 3).
    """
    rows = candidate_rows(candidates, geometry)
    if ndim is None:
        ndim = (len(geometry["spacing"]) if geometry else
                len(candidates[0]["centroid"]) if candidates else 3)
    axes = "zyx"[-ndim:]
    fields = [*CANDIDATE_FIELDS, *(f"voxel_{a}" for a in axes)]
    if geometry:
        fields += [f"lps_{a}_mm" for a in reversed(axes)]
    path = Path(path)
    with atomic_write(path, "w", overwrite=overwrite, suffix=".csv") as fh:
        writer = csv.DictWriter(fh, fieldnames=fields, lineterminator="\n")
        writer.writeheader()
        writer.writerows(rows)
    return path
