"""Probe: the denoiser with context across slices on ``phantom1mm-tissue`` (session 41: loses).

In the three-plane map of the 1.2 mm phantom the tips of grey-matter folds reaching into the
white matter light up as much as the implanted grey-matter spheres; only context across
slices tells a fold (a sheet) from a sphere. Two ways of giving the denoiser that context,
each in place of the engine's self-mode ``dae`` score (``anomaly.dae_stats_iter``) so the
calibration, candidates and metrics are the product's own:

- ``2.5d:K``: the three-plane denoiser with 2K+1 neighbouring slices as input channels
  (clamped at the ends) and the centre slice as output; one coarse-noise field per stack,
  since a lesion spans slices too.
- ``3d``: a 3-level 3D UNet (16-32-64 channels) on 32-voxel cubes centred in the head,
  4 cubes a batch, 3D coarse noise with the engine's cells (8 voxels, then 16, then 8),
  three one-cycle runs of the engine's 300 steps; one residual over the whole volume.

Usage (one thread, two processes at most on the 2-core machine)::

    LATENTSEG_NUM_THREADS=1 python benchmarks/_dae_context.py 3d 0 1

One JSON line per seed (phantom and implant seed, as ``bench_anomaly``'s case at seed 0);
about 210 s a map for 2.5D and 420 s for 3D on one thread.
"""

from __future__ import annotations

import contextlib
import json
import sys
import time

import numpy as np


def _net2d(in_ch: int):
    """The engine's 3-level UNet with ``in_ch`` input slices; the centre one is denoised."""
    import torch
    from torch import nn

    def block(i, o):
        return nn.Sequential(nn.Conv2d(i, o, 3, padding=1), nn.GroupNorm(4, o), nn.SiLU(),
                             nn.Conv2d(o, o, 3, padding=1), nn.GroupNorm(4, o), nn.SiLU())

    return _UNet(block, (16, 32, 64), in_ch, nn, torch, 2)


def _net3d():
    """The same UNet in 3D (one input volume)."""
    import torch
    from torch import nn

    def block(i, o):
        return nn.Sequential(nn.Conv3d(i, o, 3, padding=1), nn.GroupNorm(4, o), nn.SiLU(),
                             nn.Conv3d(o, o, 3, padding=1), nn.GroupNorm(4, o), nn.SiLU())

    return _UNet(block, (16, 32, 64), 1, nn, torch, 3)


def _UNet(block, ch, in_ch, nn, torch, dims):  # noqa: N802 - a class factory
    pool = nn.functional.avg_pool2d if dims == 2 else nn.functional.avg_pool3d
    conv = nn.Conv2d if dims == 2 else nn.Conv3d

    class UNet(nn.Module):
        def __init__(self):
            super().__init__()
            self.in_ch, self.down, c_in = in_ch, nn.ModuleList(), in_ch
            for c in ch:
                self.down.append(block(c_in, c))
                c_in = c
            self.mid = block(ch[-1], ch[-1])
            self.up = nn.ModuleList(block(2 * c, c2) for c, c2 in
                                    zip(ch[::-1], [*ch[::-1][1:], ch[0]], strict=True))
            self.out = conv(ch[0], 1, 1)

        def forward(self, x):
            skips, h = [], x
            for d in self.down:
                h = d(h)
                skips.append(h)
                h = pool(h, 2)
            h = self.mid(h)
            for u, s in zip(self.up, skips[::-1], strict=True):
                h = u(torch.cat([nn.functional.interpolate(h, scale_factor=2), s], 1))
            k = self.in_ch // 2
            return x[:, k:k + 1] - self.out(h)

    return UNet()


