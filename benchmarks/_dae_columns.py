"""The denoiser's inner features as forest columns (issue #13, session 44: level, not kept).

The ``dae`` anomaly score's UNet (``engine/anomaly_dae.py``) learns to heal 12-24 mm blobs of
noise, so its bottleneck sees wider context than the VAE's latent, which carries local
contrast (session 17). ``bench_interactive.py``'s extra columns ``daemid`` (its bottleneck,
64 channels at 1/4 of the 1.5 mm grid) and ``daeup`` (its first decoder block, 32 channels at
1/2) are four principal components of those features, over the head, at unit variance,
bilinearly back to voxels; the snapshots of one self-mode fit of the scan (the recipe's
seed 0, as the ``anomaly`` column's fit) feed them together.
"""

from __future__ import annotations

import numpy as np


def dae_columns(image: np.ndarray, modality: str, spacing, where: str = "mid",
                k: int = 4) -> np.ndarray:
    """(z, y, x, k) float32 columns of ``image`` from its own denoiser's ``where`` block
    (``"mid"``: the bottleneck, ``"up"``: the first decoder block)."""
    import torch
    import torch.nn.functional as F

    from napari_latentseg.engine import anomaly_dae as ad
    from napari_latentseg.engine.anomaly import _prepare
    from napari_latentseg.runtime.progress import drive

    x, mask = _prepare(None, np.asarray(image, np.float32), modality, spacing)
    nets = drive(ad.fit_dae_iter([(x, mask, spacing)]))
    H, W = x.shape[1:]
    xg, mg, _, f = ad._grid(x, mask, spacing)
    z, h, w = xg.shape
    ph, pw = (-h) % 8, (-w) % 8
    xt = torch.from_numpy(np.pad(xg.astype(np.float32), ((0, 0), (0, ph), (0, pw)),
                                 mode="edge"))[:, None]
    feats = []
    for net in nets:
        block, got = (net.mid if where == "mid" else net.up[0]), []
        hook = block.register_forward_hook(lambda m, i, o, got=got: got.append(o.detach()))
        with torch.no_grad():
            for s in range(0, z, 8):
                net(xt[s:s + 8])
        hook.remove()
        o = F.interpolate(torch.cat(got), size=(h + ph, w + pw), mode="bilinear",
                          align_corners=False)
        feats.append(o[:, :, :h, :w])
    fe = torch.cat(feats, 1).permute(0, 2, 3, 1).numpy()  # (z, h, w, channels)
    rows = fe[mg]
    if len(rows) > 50000:
        rows = rows[np.random.default_rng(0).choice(len(rows), 50000, replace=False)]
    mu = rows.mean(0)
    _, sv, vt = np.linalg.svd(rows - mu, full_matrices=False)
    pc = (fe - mu) @ vt[:k].T / (sv[:k] / np.sqrt(len(rows)))
    pc = torch.from_numpy(np.ascontiguousarray(np.moveaxis(pc, -1, 1), np.float32))
    if f > 1:  # the denoiser's grid block-averages f x f voxels: back to the scan's
        pc = F.interpolate(pc, size=(h * f, w * f), mode="bilinear", align_corners=False)
    return np.moveaxis(pc[:, :, :H, :W].numpy(), 1, -1)
