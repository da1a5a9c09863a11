"""The object's reach in object-vs-background rounds: a geodesic distance from its strokes.

With the background prior, a tumour's forest can call far-away tissue of the same kind the
object, joined to it through tissue the connectivity rule cannot cut (lung2: a 231 k voxel
region over 48 slices around a 25 k voxel tumour). The object's probability is therefore
multiplied by a gate: 1 within ``R`` mm of an object stroke, a Gaussian fall-off (sigma
``R / 2``) beyond, where ``R`` = max(:data:`REACH_MM`, :data:`REACH_FACTOR` x the spread of
the object's strokes) and the distance is geodesic: every mm costs 1 + :data:`EDGE_COST` x
the smoothed image's gradient (normalised units per mm), so crossing an edge of the image
counts as going further. It is computed on an in-plane / 4 grid, / 8 for 512 x 512 slices
(its / 4 grid cost lung2 1.9 s a round for the same AUC), and the gate is applied on that grid
(lung2: 0.25 s a round). Measured in docs/interactive_benchmarks.md ("A geodesic reach",
"A lean forest").
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

__all__ = ["REACH_MM", "REACH_FACTOR", "EDGE_COST", "GRID", "GRID_WIDTH", "geodesic_distance",
           "count_by_grid", "geodesic_grid", "reach_gate", "reach_radius", "scale_by_grid",
           "upsample_grid"]

REACH_MM = 40.0
REACH_FACTOR = 1.5
EDGE_COST = 50.0  # extra mm per normalised unit of intensity crossed
GRID = 4  # in-plane subsampling of the distance's grid, at least...
GRID_WIDTH = 64  # ...enough for a grid about this many voxels across (512 x 512 CT: 8)


def geodesic_distance(smooth: np.ndarray, seeds: np.ndarray, spacing: Sequence[float],
                      edge_cost: float | None = None, grid: int | None = None) -> np.ndarray:
    """Geodesic distance (mm) of every voxel from the ``seeds`` voxels: :func:`geodesic_grid`
    shared by the voxels of each grid cell, (z, y, x) float32."""
    dist, grid = geodesic_grid(smooth, seeds, spacing, edge_cost, grid)
    return upsample_grid(dist, grid, seeds.shape)


def upsample_grid(a: np.ndarray, grid: int, shape: Sequence[int]) -> np.ndarray:
    """(z, y, x) of ``shape`` from a (z, ceil(y / grid), ceil(x / grid)) grid: each voxel
    takes its cell's value."""
    return a.repeat(grid, axis=1).repeat(grid, axis=2)[:, : shape[1], : shape[2]]


def scale_by_grid(target: np.ndarray, a: np.ndarray, grid: int) -> None:
    """``target *= upsample_grid(a, grid, target.shape)`` in place, a row of cells at a time
    (no full-size copy of ``a``: on a 61 x 512 x 512 scan the copies took longer than the
    distance itself)."""
    rows = a.repeat(grid, axis=2)[:, :, : target.shape[2]]
    for dy in range(grid):
        part = target[:, dy::grid]
        part *= rows[:, : part.shape[1]]


def count_by_grid(mask: np.ndarray, cells: np.ndarray, grid: int) -> int:
    """How many voxels of the (z, y, x) ``mask`` lie in a grid cell set in ``cells``."""
    rows = cells.repeat(grid, axis=2)[:, :, : mask.shape[2]]
    n = 0
    for dy in range(grid):
        part = mask[:, dy::grid]
        n += int(np.count_nonzero(part & rows[:, : part.shape[1]]))
    return n


def geodesic_grid(smooth: np.ndarray, seeds: np.ndarray, spacing: Sequence[float],
                  edge_cost: float | None = None, grid: int | None = None
                  ) -> tuple[np.ndarray, int]:
    """Geodesic distance (mm) from the ``seeds`` voxels on the in-plane grid it is computed
    on, and that grid's step (see :func:`upsample_grid` for every voxel's).

    Parameters
    ----------
    smooth : np.ndarray
        (z, y, x) smoothed normalised image (a view is enough: only every ``grid``-th voxel
        in-plane is read), or (z, y, x, C) feature channels, each scaled to unit standard
        deviation before its gradient is taken.
    seeds : np.ndarray
        (z, y, x) bool, at least one voxel set.
    spacing : sequence of float
        Voxel size (mm, z y x).
    edge_cost, grid
        Edge cost and in-plane subsampling; None: :data:`EDGE_COST`, and the larger of
        :data:`GRID` and the slice's width / :data:`GRID_WIDTH`.

    Returns
    -------
    tuple of (np.ndarray, int)
        (z, ceil(y / grid), ceil(x / grid)) float32, 0 at the seeds' grid voxels; the grid.
    """
    from skimage.graph import MCP_Geometric

    if not seeds.any():
        raise ValueError("the geodesic distance needs at least one seed voxel")
    edge_cost = EDGE_COST if edge_cost is None else edge_cost
    if grid is None:
        grid = max(GRID, round(max(seeds.shape[1:]) / GRID_WIDTH))
    img = np.asarray(smooth[:, ::grid, ::grid], dtype=np.float32)
    if img.ndim == 4:  # channels last: each in its own standard deviations
        img = img / np.maximum(img.reshape(-1, img.shape[-1]).std(0), 1e-6)
    else:
        img = img[..., None]
    sp = (float(spacing[0]), float(spacing[1]) * grid, float(spacing[2]) * grid)
    axes = [i for i in range(3) if img.shape[i] > 1]  # np.gradient needs 2 voxels an axis
    sq = np.zeros(img.shape[:3], np.float32)
    for i in axes:
        sq += (np.gradient(img, sp[i], axis=i) ** 2).sum(-1)
    cost = 1.0 + edge_cost * np.sqrt(sq)
    small = seeds[:, ::grid, ::grid]
    # A stroke thinner than the grid still seeds its nearest grid voxels.
    starts = np.argwhere(small) if small.any() else np.unique(
        np.argwhere(seeds) // np.array([1, grid, grid]), axis=0)
    dist, _ = MCP_Geometric(cost, sampling=sp).find_costs([tuple(p) for p in starts])
    return dist.astype(np.float32), grid


def reach_radius(seeds: np.ndarray, spacing: Sequence[float], floor: float | None = None,
                 factor: float | None = None) -> float:
    """R in mm: max(floor, factor x the largest distance of a seed voxel from the seeds'
    centroid); None: :data:`REACH_MM`, :data:`REACH_FACTOR`."""
    floor = REACH_MM if floor is None else floor
    factor = REACH_FACTOR if factor is None else factor
    pts = np.argwhere(seeds) * np.asarray(spacing, dtype=np.float64)
    spread = float(np.sqrt(((pts - pts.mean(0)) ** 2).sum(1)).max()) if len(pts) else 0.0
    return max(floor, factor * spread)


def reach_gate(distance: np.ndarray, radius: float) -> np.ndarray:
    """1 within ``radius`` mm, a Gaussian fall-off (sigma radius / 2) beyond (float32)."""
    excess = np.maximum(distance - radius, 0.0) / (0.5 * radius)
    return np.exp(-0.5 * excess * excess).astype(np.float32)
