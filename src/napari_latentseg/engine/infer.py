"""Whole-volume inference: reconstruction, error map, anomaly candidates, latent maps.

Volumes of any size are processed in bounded pieces: 2D models go through batches of slices
(slices larger than ``tile`` go through MONAI's Gaussian-weighted sliding window, which blends
seams away), 3D models through slabs along axis 0, each inferred by the sliding window with
overlapping margins that are cropped off. Only the outputs are allocated at full size, so a
512x512x400 CT stays within a few GB.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Generator
from dataclasses import dataclass, field

import numpy as np

from ..models.checkpoint import VAEModel
from ..models.config import ModelConfig
from ..runtime.device import autocast, configure_threads, prefers_channels_last, resolve_device
from ..runtime.progress import check_stop, drive
from .normalize import Normalizer, foreground_mask, guess_modality

__all__ = [
    "ReconstructionResult",
    "LatentResult",
    "reconstruct_iter",
    "reconstruct",
    "reconstruct_normalised",
    "encode_iter",
    "encode",
    "smooth_error",
    "detect_anomalies",
    "normalizer_for",
]

_CPU_BATCH_VOXELS = 1 << 20  # ~4 slices of 512^2 per batch on CPU
_GPU_BATCH_VOXELS = 1 << 23


@dataclass
class ReconstructionResult:
    """Outputs of :func:`reconstruct_iter`, all on the input's grid.

    Attributes
    ----------
    reconstruction : np.ndarray
        float32, in the input's intensity units; what the normalisation clips off (outside its
        range) is added back, so out-of-range intensities (vessels, fat, air) are not lost.
    error : np.ndarray
        float32 absolute error ``|x - recon|`` in normalised units (fraction of the scan's
        intensity range; comparable across scans).
    anomalies : np.ndarray or None
        Connected anomaly candidates labelled 1..n (uint16/uint32), 0 elsewhere.
    threshold : float or None
        Smoothed-error threshold used for the candidates.
    n_candidates : int
        Number of candidates.
    seconds : float
        Wall time.
    """

    reconstruction: np.ndarray
    error: np.ndarray
    anomalies: np.ndarray | None = None
    threshold: float | None = None
    n_candidates: int = 0
    seconds: float = 0.0
    info: dict = field(default_factory=dict)


@dataclass
class LatentResult:
    """Latent mean / sigma maps and their correspondence to voxels.

    Latent element ``mu[:, a, b, c]`` summarises the voxels around
    ``index = offset + scale * (a, b, c)`` of the input (array-axis order), so in world units a
    latent map overlays the image with ``scale * spacing`` and ``translate = origin + offset *
    spacing`` (napari layer ``scale``/``translate``).
    """

    mu: np.ndarray  # (C, *latent_grid) float32
    sigma: np.ndarray
    scale: tuple[float, ...]
    offset: tuple[float, ...]


def normalizer_for(model: VAEModel, volume: np.ndarray, modality: str | None = None):
    """The model's normalisation fitted to ``volume``, and the volume's foreground mask."""
    norm = Normalizer.from_dict(model.normalization or {"method": "percentile"})
    mod = "CT" if norm.method == "ct-window" else guess_modality(volume, modality)
    mask = foreground_mask(volume, mod)
    return norm.fit(volume, mask), mask


def smooth_error(error: np.ndarray, config: ModelConfig, sigma: float = 1.0) -> np.ndarray:
    """Gaussian-smoothed error (in-plane for 2D models, isotropic in voxels for 3D)."""
    from scipy import ndimage

    s = (0.0, sigma, sigma) if config.spatial_dims == 2 else (sigma,) * 3
    return ndimage.gaussian_filter(np.asarray(error, dtype=np.float32), s[-error.ndim:])


def detect_anomalies(candidates: np.ndarray, min_size: int = 10) -> tuple[np.ndarray, int]:
    """Label connected candidate voxels, dropping components smaller than ``min_size``."""
    from scipy import ndimage

    lab, n = ndimage.label(candidates)
    if n == 0:
        return np.zeros(candidates.shape, dtype=np.uint8), 0
    sizes = np.bincount(lab.ravel())
    keep = sizes >= min_size
    keep[0] = False
    new_ids = np.zeros(len(sizes), dtype=np.int64)
    new_ids[keep] = np.arange(1, keep.sum() + 1)
    n_keep = int(keep.sum())
    dtype = np.uint8 if n_keep < 256 else (np.uint16 if n_keep < 65536 else np.uint32)
    return new_ids[lab].astype(dtype), n_keep


class _Runner:
    """Runs the network on normalised numpy blocks, on the model's device."""

    def __init__(self, model: VAEModel, tile: int, batch_voxels: int | None) -> None:
        import torch

        configure_threads()
        self.torch = torch
        self.model = model
        self.cfg = model.config
        self.net = model.net.eval()
        self.device = model.device
        self.f = self.cfg.downsampling
        self.tile = max(self.f, tile - tile % self.f)
        default = _GPU_BATCH_VOXELS if self.device.type == "cuda" else _CPU_BATCH_VOXELS
        self.batch_voxels = batch_voxels or default
        self.channels_last = prefers_channels_last(self.device, self.cfg.spatial_dims)
        if self.channels_last:
            self.net = self.net.to(memory_format=torch.channels_last)

    def close(self) -> None:
        if self.channels_last:
            self.net.to(memory_format=self.torch.contiguous_format)

    def __call__(self, block: np.ndarray, fn: str = "reconstruct"):
        """Run ``net.reconstruct`` (or ``encode``) on a (B, C, *spatial) float32 block."""
        torch = self.torch
        x = torch.from_numpy(np.ascontiguousarray(block)).to(self.device)
        if self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        x, spatial = pad_to_multiple(x, self.f)
        with torch.inference_mode(), autocast(self.device):
            if fn == "encode":
                mu, sigma = self.net.encode(x)
                return mu.float().cpu().numpy(), sigma.float().cpu().numpy()
            # 3D always goes through patch-sized windows: whole-slab activations are GBs.
            big = self.cfg.spatial_dims == 3 or any(s > self.tile for s in x.shape[2:])
            if big:
                from monai.inferers import sliding_window_inference

                roi = tuple(min(self.tile, s) for s in x.shape[2:])
                if self.cfg.spatial_dims == 3:
                    roi = tuple(
                        min(p, s) for p, s in zip(self.cfg.patch_size, x.shape[2:], strict=True)
                    )
                y = sliding_window_inference(
                    x, roi, sw_batch_size=4, predictor=self.net.reconstruct, overlap=0.25,
                    mode="gaussian",
                )
            else:
                y = self.net.reconstruct(x)
        y = y.float()[(slice(None), slice(None)) + tuple(slice(0, s) for s in spatial)]
        return y.cpu().numpy()


