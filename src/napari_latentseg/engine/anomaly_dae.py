"""The ``dae`` anomaly score: a denoising autoencoder fitted on the scan itself.

Kascenas et al. (MIDL 2022) train a small UNet to remove *coarse* noise (Gaussian noise drawn
on a grid 8x coarser than the crop and upsampled) from healthy slices; at test time what it
"heals" is what it finds unusual. Here it is fitted on the scan being scored (self mode: a
lesion is a small part of it), and its residual ``|x - DAE(x)|`` inside the head is smoothed
and then centred and scaled per axial slice by the head's median and MAD: the end slices'
residuals are larger everywhere, and that normalisation is what lifted the prototype from
best Dice ~0.09 to ~0.3 on brain1's tumour (``docs/anomaly_benchmarks.md``, "Stabilising the
DAE"). What it shares with its mirror twin across the head's midline is then lowered
(:mod:`.anomaly_symmetry`). Measured on MR; on CT the ``intensity`` density is better. 2D
(slice) training, CPU or GPU: three cycles of 300 steps (:data:`DAE_CYCLES`; the second with
coarser noise, :data:`DAE_NOISE_RES`), 65 s for full-size brain1 on one CPU thread, fit
included. On a near-isotropic scan it reads slices of all three orientations, is fitted
three times (:data:`DAE_FITS_THIN`), and keeps what every reading finds
(:func:`.anomaly_residual.consensus`).
"""

from __future__ import annotations

import os
import threading
from collections.abc import Generator

import numpy as np

from ..runtime.device import configure_threads
from ..runtime.progress import check_stop
from .anomaly_residual import (
    SMOOTH_SIGMA,
    consensus,
    residual_score,
    slice_normalise,
    snapshot_score,
)

__all__ = ["dae_raw_iter", "dae_score_iter", "dae_stats_iter", "dae_suits", "fit_dae_iter",
           "fit_unet_iter", "nets_from_state", "nets_state", "noisy_batch", "residual_score",
           "planes", "slice_normalise", "snapshot_score", "z_sigma", "DAE_CYCLES",
           "DAE_FITS_THIN", "DAE_NOISE_RES", "DAE_STEPS", "DAE_STEPS_THIN", "PLANES",
           "SMOOTH_SIGMA", "THIN_SLICE_RATIO", "thick_slices"]

DAE_STEPS = 300  # AdamW steps (one-cycle schedule) per cycle; the benchmark's recipe
#: Self mode on a near-isotropic scan (:func:`planes`): fits of :data:`DAE_STEPS_THIN` steps
#: a cycle, seeds of their own; one fit's map swings with its seed there (session 41,
#: docs/anomaly_benchmarks.md, "Seeds and length on thin slices"). What all find is kept
#: (their voxel-wise minimum, session 43: averaged, a seed's own false findings passed).
#: Three fits, not two (session 44, "A third fit"): mean best Dice on six 1.2 mm heads
#: 0.285 -> 0.333, at 1.5x the fitting time.
DAE_FITS_THIN = 3
DAE_STEPS_THIN = 200
#: Coarse-noise cells per crop side in each one-cycle run of :data:`DAE_STEPS`, run back to
#: back, the score being the mean of each one's normalised residual (a snapshot ensemble,
#: session 26: the second cycle finds darker lesions the first misses; docs/
#: anomaly_benchmarks.md, "Two cycles of the denoiser"). The second cycle's noise is coarser
#: (cells of 24 mm, not 12), so it heals larger blobs of tissue-like intensity (session 29,
#: "A coarser grid for the second cycle"). A third cycle on the fine grid again (session
#: 33, "Which snapshots, and their weights"): +0.019 mean best Dice over twelve MR cases and
#: three seeds, twice the best baseline on 14 of 23 cases (13), at 1.3x the time.
DAE_NOISE_RES = (8, 4, 8)
DAE_CYCLES = len(DAE_NOISE_RES)
#: Environment variable that overrides :data:`DAE_STEPS` (fewer steps on a slow machine, or
#: tiny fits in tests that start worker processes).
STEPS_ENV = "LATENTSEG_DAE_STEPS"
_CROP = 64  # training crop side (voxels); inference runs on whole slices
_NOISE_RES = 8  # coarse-noise cells per crop side
_NOISE_STD = 0.2  # in units of the percentile-normalised intensity
_BATCH = 16
#: In-plane voxel size (mm) the recipe was measured at (brains at half resolution): finer
#: scans are block-averaged to it, so the coarse noise and the crop keep their size in mm.
TARGET_MM = 1.5
#: Slices at most this many times the in-plane voxel apart are thin: the residual is smoothed
#: across them too, at :data:`SMOOTH_SIGMA`'s width in mm, 3 mm at most (session 40: a
#: synthetic 1.2 mm head with eight grey-matter-intensity spheres in its white matter;
#: docs/anomaly_benchmarks.md, "Thin slices"). Thicker slices hold other anatomy a slice
#: away and are left alone.
THIN_SLICE_RATIO = 2.0
#: Axis orders of the slices the denoiser reads on a near-isotropic scan (:func:`planes`):
#: axial, coronal and sagittal, one network fitted on all three (session 40, "Thin slices").
PLANES = ((0, 1, 2), (1, 0, 2), (2, 0, 1))


