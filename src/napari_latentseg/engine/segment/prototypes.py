"""Class prototypes as forest columns, for rounds of three or more classes.

A forest splits one column at a time, so it cannot tell how close a voxel's feature vector is
to the painted voxels of a class as a whole. Few-shot segmentation's answer is a prototype:
the mean feature vector of a class's painted voxels. Each round of a task without the
background prior (three or more classes), every voxel gets one more column per class: its
distance to that class's prototype (root mean square over the features, standardised by the
painted voxels' spread). Measured on the phantom's tissue classes (docs/benchmarks.md); on
object-vs-background tasks the prior's background is mostly unpainted, its prototype
describes one stroke, and the columns did not help there, so they are left out.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

__all__ = ["Prototypes", "MIN_CLASSES"]

MIN_CLASSES = 3  # rounds with at least this many classes (and no prior) get the columns
_CHUNK = 1 << 18


@dataclass
class Prototypes:
    """Per-class means of the painted rows (standardised) and the standardisation."""

    mean: np.ndarray  # (F,) of the painted rows
    scale: np.ndarray  # (F,) their standard deviation (floored)
    centres: np.ndarray  # (n_classes, F) standardised class means
    columns: int  # the prototypes use the rows' first this many columns

    @classmethod
    def fit(cls, x: np.ndarray, y: np.ndarray, columns: int | None = None) -> Prototypes:
        """Prototypes of classes ``0..max(y)`` from the first ``columns`` (all: None) of
        feature rows ``x`` and class indices ``y``; a class without rows gets an infinitely
        far prototype (no column value helps it)."""
        columns = x.shape[1] if columns is None else int(columns)
        x = np.asarray(x[:, :columns], dtype=np.float32)
        mean = x.mean(0)
        scale = x.std(0) + 1e-3
        z = (x - mean) / scale
        n_cls = int(y.max()) + 1
        centres = np.full((n_cls, x.shape[1]), np.inf, dtype=np.float32)
        for c in range(n_cls):
            if np.any(y == c):
                centres[c] = z[y == c].mean(0)
        return cls(mean.astype(np.float32), scale.astype(np.float32), centres, columns)

    def distances(self, rows: np.ndarray) -> np.ndarray:
        """(voxels, n_classes) float32 distances of feature rows to each prototype."""
        out = np.empty((len(rows), len(self.centres)), dtype=np.float32)
        self._distances_into(rows, out)
        return out

    def _distances_into(self, rows: np.ndarray, out: np.ndarray) -> None:
        painted = np.isfinite(self.centres[:, 0])
        centres = np.where(painted[:, None], self.centres, 0.0).astype(np.float32)
        sq_centres = (centres**2).sum(1)
        m2 = -2.0 * centres.T
        n_cols = float(self.columns)
        for i in range(0, len(rows), _CHUNK):
            # A float32 copy standardised in place (the caller's rows stay as they are).
            z = np.array(rows[i : i + _CHUNK, : self.columns], dtype=np.float32)
            z -= self.mean
            z /= self.scale
            # |z - m|^2 = |z|^2 - 2 z.m + |m|^2: one matrix product for every class.
            d2 = z @ m2
            d2 += np.einsum("ij,ij->i", z, z)[:, None]
            d2 += sq_centres
            np.maximum(d2, 0.0, out=d2)
            d2 /= n_cols
            out[i : i + _CHUNK] = np.sqrt(d2, out=d2)
        out[:, ~painted] = 1e6  # a class painted nowhere: no voxel is near it

    def extend(self, rows: np.ndarray) -> np.ndarray:
        """The rows with their prototype distances appended (float32; one conversion)."""
        f = rows.shape[1]
        out = np.empty((len(rows), f + len(self.centres)), dtype=np.float32)
        out[:, :f] = rows
        self._distances_into(out[:, : self.columns], out[:, f:])
        return out