def pad_to_multiple(x, f: int):
    """Pad a (B, C, *spatial) tensor's spatial dims to multiples of ``f`` (replicating edges).

    Returns the padded tensor and the original spatial shape (to crop results back).
    """
    import torch.nn.functional as F

    spatial = tuple(x.shape[2:])
    pads = []
    for s in reversed(spatial):
        pads += [0, (-s) % f]
    return (F.pad(x, pads, mode="replicate") if any(pads) else x), spatial


def _context_block(norm_fn, volume: np.ndarray, zs: np.ndarray, context: int) -> np.ndarray:
    """(B, 1 + 2c, H, W) normalised block for slices ``zs`` with their neighbours."""
    n = volume.shape[0]
    lo, hi = max(0, zs.min() - context), min(n, zs.max() + context + 1)
    slab = norm_fn(volume[lo:hi])
    out = np.empty((len(zs), 1 + 2 * context) + volume.shape[1:], dtype=np.float32)
    for i, z in enumerate(zs):
        idx = np.clip(np.arange(z - context, z + context + 1), 0, n - 1) - lo
        out[i] = slab[idx]
    return out


def _slice_batches(n: int, per_batch: int) -> list[np.ndarray]:
    return [np.arange(i, min(n, i + per_batch)) for i in range(0, n, per_batch)]