def _unet():
    """A 3-level 2D UNet (16-32-64 channels) that predicts the noise: ``x - net(x)``."""
    import torch
    from torch import nn

    def block(i: int, o: int) -> nn.Module:
        return nn.Sequential(nn.Conv2d(i, o, 3, padding=1), nn.GroupNorm(4, o), nn.SiLU(),
                             nn.Conv2d(o, o, 3, padding=1), nn.GroupNorm(4, o), nn.SiLU())

    ch = (16, 32, 64)

    class UNet(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.down = nn.ModuleList()
            c_in = 1
            for c in ch:
                self.down.append(block(c_in, c))
                c_in = c
            self.mid = block(ch[-1], ch[-1])
            self.up = nn.ModuleList(block(2 * c, c2) for c, c2 in
                                    zip(ch[::-1], [*ch[::-1][1:], ch[0]], strict=True))
            self.out = nn.Conv2d(ch[0], 1, 1)

        def forward(self, x):
            skips = []
            h = x
            for d in self.down:
                h = d(h)
                skips.append(h)
                h = nn.functional.avg_pool2d(h, 2)
            h = self.mid(h)
            for u, s in zip(self.up, skips[::-1], strict=True):
                h = nn.functional.interpolate(h, scale_factor=2, mode="nearest")
                h = u(torch.cat([h, s], 1))
            # Residual form: identity is the starting point, so a few hundred CPU steps keep
            # the contrast (a direct output stayed blurred).
            return x - self.out(h)

    return UNet()


def _coarse_noise(n: int, size: int, mask, gen, res: int = _NOISE_RES,
                  std: float = _NOISE_STD):
    """Gaussian noise (std ``std``) drawn on a ``res`` x ``res`` grid per crop, upsampled."""
    import torch
    import torch.nn.functional as F

    g = torch.randn(n, 1, res, res, generator=gen) * std
    cell = max(1, size // res)
    # A random sub-cell shift: upsample a slightly larger grid and crop (no fixed lattice).
    up = F.interpolate(F.pad(g, (0, 1, 0, 1), mode="replicate"), size=(size + cell,) * 2,
                       mode="bilinear", align_corners=False)
    oy, ox = torch.randint(0, cell, (2,), generator=gen).tolist()
    return up[:, :, oy:oy + size, ox:ox + size] * mask


def noisy_batch(xs: np.ndarray, ms: np.ndarray, crop: int, batch: int,
                rng: np.random.Generator, gen, res: int = _NOISE_RES):
    """One training batch: random ``crop``-sized in-plane crops of the slices ``xs`` (and their
    head masks ``ms``), and the crops with coarse noise (``res`` cells per side) added inside
    the head; torch tensors (noisy, clean, mask) of shape (batch, 1, crop, crop)."""
    import torch

    h, w = xs.shape[1:]
    i = rng.integers(len(xs), size=batch)
    oy = rng.integers(0, h - crop + 1, size=batch)
    ox = rng.integers(0, w - crop + 1, size=batch)
    xb = np.stack([xs[a, b:b + crop, c:c + crop] for a, b, c in zip(i, oy, ox, strict=True)])
    mb = np.stack([ms[a, b:b + crop, c:c + crop] for a, b, c in zip(i, oy, ox, strict=True)])
    xb, mb = torch.from_numpy(xb)[:, None], torch.from_numpy(mb)[:, None]
    return xb + _coarse_noise(batch, crop, mb, gen, res=res), xb, mb


def _block_mean(a: np.ndarray, f: int) -> np.ndarray:
    """In-plane f x f block means (edges padded to a multiple of f)."""
    z, h, w = a.shape
    a = np.pad(a.astype(np.float32), ((0, 0), (0, (-h) % f), (0, (-w) % f)), mode="edge")
    return a.reshape(z, a.shape[1] // f, f, a.shape[2] // f, f).mean((2, 4))


def dae_suits(volume: np.ndarray, modality: str | None = None) -> bool:
    """Whether the denoiser is the default score of a scan against itself: MR (header, else
    intensities) with slices of at least 32 x 32 voxels. It was the best method on every MR
    case measured (docs/anomaly_benchmarks.md); on CT the contrast density wins."""
    from .normalize import guess_modality

    v = np.asarray(volume)
    if v.ndim not in (2, 3) or min(v.shape[-2:]) < 32:
        return False
    return guess_modality(v if v.ndim == 3 else v[None], modality) == "MR"


def fit_unet_iter(steps: int, loss_of, *, seed: int = 0, device: str = "cpu",
                  stop_event: threading.Event | None = None,
                  stage: str = "anomaly: denoiser", cycles: int = 1,
                  snapshots: list | None = None) -> Generator[dict, None, object]:
    """Fit the 3-level UNet with the recipe's optimiser (AdamW, one-cycle at 2e-3).

    ``loss_of(net, rng, gen, cycle)`` returns one batch's loss in cycle ``cycle`` (0-based);
    ``rng`` (numpy) and ``gen`` (torch) are seeded with ``seed``, as are the weights. With
    ``cycles`` > 1 the one-cycle schedule of ``steps`` steps runs again from the weights the
    last one ended with (a fresh optimiser), and a copy of the network at the end of each
    cycle (eval mode) is appended to ``snapshots`` where given. Yields progress before the
    first step and after every step (the loss read every 10 steps: that waits for a GPU),
    so that a caller holding the fit between steps (the dock, while the user's round runs)
    holds it within a step; returns the network in eval mode.
    """
    import copy

    import torch

    # Model-free scores reach here without the VAE's set-up: without it $LATENTSEG_NUM_THREADS
    # (batch workers, side-by-side runs) was ignored and processes fought over the cores.
    configure_threads()
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    gen = torch.Generator().manual_seed(seed)
    net = _unet().to(device)
    total = steps * cycles
    yield {"stage": stage, "done": 0, "total": total}
    for cycle in range(cycles):
        net.train()
        opt = torch.optim.AdamW(net.parameters(), lr=2e-3, weight_decay=1e-4)
        sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=2e-3, total_steps=steps)
        for step in range(steps):
            check_stop(stop_event, "anomaly scoring")
            loss = loss_of(net, rng, gen, cycle)
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
            if step % 10 == 0 or step == steps - 1:
                last_loss = float(loss.detach())
            yield {"stage": stage, "done": cycle * steps + step + 1, "total": total,
                   "loss": last_loss}
        net.eval()
        if snapshots is not None:
            snapshots.append(copy.deepcopy(net))
    return net


def _steps(steps: int | None, thin: bool = False) -> int:
    """Steps per cycle: ``steps``, else ``$LATENTSEG_DAE_STEPS``, else :data:`DAE_STEPS`
    (:data:`DAE_STEPS_THIN` for self mode on a near-isotropic scan: ``thin``)."""
    if steps is None:
        env = os.environ.get(STEPS_ENV, "").strip()
        if env and not env.isdigit():
            raise ValueError(f"{STEPS_ENV} must be a whole number of steps, got {env!r}")
        steps = int(env) if env else DAE_STEPS_THIN if thin else DAE_STEPS
    if steps < 1:
        raise ValueError(f"the denoiser needs at least 1 training step, got {steps}")
    return steps


def _grid(x: np.ndarray, mask: np.ndarray, spacing):
    """(x, mask, spacing, f) on the denoiser's grid: in-plane voxels finer than
    :data:`TARGET_MM` block-averaged by ``f``, so noise and crops keep their size in mm."""
    f = 1
    if spacing is not None and min(spacing[-2:]) > 0:
        f = max(1, int(round(TARGET_MM / float(min(spacing[-2:])))))
    if f == 1:
        return x, mask, spacing, 1
    coarse = (*spacing[:-2], spacing[-2] * f, spacing[-1] * f)
    return _block_mean(x, f), _block_mean(mask, f) >= 0.5, coarse, f


def fit_dae_iter(scans, *, steps: int | None = None, seed: int = 0, device: str = "cpu",
                 stop_event: threading.Event | None = None,
                 stage: str = "anomaly: denoiser") -> Generator[dict, None, list]:
    """Fit the denoiser on the head slices of one or more scans; returns its snapshots.

    ``scans``: (percentile-normalised volume (z, y, x), head mask, voxel size or None)
    triples, all held at once (the batches draw from every scan). One scan is self mode;
    several are a normative cohort (each batch from one scan, drawn at random); a
    near-isotropic scan (:func:`planes`) gives its slices in all three orientations. Returns
    one network (eval mode) per cycle of :data:`DAE_NOISE_RES`.
    """
    steps = _steps(steps)
    data = []
    oriented = [_oriented(x, m, sp, order) for x, m, sp in scans
                for order in planes(sp, np.shape(x))]
    for x, mask, spacing in oriented:
        x, mask, _, _ = _grid(x, mask, spacing)
        keep = mask.reshape(len(mask), -1).mean(1) > 0.05  # slices with some head
        if not keep.any():
            raise ValueError("the dae anomaly score found no head voxels to learn from")
        data.append((np.ascontiguousarray(x[keep], dtype=np.float32),
                     np.ascontiguousarray(mask[keep], dtype=np.float32)))
    if not data:
        raise ValueError("the denoiser needs at least one scan to learn from")
    h, w = min(d[0].shape[1] for d in data), min(d[0].shape[2] for d in data)
    crop = min(_CROP, h - h % 8, w - w % 8)
    if crop < 8:
        raise ValueError(f"the dae anomaly score needs slices of at least 8 x 8 voxels, got "
                         f"{h} x {w}")

    def loss_of(net, rng, gen, cycle):
        # One scan draws nothing extra, so self mode keeps its random stream.
        xs, ms = data[0] if len(data) == 1 else data[int(rng.integers(len(data)))]
        noisy, xb, mb = (t.to(device) for t in noisy_batch(xs, ms, crop, _BATCH, rng, gen,
                                                           res=DAE_NOISE_RES[cycle]))
        return (((net(noisy) - xb) ** 2) * mb).sum() / mb.sum().clamp(min=1)

    nets: list = []
    yield from fit_unet_iter(steps, loss_of, seed=seed, device=device, stop_event=stop_event,
                             stage=stage, cycles=len(DAE_NOISE_RES),
                             snapshots=nets)
    return nets


def planes(spacing, shape: tuple) -> tuple:
    """The axis orders (:data:`PLANES`) the denoiser reads a scan of voxel size ``spacing``
    and ``shape`` in: all three where no side of a voxel is over :data:`THIN_SLICE_RATIO` x
    another (a 1 mm T1) and every axis has 32 voxels or more (as :func:`dae_suits` asks of
    axial slices), else the axial slices alone."""
    sp = [] if spacing is None else [float(v) for v in spacing]
    if len(sp) != 3 or len(shape) != 3 or min(shape) < 32 or min(sp) <= 0 \
            or max(sp) > THIN_SLICE_RATIO * min(sp):
        return PLANES[:1]
    return PLANES


def _oriented(x: np.ndarray, mask: np.ndarray, spacing, order: tuple):
    """(x, mask, spacing) with the axes in ``order`` (slices along the first)."""
    if tuple(order) == PLANES[0]:
        return x, mask, spacing
    return (np.ascontiguousarray(np.transpose(x, order)),
            np.ascontiguousarray(np.transpose(mask, order)),
            tuple(float(spacing[i]) for i in order))


def dae_score_iter(nets, x: np.ndarray, mask: np.ndarray, *, spacing=None,
                   device: str = "cpu", lower_symmetric: bool = True, agree: bool = False,
                   stop_event: threading.Event | None = None) -> Generator[dict, None, np.ndarray]:
    """The normalised residual of ``x`` (see :func:`dae_raw_iter`) under fitted snapshots
    ``nets``, on the scan's grid: read in axial slices, or on a near-isotropic scan
    (:func:`planes`) in slices of all three orientations, normalised per axial slice.

    The orientations' scores are summed, or with ``agree`` a finding must stand out in each
    (:func:`.anomaly_residual.consensus`). Self mode agrees; a normative fit sums (session 43:
    agreeing, its mean best Dice on the four 1.2 mm heads fell 0.300 -> 0.293).
    """
    configure_threads()  # as in fit_unet_iter: a normative score fits nothing first
    orders = planes(spacing, x.shape)
    if len(orders) == 1:
        return (yield from _plane_score(nets, x, mask, spacing, device, lower_symmetric,
                                        stop_event))
    scores = []
    for order, name in zip(orders, ("axial", "coronal", "sagittal"), strict=True):
        xo, mo, so = _oriented(x, mask, spacing, order)
        s = yield from _plane_score(nets, xo, mo, so, device, False, stop_event,
                                    f"anomaly: denoise ({name} slices)")
        scores.append(np.transpose(s, np.argsort(order)))
    total = slice_normalise(consensus(scores) if agree else np.sum(scores, axis=0), mask)
    if lower_symmetric:
        total = yield from _lower_symmetric(total, x, mask, spacing)
    return total


def _lower_symmetric(score, x, mask, spacing):
    """:func:`.anomaly_symmetry.lower_bilateral`, reported as a stage."""
    from .anomaly_symmetry import lower_bilateral

    yield {"stage": "anomaly: symmetry", "done": 0, "total": 1}
    return lower_bilateral(score, x, mask, spacing)


def _plane_score(nets, x, mask, spacing, device, lower_symmetric, stop_event,
                 stage: str = "anomaly: denoise"):
    """:func:`dae_score_iter` of slices along the first axis (progress as ``stage``)."""
    import torch
    from scipy import ndimage

    full = x.shape
    x, mask, spacing, f = _grid(x, mask, spacing)
    z, h, w = x.shape
    if min(h, w) < 8:
        raise ValueError(f"the dae anomaly score needs slices of at least 8 x 8 voxels, got "
                         f"{h} x {w}")
    ph, pw = (-h) % 8, (-w) % 8
    xt = torch.from_numpy(np.pad(x.astype(np.float32), ((0, 0), (0, ph), (0, pw)),
                                 mode="edge"))[:, None]
    outs = []
    for i, net in enumerate(nets):
        out = np.empty_like(x, dtype=np.float32)
        with torch.no_grad():
            for k in range(0, z, 8):
                check_stop(stop_event, "anomaly scoring")
                out[k:k + 8] = net(xt[k:k + 8].to(device))[:, 0, :h, :w].cpu().numpy()
                yield {"stage": stage, "done": i * z + min(k + 8, z), "total": len(nets) * z}
        outs.append(out)
    score = residual_score(x, outs, mask, z_sigma(spacing))
    if lower_symmetric:
        score = yield from _lower_symmetric(score, x, mask, spacing)
    if f > 1:
        score = np.repeat(np.repeat(score, f, axis=1), f, axis=2)[:, : full[1], : full[2]]
        score = ndimage.gaussian_filter(score, (0, f / 2, f / 2)).astype(np.float32)
    return score


def nets_state(nets) -> list[dict]:
    """CPU copies of the snapshots' weights: what a model file stores for a normative
    denoiser (tensors only, so ``torch.load(weights_only=True)`` reads them)."""
    return [{k: v.detach().to("cpu").clone() for k, v in n.state_dict().items()} for n in nets]


def nets_from_state(states, device: str = "cpu") -> list:
    """The snapshots back from :func:`nets_state` (eval mode, on ``device``)."""
    nets = []
    for st in states:
        net = _unet()
        try:
            net.load_state_dict(st)
        except (RuntimeError, KeyError, TypeError) as exc:
            raise ValueError(f"the stored denoiser does not fit this version's network: "
                             f"{str(exc).splitlines()[0]}") from None
        nets.append(net.to(device).eval())
    return nets


def dae_stats_iter(stats: dict, x: np.ndarray, mask: np.ndarray, *, spacing=None,
                   device: str = "cpu",
                   stop_event: threading.Event | None = None) -> Generator[dict, None, np.ndarray]:
    """The ``dae`` score of ``x`` as statistics ``stats`` say: with their stored snapshots
    (``"nets"``: a normative denoiser fitted on a cohort), else fitted on ``x`` itself."""
    sym = bool(stats.get("lower_symmetric", True))
    if stats.get("nets"):
        return (yield from dae_score_iter(nets_from_state(stats["nets"], device), x, mask,
                                          spacing=spacing, device=device, lower_symmetric=sym,
                                          stop_event=stop_event))
    return (yield from dae_raw_iter(x, mask, spacing=spacing, seed=stats.get("seed", 0),
                                    device=device, lower_symmetric=sym, stop_event=stop_event))


def dae_raw_iter(x: np.ndarray, mask: np.ndarray, *, spacing=None, steps: int | None = None,
                 seed: int = 0, device: str = "cpu", lower_symmetric: bool = True,
                 stop_event: threading.Event | None = None) -> Generator[dict, None, np.ndarray]:
    """Fit the denoiser on the slices of ``x`` and return its normalised residual.

    Parameters
    ----------
    x : np.ndarray
        (z, y, x) percentile-normalised volume.
    mask : np.ndarray
        Head mask of the same shape (training and normalisation use only these voxels).
    spacing : sequence of float, optional
        Voxel size (mm); in-plane voxels finer than :data:`TARGET_MM` are block-averaged to
        it for the denoiser and the score is brought back to the scan's grid.
    steps, seed, device
        Training steps of each of the :data:`DAE_CYCLES` cycles (default
        ``$LATENTSEG_DAE_STEPS``, else :data:`DAE_STEPS`; near-isotropic: :data:`DAE_FITS_THIN`
        fits of :data:`DAE_STEPS_THIN`, seeds ``seed``, ``seed + 1``...), seed, torch device.
    lower_symmetric : bool
        Lower what the score shares with its mirror twin across the head's mid-sagittal
        plane (:func:`.anomaly_symmetry.lower_bilateral`; only a symmetric enough scan).

    Returns
    -------
    np.ndarray
        Float32 map: each cycle's residual inside the head, smoothed in-plane
        (:data:`SMOOTH_SIGMA`) and normalised per slice; their mean normalised per slice
        again; on a near-isotropic scan what every orientation and every fit finds
        (:func:`.anomaly_residual.consensus`); findings mirrored on both sides lowered
        (``lower_symmetric``). Meaningful inside ``mask``.
    """
    fits = DAE_FITS_THIN if len(planes(spacing, np.shape(x))) > 1 else 1  # near-isotropic
    steps, scores = _steps(steps, thin=fits > 1), []
    for k in range(fits):
        stage = "anomaly: denoiser" + (f" (fit {k + 1} of {fits})" if fits > 1 else "")
        nets = yield from fit_dae_iter([(x, mask, spacing)], steps=steps, seed=seed + k,
                                       device=device, stop_event=stop_event, stage=stage)
        s = yield from dae_score_iter(nets, x, mask, spacing=spacing, device=device,
                                      lower_symmetric=lower_symmetric and fits == 1,
                                      agree=True, stop_event=stop_event)
        scores.append(s)
    if fits == 1:
        return scores[0]
    # What every fit finds (a seed's own false findings do not pass), on one scale again.
    total = slice_normalise(consensus(scores), mask)
    if lower_symmetric:
        total = yield from _lower_symmetric(total, x, mask, spacing)
    return total


def z_sigma(spacing) -> float:
    """The residual's Gaussian sigma across slices (voxels) on the denoiser's grid of voxel
    size ``spacing``: :data:`SMOOTH_SIGMA`'s width in mm on thin slices
    (:data:`THIN_SLICE_RATIO`), at most its width on the :data:`TARGET_MM` grid (3 mm; a
    coarse in-plane grid would blur a lesion a few slices thick away), else 0."""
    if spacing is None or len(spacing) < 3 or min(spacing) <= 0 or thick_slices(spacing):
        return 0.0
    inplane = float(min(spacing[-2:]))
    return SMOOTH_SIGMA * min(inplane, TARGET_MM) / float(spacing[0])


def thick_slices(spacing, flat: bool = False) -> bool:
    """Whether slices of voxel size ``spacing`` (z, y, x, mm) are thicker than
    :data:`THIN_SLICE_RATIO` times the in-plane voxel: the denoiser then reads each slice
    alone and nothing smooths its residual across them. False for a 2D image (``flat``)
    or without a valid voxel size."""
    if flat or spacing is None or len(spacing) < 3 or min(spacing) <= 0:
        return False
    return float(spacing[0]) > THIN_SLICE_RATIO * float(min(spacing[-2:]))
