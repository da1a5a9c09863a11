"""Annotation volumes: checks, the class table, and the sample of annotated voxels."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from ...runtime.progress import check_stop
from .runner import slice_runs

__all__ = ["validate_annotations", "label_dtype", "ClassTable", "annotated_batches",
           "sample_annotated", "continues_round"]


def continues_round(last: np.ndarray | None, annotations: np.ndarray) -> bool:
    """Whether ``annotations`` add strokes to ``last`` and change none (a correction round).

    Only then is the last round's result averaged in (momentum): after strokes were erased
    or repainted the user is redirecting the result, not correcting it, and a round without
    new strokes (other options, a new model) should give its own answer.
    """
    if last is None or np.shape(last) != np.shape(annotations):
        return False
    last, ann = np.asarray(last), np.asarray(annotations)
    painted = last > 0
    return (bool(painted.any()) and int(np.count_nonzero(ann)) > int(painted.sum())
            and bool(np.array_equal(ann[painted], last[painted])))


def validate_annotations(annotations: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    """Check an annotation volume; returns the sorted class ids.

    Raises
    ------
    ValueError
        Wrong shape, non-integer or negative values, no annotated voxel, a single class.
    """
    ann = np.asarray(annotations)
    if ann.shape != tuple(shape):
        raise ValueError(
            f"annotations have shape {ann.shape} but the image has shape {tuple(shape)}; "
            "paint them on the image's grid")
    if not np.issubdtype(ann.dtype, np.integer):
        if not np.all(np.mod(ann, 1) == 0):
            raise ValueError("annotations must be integer labels (0 = not annotated)")
    if ann.min() < 0:
        raise ValueError("annotations must be >= 0 (0 = not annotated, 1..N = classes)")
    classes = np.unique(ann[ann > 0])  # the painted voxels only: a CT's unique is ~0.5 s
    if classes.size == 0:
        raise ValueError("no annotated voxel: paint at least two classes (background is a "
                         "class too) on a few slices")
    if classes.size == 1:
        raise ValueError(
            f"only class {int(classes[0])} is annotated: paint at least one other class "
            "(e.g. the background) so the classifier can tell them apart")
    return classes.astype(np.int64)


def label_dtype(max_id: int) -> np.dtype:
    """The smallest unsigned integer type holding label ids up to ``max_id``."""
    for dt in (np.uint8, np.uint16, np.uint32):
        if max_id <= np.iinfo(dt).max:
            return np.dtype(dt)
    return np.dtype(np.uint64)


@dataclass(frozen=True)
class ClassTable:
    """The annotated classes: their ids (sorted) and class index of any label id.

    Label ids may be any size (no lookup array as long as the largest id); ``ids`` has the
    label type of the output (uint8 up to 255, then uint16, uint32).
    """

    ids: np.ndarray

    @classmethod
    def from_annotations(cls, annotations: np.ndarray, shape: tuple[int, ...]) -> ClassTable:
        """Validate ``annotations`` (see :func:`validate_annotations`) and tabulate them."""
        classes = validate_annotations(annotations, shape)
        return cls(classes.astype(label_dtype(int(classes[-1]))))

    def __len__(self) -> int:
        return len(self.ids)

    @property
    def classes(self) -> list[int]:
        return [int(c) for c in self.ids]

    @property
    def dtype(self) -> np.dtype:
        """Label type holding every class id."""
        return self.ids.dtype

    def index(self, labels: np.ndarray) -> np.ndarray:
        """Class index (int64) of each label id; -1 for 0 and ids that are no class."""
        labels = np.asarray(labels)
        i = np.minimum(np.searchsorted(self.ids, labels), len(self.ids) - 1)
        return np.where(self.ids[i] == labels, i, -1).astype(np.int64)


def annotated_batches(annotations: np.ndarray, per: int, spatial_dims: int
                      ) -> list[np.ndarray]:
    """Slice batches holding every annotated slice, each contiguous and at most ``per`` long.

    3D models see the whole volume at once: a single batch of every slice.
    """
    if spatial_dims == 3:
        return [np.arange(annotations.shape[0])]
    zs = np.flatnonzero(annotations.reshape(annotations.shape[0], -1).any(1))
    return [r[i : i + per] for r in slice_runs(zs) for i in range(0, len(r), per)]


def sample_annotated(annotations: np.ndarray, rows_of: Callable, batches: list[np.ndarray],
                     max_per_class: int, rng: np.random.Generator, stop_event):
    """Features and ids of a class-balanced sample of the annotated voxels.

    Parameters
    ----------
    annotations : np.ndarray
        (z, y, x) label ids, 0 = not annotated.
    rows_of : callable
        ``rows_of(zs)``: a torch tensor (voxels, F) of the features of slices ``zs`` (a
        contiguous batch), voxels in C order; any device.
    batches : list of np.ndarray
        Slice batches covering the annotated slices (:func:`annotated_batches`).
    max_per_class : int
        At most this many voxels of each class, drawn at random (the rest is kept whole).

    Returns
    -------
    x : torch.Tensor
        (N, F) float32 features on the CPU, voxels in volume order.
    y : np.ndarray
        (N,) label ids.
    """
    import torch

    xs, ys = [], []
    for zs in batches:
        check_stop(stop_event, "segmentation")
        flat = annotations[zs[0] : zs[-1] + 1].reshape(-1)
        idx = np.flatnonzero(flat)
        if idx.size == 0:
            continue
        rows = rows_of(zs)  # only the annotated rows leave the device
        xs.append(rows[torch.from_numpy(idx).to(rows.device)].float().cpu())
        ys.append(flat[idx])
    x, y = torch.cat(xs), np.concatenate(ys)
    keep = np.sort(np.concatenate([
        rng.permutation(np.flatnonzero(y == c))[:max_per_class] for c in np.unique(y)]))
    return x[torch.from_numpy(keep)], y[keep]