def stack_stats_iter(K: int):
    """The engine's three-plane self-mode score with 2K+1 slices as input."""
    import torch

    import napari_latentseg.engine.anomaly_dae as D
    from napari_latentseg.engine.anomaly_symmetry import lower_bilateral

    def score_iter(stats, x, mask, *, spacing=None, device="cpu", stop_event=None, **kw):
        data, views = [], []
        for order in D.planes(spacing, x.shape):
            xo, mo, so = D._oriented(x, mask, spacing, order)
            xg, mg, sg, f = D._grid(xo, mo, so)
            keep = np.flatnonzero(mg.reshape(len(mg), -1).mean(1) > 0.05)
            offs = np.arange(-K, K + 1) * f
            data.append((xg.astype(np.float32), mg.astype(np.float32), offs, keep))
            views.append((order, xg, mg, sg, f, xo.shape))
        h = min(d[0].shape[1] for d in data)
        w = min(d[0].shape[2] for d in data)
        crop = min(D._CROP, h - h % 8, w - w % 8)

        def loss_of(net, rng, gen, cycle):
            xs, ms, offs, idx = data[0] if len(data) == 1 else data[int(rng.integers(len(data)))]
            z = len(xs)
            i = idx[rng.integers(len(idx), size=D._BATCH)]
            oy = rng.integers(0, xs.shape[1] - crop + 1, size=D._BATCH)
            ox = rng.integers(0, xs.shape[2] - crop + 1, size=D._BATCH)
            ks = np.clip(i[:, None] + offs[None], 0, z - 1)
            xb = torch.from_numpy(np.stack([xs[k, b:b + crop, c:c + crop]
                                            for k, b, c in zip(ks, oy, ox, strict=True)]))
            mb = torch.from_numpy(np.stack([ms[k, b:b + crop, c:c + crop]
                                            for k, b, c in zip(ks, oy, ox, strict=True)]))
            noisy = xb + D._coarse_noise(D._BATCH, crop, mb, gen, res=D.DAE_NOISE_RES[cycle])
            t, m = xb[:, K:K + 1], mb[:, K:K + 1]
            return (((net(noisy) - t) ** 2) * m).sum() / m.sum().clamp(min=1)

        nets: list = []
        engine_unet, D._unet = D._unet, lambda: _net2d(2 * K + 1)
        try:
            yield from D.fit_unet_iter(D._steps(None), loss_of, seed=stats.get("seed", 0),
                                       cycles=D.DAE_CYCLES, snapshots=nets)
        finally:
            D._unet = engine_unet
        total = np.zeros(x.shape, np.float32)
        for order, xg, mg, sg, f, shape in views:
            z = len(xg)
            ph, pw = (-xg.shape[1]) % 8, (-xg.shape[2]) % 8
            xt = torch.from_numpy(np.pad(xg, ((0, 0), (0, ph), (0, pw)), mode="edge"))
            offs = np.arange(-K, K + 1) * f
            outs = []
            for net in nets:
                out = np.empty_like(xg)
                with torch.no_grad():
                    for k in range(0, z, 8):
                        ks = np.clip(np.arange(k, min(k + 8, z))[:, None] + offs[None], 0, z - 1)
                        out[k:k + 8] = net(xt[torch.from_numpy(ks)])[:, 0, :xg.shape[1],
                                                                      :xg.shape[2]].numpy()
                outs.append(out)
            s = D.residual_score(xg, outs, mg, D.z_sigma(sg))
            if f > 1:
                from scipy import ndimage
                s = np.repeat(np.repeat(s, f, 1), f, 2)[:, :shape[1], :shape[2]]
                s = ndimage.gaussian_filter(s, (0, f / 2, f / 2)).astype(np.float32)
            total += np.transpose(s, np.argsort(order))
        total = D.slice_normalise(total, mask)
        return lower_bilateral(total, x, mask, spacing)

    return score_iter


