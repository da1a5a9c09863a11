"""Masks of the anomaly maps (the head / body, CT bone, the depth inside the head) and the
coarser grid the contrast density scores a fine CT on."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

__all__ = ["head_mask", "bone_mask", "air_mask", "depth_map", "surface_fade", "voxel_size",
           "grid_factor", "to_coarse", "to_fine", "smooth", "BONE_HU", "BONE_ML", "METAL_HU",
           "AIR_HU"]

# CT bone: denser than this (HU) in a connected structure larger than this (mL).
BONE_HU = 300.0
BONE_ML = 5.0
# CT metal (denser than cortical bone, any size: skin markers, leads, clips), grown by
# METAL_GROW voxels (its blur and streaks).
METAL_HU = 2000.0
METAL_GROW = 2
# CT air inside the body (airways, bowel gas) is below this (HU); lung parenchyma is above.
AIR_HU = -900.0


def head_mask(volume: np.ndarray, modality: str | None = None) -> np.ndarray:
    """Head / body foreground with holes filled per slice (CT lungs and MR CSF are inside)."""
    from scipy import ndimage

    from .normalize import foreground_mask, guess_modality

    fg = foreground_mask(volume, guess_modality(volume, modality))
    if fg.ndim == 2:
        return ndimage.binary_fill_holes(fg)
    fg = ndimage.binary_opening(fg, np.ones((1, 3, 3), bool))
    return np.stack([ndimage.binary_fill_holes(s) for s in fg])


def bone_mask(volume: np.ndarray, spacing: Sequence[float] | None = None) -> np.ndarray:
    """CT bone and metal, which the anomaly score leaves out.

    Bone: voxels above :data:`BONE_HU` in connected structures larger than :data:`BONE_ML`
    mL, grown by one voxel (their edges); a calcified nodule (a few mL at most) is not bone
    by this rule. Metal: voxels above :data:`METAL_HU` of any size (a skin marker on lung1's
    back, 2577 HU, was its largest false positive), grown by :data:`METAL_GROW` voxels.
    """
    from scipy import ndimage

    v = np.asarray(volume)
    dense = v > BONE_HU
    if not dense.any():
        return dense
    lab, _ = ndimage.label(dense)
    sp = tuple(spacing) if spacing is not None else (1.0,) * v.ndim
    ml = np.bincount(lab.ravel()) * float(np.prod(sp[-v.ndim:])) / 1000.0
    ml[0] = 0.0
    big = (ml > BONE_ML)[lab]
    out = ndimage.binary_dilation(big, iterations=1) if big.any() else big
    metal = v > METAL_HU
    if metal.any():
        out |= ndimage.binary_dilation(metal, iterations=METAL_GROW)
    return out


def air_mask(volume: np.ndarray) -> np.ndarray:
    """CT air (below :data:`AIR_HU`): the trachea and gas in the bowel are dark holes in soft
    tissue, which a contrast score finds rare; lung nodules, ground glass included, are
    denser than lung."""
    return np.asarray(volume) < AIR_HU


def depth_map(mask: np.ndarray, spacing: Sequence[float] | None = None) -> np.ndarray:
    """In-plane distance (mm) of each voxel to the outside of the head, per slice.

    A position feature that needs no registration: scalp and skull are normal at depth 0,
    not 4 cm inside the head.
    """
    from scipy import ndimage

    sp = (1.0, 1.0) if spacing is None else tuple(float(s) for s in spacing[-2:])
    m = mask if mask.ndim == 3 else mask[None]
    out = np.stack([ndimage.distance_transform_edt(s, sampling=sp) for s in m])
    return out.astype(np.float32).reshape(mask.shape)


def surface_fade(mask: np.ndarray, spacing: Sequence[float] | None, inner_mm: float,
                 outer_mm: float) -> np.ndarray:
    """Weight 0 within ``inner_mm`` of the outside of ``mask`` (3D distance in mm), rising
    linearly to 1 at ``outer_mm`` and beyond (float32, 0 outside the mask).

    A cut through the head at the volume's first or last slice is not a surface: distances
    are to the mask's own outside within the array.
    """
    from scipy import ndimage

    if not 0 <= inner_mm < outer_mm:
        raise ValueError(f"expected 0 <= inner_mm < outer_mm, got {inner_mm}, {outer_mm}")
    m = np.asarray(mask, bool)
    d = ndimage.distance_transform_edt(m, sampling=voxel_size(m.ndim, spacing))
    return np.clip((d - inner_mm) / (outer_mm - inner_mm), 0.0, 1.0).astype(np.float32)


def voxel_size(ndim: int, spacing: Sequence[float] | None) -> np.ndarray:
    """Voxel size (mm) per axis of an ``ndim`` array, 1 where unknown: a 2D scan's in-plane
    spacing serves its one-slice volume too."""
    sp = np.ones(ndim)
    if spacing is not None:
        given = np.asarray(spacing, float)[-ndim:]
        sp[ndim - len(given):] = given
    return sp


def grid_factor(shape: Sequence[int], spacing: Sequence[float] | None,
                grid_mm: float | None) -> int:
    """In-plane factor that brings pixels of ``spacing`` to about ``grid_mm`` (1: as they are;
    also without a voxel size, or where fewer than 32 pixels a side would be left)."""
    if not grid_mm or spacing is None or len(shape) < 2:
        return 1
    f = int(round(float(grid_mm) / float(np.mean(np.asarray(spacing, float)[-2:]))))
    return max(1, min(f, min(shape[-2:]) // 32))


def to_coarse(vol: np.ndarray, spacing: Sequence[float], f: int
              ) -> tuple[np.ndarray, tuple[float, ...]]:
    """In-plane block means of ``f`` x ``f`` pixels (edges padded) and their voxel size;
    ``vol`` and ``spacing`` as they are for ``f`` = 1."""
    if f == 1:
        return vol, spacing
    z, y, x = vol.shape
    py, px = -y % f, -x % f
    v = np.pad(vol, ((0, 0), (0, py), (0, px)), mode="edge") if py or px else vol
    v = v.reshape(z, (y + py) // f, f, (x + px) // f, f).mean((2, 4), dtype=np.float32)
    sp = [float(s) for s in spacing]
    sp[-2:] = [sp[-2] * f, sp[-1] * f]
    return v.astype(np.float32, copy=False), tuple(sp)


def to_fine(coarse: np.ndarray, shape: Sequence[int], f: int) -> np.ndarray:
    """A map of :func:`to_coarse`'s grid back on the ``shape`` grid (linear, pixel centres
    aligned)."""
    from scipy import ndimage

    if f == 1:
        return coarse
    out = ndimage.zoom(coarse, (1, f, f), order=1, grid_mode=True, mode="nearest")
    return np.ascontiguousarray(out[:, : shape[-2], : shape[-1]])


def smooth(raw: np.ndarray, spatial_dims: int, sigma: float = 1.0, mm: float | None = None,
           spacing: Sequence[float] | None = None) -> np.ndarray:
    """Gaussian smoothing of a raw map: ``sigma`` voxels, or ``mm`` millimetres where the voxel
    size is known; in-plane only for 2D models."""
    from scipy import ndimage

    s = np.full(raw.ndim, float(sigma))
    if mm is not None and spacing is not None:
        s = float(mm) / voxel_size(raw.ndim, spacing)
    if spatial_dims == 2 and raw.ndim == 3:
        s[0] = 0.0
    return ndimage.gaussian_filter(raw, tuple(s))
