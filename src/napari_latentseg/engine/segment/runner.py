"""Hypercolumn features of a volume, batch by batch, from a fitted VAE's encoder."""

from __future__ import annotations

import numpy as np

from ...models.checkpoint import VAEModel
from ...runtime.device import configure_threads, prefers_channels_last
from ..infer import _context_block, _slice_batches, normalizer_for, pad_to_multiple

__all__ = ["FeatureRunner", "to_rows", "slice_runs", "BATCH_VOXELS"]

BATCH_VOXELS = 1 << 19  # hypercolumns are ~120 channels: smaller batches than inference
_ENCODER_VOXELS = 1 << 17  # CPU encoder micro-batches


class FeatureRunner:
    """Computes hypercolumn features for batches of axial slices (2D) or slabs (3D)."""

    def __init__(self, model: VAEModel, volume: np.ndarray, modality: str | None) -> None:
        import torch

        from ..features import Hypercolumn

        configure_threads()
        self.torch = torch
        self.model = model
        self.cfg = model.config
        self.volume = volume
        self.norm, self.mask = normalizer_for(model, volume, modality)
        self.hyper = Hypercolumn(model.net, model.config.context_slices).to(model.device).eval()
        self.channels_last = prefers_channels_last(model.device, model.config.spatial_dims)
        if self.channels_last:
            model.net.to(memory_format=torch.channels_last)
        self.n_features = self.hyper.n_features
        self.device = model.device
        per = max(1, BATCH_VOXELS // int(np.prod(volume.shape[1:])))
        self.batches = _slice_batches(volume.shape[0], per)

    @property
    def volume_batches(self) -> list[np.ndarray]:
        """Slice batches covering the volume: a single batch of every slice for 3D models."""
        if self.cfg.spatial_dims == 3:
            return [np.arange(self.volume.shape[0])]
        return self.batches

    def close(self) -> None:
        """Give the model back its default memory layout."""
        if self.channels_last:
            self.model.net.to(memory_format=self.torch.contiguous_format)
            self.channels_last = False

    def _micro_batch(self) -> int:
        """Slices per encoder call: on CPU, micro-batches that stay in cache (512x512: one
        slice at a time is 1.5x faster per slice than four); elsewhere, all at once."""
        if self.cfg.spatial_dims == 3 or self.device.type != "cpu":
            return 1 << 30
        return max(1, _ENCODER_VOXELS // int(np.prod(self.volume.shape[1:])))

    def _padded_input(self, zs: np.ndarray):
        """(input block of slices ``zs`` on the device, padded for the encoder; its size)."""
        torch = self.torch
        x = torch.from_numpy(self.input_block(zs)).to(self.device)
        if self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        return pad_to_multiple(x, self.cfg.downsampling)

    def _encoder_pass(self, zs: np.ndarray, fn):
        """``fn`` (a map of the padded input block) on slices ``zs``, cropped, float, no grad,
        in micro-batches (:meth:`_micro_batch`)."""
        torch = self.torch

        def one(z: np.ndarray):
            x, spatial = self._padded_input(z)
            with torch.inference_mode():
                f = fn(x)
            return f[(slice(None), slice(None)) + tuple(slice(0, s) for s in spatial)].float()

        per = self._micro_batch()
        parts = [one(zs[i : i + per]) for i in range(0, len(zs), per)]
        return parts[0] if len(parts) == 1 else torch.cat(parts)

    def input_block(self, zs: np.ndarray) -> np.ndarray:
        if self.cfg.spatial_dims == 2:
            return _context_block(self.norm, self.volume, zs, self.cfg.context_slices)
        return self.norm(self.volume)[None, None]

    def compute(self, zs: np.ndarray):
        """Features (B, F, H, W) as a torch tensor on the model's device (no grad).

        Not cached: the forest keeps its own compact features (:mod:`.forest`), and a pass
        per encoder level (:meth:`compute_linear`) was faster than reading a big scan's
        hypercolumn back (lung2: 1.7 GB)."""
        return self._encoder_pass(zs, self.hyper)

    def head_logits(self, zs: np.ndarray, head):
        """The head's logits (B, n_classes, *spatial) on the device, no grad."""
        return self._encoder_pass(zs, lambda x: self.hyper.head_logits(x, head))

    def head_logits_at(self, zs: np.ndarray, head, mask: np.ndarray):
        """The head's logits (N, n_classes) at the voxels of ``mask`` (len(zs), *slice), in
        C order, on the device, no grad; 2D models. Only those voxels pass the head: the
        boundary band of a fine-tuning round (lung2: 29 s for every voxel of 61 slices)."""
        torch = self.torch
        per = self._micro_batch()
        parts = []
        for i in range(0, len(zs), per):
            at = np.nonzero(mask[i : i + per])
            if at[0].size == 0:
                continue
            x, _ = self._padded_input(zs[i : i + per])
            idx = tuple(torch.from_numpy(a).to(self.device) for a in at)
            with torch.inference_mode():
                parts.append(self.hyper.head_logits_at(x, head, idx).float())
        if not parts:
            return torch.zeros((0, head.net[-1].out_channels), device=self.device)
        return torch.cat(parts)

    def compute_linear(self, zs: np.ndarray, mean, std, weight, bias):
        """``weight @ ((features - mean) / std) + bias`` (B, K, *spatial) on the device, no
        grad, through :meth:`~napari_latentseg.engine.features.Hypercolumn.linear`, which
        never builds the hypercolumn at voxel resolution (lung2: 16 million voxels x 57
        channels)."""
        return self._encoder_pass(zs, lambda x: self.hyper.linear(x, mean, std, weight, bias))

    def compute_projected(self, zs: np.ndarray, pca):
        """Latent + encoder principal components (B, L + K, *spatial) on the device, no grad."""
        return self._encoder_pass(zs, lambda x: self.hyper.projected(x, *pca))


def to_rows(feats, spatial_dims: int):
    """(B, F, *spatial) -> (B * voxels, F) rows in C order of (B, *spatial)."""
    perm = (0, 2, 3, 1) if spatial_dims == 2 else (0, 2, 3, 4, 1)
    return feats.permute(*perm).reshape(-1, feats.shape[1])


def slice_runs(zs: np.ndarray) -> list[np.ndarray]:
    """Sorted slice indices split into runs of consecutive slices (batches must be contiguous)."""
    return np.split(zs, np.flatnonzero(np.diff(zs) != 1) + 1)