def cube_stats_iter(stats, x, mask, *, spacing=None, device="cpu", stop_event=None, **kw):
    """The 3D denoiser's self-mode score (module docstring)."""
    import torch
    import torch.nn.functional as F

    import napari_latentseg.engine.anomaly_dae as D
    from napari_latentseg.engine.anomaly_symmetry import lower_bilateral

    crop, batch, res = 32, 4, tuple(r // 2 for r in D.DAE_NOISE_RES)  # cells of 8/16 voxels
    xg, mg, sg, f = D._grid(x, mask, spacing)
    assert f == 1, "the probe runs on scans at TARGET_MM or coarser"
    Z, H, W = xg.shape
    pad = [(0, max(0, crop - s)) for s in xg.shape]
    xp = np.pad(xg.astype(np.float32), pad, mode="edge")
    mp = np.pad(mg.astype(np.float32), pad)
    centres = np.argwhere(mp > 0.5)
    hi = np.array(xp.shape) - crop

    def loss_of(net, rng, gen, cycle):
        lo = np.clip(centres[rng.integers(len(centres), size=batch)] - crop // 2, 0, hi)
        xb = torch.from_numpy(np.stack([xp[a:a + crop, b:b + crop, c:c + crop]
                                        for a, b, c in lo])[:, None])
        mb = torch.from_numpy(np.stack([mp[a:a + crop, b:b + crop, c:c + crop]
                                        for a, b, c in lo])[:, None])
        r = res[cycle]
        g = torch.randn(batch, 1, r, r, r, generator=gen) * D._NOISE_STD
        cell = crop // r
        up = F.interpolate(F.pad(g, (0, 1) * 3, mode="replicate"), size=(crop + cell,) * 3,
                           mode="trilinear", align_corners=False)
        o = torch.randint(0, cell, (3,), generator=gen).tolist()
        noisy = xb + up[:, :, o[0]:o[0] + crop, o[1]:o[1] + crop, o[2]:o[2] + crop] * mb
        return (((net(noisy) - xb) ** 2) * mb).sum() / mb.sum().clamp(min=1)

    nets: list = []
    engine_unet, D._unet = D._unet, _net3d
    try:
        yield from D.fit_unet_iter(D._steps(None), loss_of, seed=stats.get("seed", 0),
                                   cycles=D.DAE_CYCLES, snapshots=nets)
    finally:
        D._unet = engine_unet
    xt = torch.from_numpy(np.pad(xp, [(0, (-s) % 8) for s in xp.shape], mode="edge"))
    with torch.no_grad():
        outs = [n(xt[None, None])[0, 0, :Z, :H, :W].numpy() for n in nets]
    score = D.residual_score(xg, outs, mg, D.z_sigma(sg))
    return lower_bilateral(score, xg, mg, sg)


@contextlib.contextmanager
def patched(variant: str):
    """The engine's self-mode ``dae`` score replaced by ``variant`` (``2.5d:K`` or ``3d``)
    while the block runs."""
    import napari_latentseg.engine.anomaly as A

    engine = A.dae_stats_iter
    A.dae_stats_iter = cube_stats_iter if variant == "3d" else \
        stack_stats_iter(int(variant.split(":")[1]))
    try:
        yield
    finally:
        A.dae_stats_iter = engine


def main(argv: list[str]) -> None:
    """``VARIANT SEED...``: one JSON line per seed."""
    sys.path.insert(0, str(__import__("pathlib").Path(__file__).resolve().parent))
    from _anomaly_cases import thin_phantom_case
    from _anomaly_metrics import curve_metrics, dice
    from scipy import ndimage

    import napari_latentseg.engine.anomaly as A

    variant, seeds = argv[0], [int(s) for s in argv[1:]] or [0]
    for seed in seeds:
        c, _ = thin_phantom_case(seed)
        head = A.head_mask(c["v"], "MR")
        t = time.perf_counter()
        with patched(variant):
            res = A.anomaly_map(None, c["v"], modality="MR", spacing=c["sp"], error_map=False)
        best, ap = curve_metrics(res.score, c["truth"], head)
        far = head & ~ndimage.binary_dilation(c["truth"], iterations=20)
        print(json.dumps({"variant": variant, "seed": seed, "best_dice": best, "auprc": ap,
                          "dice_thr": dice(res.labels > 0, c["truth"] & head),
                          "fp_pct_far": float(100 * (res.labels[far] > 0).mean()),
                          "s": round(time.perf_counter() - t, 1)}), flush=True)


if __name__ == "__main__":
    main(sys.argv[1:])
