"""Per-voxel columns a caller adds to the forest's features (the scan's anomaly score).

The forest sees the ilastik set and the VAE's columns; a caller may hand it more, computed
elsewhere on the same grid. The measured use is the scan's own anomaly score (the denoiser's,
what the dock's Reconstruct and ``latentseg reconstruct --anomaly-map`` give): on MR brain
tumours it lifts the correction loop's mean Dice by 0.05-0.06 (six seeds)
(``docs/interactive_benchmarks.md``, "The scan's anomaly score as a forest column").
"""

from __future__ import annotations

import numpy as np

from .cache import _fingerprint_array

__all__ = ["as_extra_columns", "extra_kind", "given_columns"]


def as_extra_columns(extra: np.ndarray | None, shape: tuple[int, ...]) -> np.ndarray | None:
    """``extra`` as float32 columns ``shape + (k,)``, checked; None stays None.

    Parameters
    ----------
    extra : np.ndarray or None
        One column on the volume's grid (``shape``) or several (``shape + (k,)``).
    shape : tuple of int
        The round's (z, y, x) grid.

    Raises
    ------
    ValueError
        A grid other than the volume's, or values that are not finite.
    """
    if extra is None:
        return None
    a = np.asarray(extra)
    if a.shape == tuple(shape):
        a = a[..., None]
    if a.ndim != len(shape) + 1 or a.shape[:-1] != tuple(shape) or a.shape[-1] < 1:
        raise ValueError(f"extra feature columns have shape {np.shape(extra)}, the image "
                         f"{tuple(shape)}: they must be on the image's grid")
    if not np.issubdtype(a.dtype, np.number) or np.issubdtype(a.dtype, np.complexfloating):
        raise ValueError(f"extra feature columns must be real numbers, got {a.dtype}")
    # A copy: the caller's array (a layer's data) may change while the rounds read this one.
    a = np.array(a, dtype=np.float32, order="C", copy=True)
    if not np.isfinite(a).all():
        raise ValueError("extra feature columns hold NaN or infinite values")
    # The forest's cache is float16: keep the columns inside its range.
    return np.clip(a, -6e4, 6e4, out=a)


def extra_kind(extra: np.ndarray | None) -> str:
    """What the cache key's kind gets for these columns (a fingerprint: other columns, other
    cached features)."""
    if extra is None:
        return ""
    return f"+extra{extra.shape[-1]}-{_fingerprint_array(extra)[:16]}"


def given_columns(k: int) -> str:
    """How a round's features line names ``k`` caller's columns (a caller that knows what
    they are may replace these words with their name)."""
    return f"{k} given column{'s' if k > 1 else ''}"
