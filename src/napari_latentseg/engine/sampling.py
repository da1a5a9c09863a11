"""Training data: normalised volumes, foreground-biased crops, light augmentation.

Crops are 2D slices along array axis 0 (optionally with neighbouring slices as channels) or 3D
patches. A few slices of every volume are held out (never sampled for training) so the fit can
be validated and benchmarked on slices it has not seen.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..models.config import ModelConfig
from .normalize import Normalizer, foreground_mask, guess_modality

__all__ = ["PreparedVolume", "prepare_volume", "holdout_slices", "CropSampler"]

_MAX_FG_POINTS = 200_000


@dataclass
class PreparedVolume:
    """A normalised volume with its foreground, ready for sampling."""

    data: np.ndarray  # float32, normalised, (z, y, x)
    mask: np.ndarray  # bool foreground
    normalizer: Normalizer
    modality: str
    fg_points: np.ndarray  # (n, 3) int32 foreground voxel indices (subsampled)
    train_slices: np.ndarray  # slice indices usable for training (axis 0)
    holdout: np.ndarray  # held-out slice indices


def holdout_slices(n_slices: int, every: int) -> np.ndarray:
    """Slices held out for validation: one in ``every``, centred; none for short stacks."""
    if every <= 1 or n_slices < 2 * every:
        return np.zeros(0, dtype=int)
    return np.arange(every // 2, n_slices, every)


def prepare_volume(
    volume: np.ndarray,
    modality: str | None = None,
    normalizer: Normalizer | None = None,
    holdout_every: int = 8,
    seed: int = 0,
) -> PreparedVolume:
    """Normalise ``volume`` and index its foreground.

    Parameters
    ----------
    volume : np.ndarray
        3D array (z, y, x); a 2D image is treated as one slice.
    modality : str, optional
        ``"CT"``/``"MR"`` from the file header; guessed from the values when missing.
    normalizer : Normalizer, optional
        Normalisation method to use (default: by modality).
    holdout_every : int
        Hold out one slice in this many for validation (0 disables).
    seed : int
        Seed for subsampling foreground points.
    """
    vol = np.asarray(volume)
    if vol.ndim == 2:
        vol = vol[None]
    if vol.ndim != 3:
        raise ValueError(f"expected a 2D or 3D array, got shape {vol.shape}")
    if not np.isfinite(vol[:: max(1, vol.shape[0] // 8)]).all():
        raise ValueError("the volume contains NaN or infinite values")
    mod = guess_modality(vol, modality)
    norm = normalizer if normalizer is not None else Normalizer.for_modality(mod)
    mask = foreground_mask(vol, "CT" if norm.method == "ct-window" else mod)
    norm = Normalizer.from_dict(norm.to_dict()).fit(vol, mask)
    data = norm(vol)
    held = holdout_slices(vol.shape[0], holdout_every)
    train = np.setdiff1d(np.arange(vol.shape[0]), held)
    fg = np.flatnonzero(mask[train].reshape(len(train), -1).any(axis=1))
    rng = np.random.default_rng(seed)
    keep = np.isin(np.arange(vol.shape[0]), train)
    pts = np.argwhere(mask & keep[:, None, None])
    if len(pts) > _MAX_FG_POINTS:
        pts = pts[rng.choice(len(pts), _MAX_FG_POINTS, replace=False)]
    if len(fg) == 0:
        pts = np.zeros((0, 3), dtype=np.int32)
    return PreparedVolume(data, mask, norm, mod, pts.astype(np.int32), train, held)


def _crop_bounds(centre: int, size: int, length: int) -> tuple[int, int]:
    start = int(np.clip(centre - size // 2, 0, max(0, length - size)))
    return start, start + size


def _pad_to(arr: np.ndarray, shape: tuple[int, ...], value: float) -> np.ndarray:
    pads = [(0, max(0, s - a)) for a, s in zip(arr.shape[-len(shape):], shape, strict=True)]
    if not any(p[1] for p in pads):
        return arr
    pads = [(0, 0)] * (arr.ndim - len(shape)) + pads
    return np.pad(arr, pads, mode="constant", constant_values=value)


class CropSampler:
    """Random crops for training, biased to the foreground.

    Parameters
    ----------
    volumes : list of PreparedVolume
        Data to sample from.
    config : ModelConfig
        Gives the crop geometry (2D / 2.5D / 3D) and size.
    foreground_fraction : float
        Probability that a crop is centred on a foreground voxel.
    augment : bool
        Random left-right flips and mild intensity scaling/shift.
    seed : int
        Seed of the sampler's random generator.
    """

    def __init__(
        self,
        volumes: list[PreparedVolume],
        config: ModelConfig,
        foreground_fraction: float = 0.9,
        augment: bool = True,
        seed: int = 0,
    ) -> None:
        if not volumes:
            raise ValueError("no volume to sample from")
        self.volumes = volumes
        self.config = config
        self.fg_fraction = foreground_fraction
        self.augment = augment
        self.rng = np.random.default_rng(seed)
        weights = np.array([len(v.train_slices) for v in volumes], dtype=float)
        if weights.sum() == 0:
            raise ValueError("every slice is held out; use more slices or holdout_every=0")
        self.weights = weights / weights.sum()

    def _pick(self) -> PreparedVolume:
        """The volume the next crop comes from (weighted by training slices)."""
        return self.volumes[self.rng.choice(len(self.volumes), p=self.weights)]

    def _centre(self, v: PreparedVolume) -> np.ndarray:
        if len(v.fg_points) and self.rng.random() < self.fg_fraction:
            return v.fg_points[self.rng.integers(len(v.fg_points))]
        z = int(self.rng.choice(v.train_slices))
        return np.array([z, self.rng.integers(v.data.shape[1]), self.rng.integers(v.data.shape[2])])

    def crop_at(self, v: PreparedVolume, centre: np.ndarray) -> np.ndarray:
        """The crop (channels first) centred at ``centre`` (z, y, x), padded where needed."""
        cfg = self.config
        data = v.data
        fill = float(data.min()) if data.size else 0.0
        if cfg.spatial_dims == 2:
            ph, pw = cfg.patch_size
            y0, y1 = _crop_bounds(int(centre[1]), ph, data.shape[1])
            x0, x1 = _crop_bounds(int(centre[2]), pw, data.shape[2])
            c = cfg.context_slices
            z = int(centre[0])
            zs = np.clip(np.arange(z - c, z + c + 1), 0, data.shape[0] - 1)
            crop = data[zs, y0:y1, x0:x1]
            return _pad_to(crop, (ph, pw), fill)
        pd, ph, pw = cfg.patch_size
        z0, z1 = _crop_bounds(int(centre[0]), pd, data.shape[0])
        y0, y1 = _crop_bounds(int(centre[1]), ph, data.shape[1])
        x0, x1 = _crop_bounds(int(centre[2]), pw, data.shape[2])
        return _pad_to(data[z0:z1, y0:y1, x0:x1], (pd, ph, pw), fill)[None]

    def sample(self, n: int | None = None) -> np.ndarray:
        """A batch ``(n, C, *patch)`` of float32 crops."""
        n = n or self.config.batch_size
        out = []
        for _ in range(n):
            v = self._pick()
            crop = self.crop_at(v, self._centre(v))
            if self.augment:
                if self.rng.random() < 0.5:
                    crop = crop[..., ::-1]
                if self.rng.random() < 0.5:
                    crop = crop * self.rng.uniform(0.9, 1.1) + self.rng.uniform(-0.05, 0.05)
            out.append(np.ascontiguousarray(crop, dtype=np.float32))
        return np.stack(out)

    def validation_batch(self, n: int, seed: int = 1234) -> np.ndarray:
        """Fixed crops from held-out slices (2D) or random places (3D) for validation."""
        rng = np.random.default_rng(seed)
        out = []
        for i in range(n):
            v = self.volumes[i % len(self.volumes)]
            out.append(self.validation_crop(v, rng))
        return np.stack(out)

    def validation_crop(self, v: PreparedVolume, rng: np.random.Generator) -> np.ndarray:
        """One validation crop of ``v``: on a held-out slice (2D), else around the foreground."""
        slices = v.holdout if (self.config.spatial_dims == 2 and len(v.holdout)) else None
        if slices is not None:
            z = int(rng.choice(slices))
            ys, xs = np.nonzero(v.mask[z])
            if len(ys):
                k = rng.integers(len(ys))
                centre = np.array([z, ys[k], xs[k]])
            else:
                centre = np.array([z, v.data.shape[1] // 2, v.data.shape[2] // 2])
        elif len(v.fg_points):
            centre = v.fg_points[rng.integers(len(v.fg_points))]
        else:
            centre = np.array(v.data.shape) // 2
        return np.ascontiguousarray(self.crop_at(v, centre), dtype=np.float32)