def _slab_ranges(n: int, depth: int, margin: int) -> list[tuple[int, int, int, int]]:
    """(read_start, read_end, write_start, write_end) slabs along axis 0 for 3D models."""
    out = []
    for w0 in range(0, n, depth):
        w1 = min(n, w0 + depth)
        out.append((max(0, w0 - margin), min(n, w1 + margin), w0, w1))
    return out


def reconstruct_iter(
    model: VAEModel,
    volume: np.ndarray,
    *,
    modality: str | None = None,
    anomalies: bool = True,
    tile: int = 512,
    batch_voxels: int | None = None,
    device: str | None = None,
    stop_event: threading.Event | None = None,
) -> Generator[dict, None, ReconstructionResult]:
    """Reconstruct a whole volume, yielding progress; returns a :class:`ReconstructionResult`.

    Parameters
    ----------
    model : VAEModel
        A fitted model.
    volume : np.ndarray
        2D or 3D array (z, y, x) in its own intensity units.
    modality : str, optional
        ``"CT"``/``"MR"`` from the header (used to find the foreground).
    anomalies : bool
        Also threshold the error into anomaly candidates.
    tile : int
        Largest in-plane size processed at once; larger slices use a blended sliding window.
    batch_voxels : int, optional
        Voxels per batch (default ~1M on CPU, ~8M on GPU).
    device : str, optional
        Move the model to this device first (``auto``, ``cpu``, ``cuda``...).
    stop_event : threading.Event, optional
        Set to cancel; raises :class:`~napari_latentseg.runtime.progress.Cancelled`.
    """
    t0 = time.perf_counter()
    vol = np.asarray(volume)
    squeeze = vol.ndim == 2
    if squeeze:
        vol = vol[None]
    if vol.ndim != 3:
        raise ValueError(f"expected a 2D or 3D array, got shape {volume.shape}")
    if model.config.spatial_dims == 3 and vol.shape[0] < 2:
        raise ValueError("a 3D model needs a 3D volume; this is a single slice")
    if device is not None:
        model.to(resolve_device(device))
    norm, mask = normalizer_for(model, vol, modality)
    cfg = model.config
    runner = _Runner(model, tile, batch_voxels)
    recon = np.empty(vol.shape, dtype=np.float32)
    error = np.empty(vol.shape, dtype=np.float32)
    thr = (model.anomaly or {}).get("threshold")
    do_anom = anomalies and thr is not None
    cand = np.zeros(vol.shape, dtype=bool) if do_anom else None
    try:
        if cfg.spatial_dims == 2:
            per_batch = max(1, runner.batch_voxels // int(np.prod(vol.shape[1:])))
            batches = _slice_batches(vol.shape[0], per_batch)
            for i, zs in enumerate(batches):
                check_stop(stop_event, "reconstruction")
                block = _context_block(norm, vol, zs, cfg.context_slices)
                c = cfg.context_slices
                x = block[:, c]
                y = runner(block)[:, 0]
                sl = slice(zs[0], zs[-1] + 1)
                recon[sl] = norm.inverse(y) + norm.out_of_range(vol[sl])
                err = np.abs(x - y)
                error[sl] = err
                if do_anom:
                    cand[sl] = (smooth_error(err, cfg) > thr) & mask[sl]
                yield {"stage": "reconstruct", "done": i + 1, "total": len(batches)}
        else:
            depth = cfg.patch_size[0] * 2
            slabs = _slab_ranges(vol.shape[0], depth, cfg.patch_size[0] // 2)
            for i, (r0, r1, w0, w1) in enumerate(slabs):
                check_stop(stop_event, "reconstruction")
                x = norm(vol[r0:r1])
                y = runner(x[None, None])[0, 0]
                y = y[w0 - r0 : w0 - r0 + (w1 - w0)]
                x = x[w0 - r0 : w0 - r0 + (w1 - w0)]
                recon[w0:w1] = norm.inverse(y) + norm.out_of_range(vol[w0:w1])
                error[w0:w1] = np.abs(x - y)
                yield {"stage": "reconstruct", "done": i + 1, "total": len(slabs)}
            if do_anom:
                cand = (smooth_error(error, cfg) > thr) & mask
    finally:
        runner.close()
    labels, n = (None, 0)
    if do_anom:
        yield {"stage": "anomalies", "done": 0, "total": 1}
        labels, n = detect_anomalies(cand, int(model.anomaly.get("min_size_voxels", 10)))
    if squeeze:
        recon, error = recon[0], error[0]
        labels = labels[0] if labels is not None else None
    return ReconstructionResult(
        recon, error, labels, thr if do_anom else None, n, time.perf_counter() - t0,
        info={"device": str(model.device), "normalization": norm.to_dict()},
    )


def reconstruct(model: VAEModel, volume: np.ndarray, *, progress: Callable | None = None,
                **kwargs) -> ReconstructionResult:
    """Blocking version of :func:`reconstruct_iter`."""
    return drive(reconstruct_iter(model, volume, **kwargs), progress)


def reconstruct_normalised(model: VAEModel, data: np.ndarray) -> np.ndarray:
    """Reconstruct an already normalised (z, y, x) array; returns normalised values."""
    cfg = model.config
    runner = _Runner(model, 512, None)
    try:
        if cfg.spatial_dims == 3:
            return runner(data[None, None].astype(np.float32))[0, 0]
        out = np.empty(data.shape, dtype=np.float32)
        per_batch = max(1, runner.batch_voxels // int(np.prod(data.shape[1:])))
        for zs in _slice_batches(data.shape[0], per_batch):
            block = _context_block(lambda a: a.astype(np.float32), data, zs, cfg.context_slices)
            out[zs[0] : zs[-1] + 1] = runner(block)[:, 0]
        return out
    finally:
        runner.close()


def encode_iter(
    model: VAEModel,
    volume: np.ndarray,
    *,
    modality: str | None = None,
    stop_event: threading.Event | None = None,
) -> Generator[dict, None, LatentResult]:
    """Encode a volume to latent mean / sigma maps (mean decoding's input)."""
    vol = np.asarray(volume)
    if vol.ndim == 2:
        vol = vol[None]
    norm, _ = normalizer_for(model, vol, modality)
    cfg = model.config
    f = cfg.downsampling
    runner = _Runner(model, 1 << 30, None)
    try:
        if cfg.spatial_dims == 2:
            per_batch = max(1, runner.batch_voxels // int(np.prod(vol.shape[1:])))
            batches = _slice_batches(vol.shape[0], per_batch)
            mus, sigmas = [], []
            for i, zs in enumerate(batches):
                check_stop(stop_event, "encoding")
                mu, sg = runner(_context_block(norm, vol, zs, cfg.context_slices), "encode")
                mus.append(mu)
                sigmas.append(sg)
                yield {"stage": "encode", "done": i + 1, "total": len(batches)}
            mu = np.concatenate(mus).transpose(1, 0, 2, 3)
            sigma = np.concatenate(sigmas).transpose(1, 0, 2, 3)
            scale = (1.0, float(f), float(f))
            offset = (0.0, (f - 1) / 2, (f - 1) / 2)
        else:
            mu, sigma = runner(norm(vol)[None, None], "encode")
            mu, sigma = mu[0], sigma[0]
            yield {"stage": "encode", "done": 1, "total": 1}
            scale = (float(f),) * 3
            offset = ((f - 1) / 2,) * 3
    finally:
        runner.close()
    return LatentResult(mu, sigma, scale, offset)


def encode(model: VAEModel, volume: np.ndarray, *, progress: Callable | None = None,
           **kwargs) -> LatentResult:
    """Blocking version of :func:`encode_iter`."""
    return drive(encode_iter(model, volume, **kwargs), progress)
