"""Prototype: masked-context inpainting as an anomaly score, against the engine's denoiser.

The denoiser (``dae``) learns to remove coarse noise; an implanted sphere wider than the
noise's cells comes back untouched except at its rim (``docs/anomaly_benchmarks.md``, "The
denoiser's noise scale"). Inpainting hides the voxel itself: the same small UNet, fitted on
the scan, fills square holes (side ``HOLE`` voxels at 1.5 mm, laid out as a checkerboard
with period ``2 HOLE``) from the visible surroundings; at test time four passes with shifted
checkerboards predict every voxel once from its context, and the score is
``|x - inpainted|``, smoothed and normalised per slice as the denoiser's. What the context
does not predict (a lesion of unusual intensity for its surroundings) stands out, however
wide it is, up to the hole's size.

Run through the engine: ``anomaly_map(method="dae")`` with the engine's denoiser swapped
for this score, so calibration, candidates and the metrics are bench_anomaly's. One run
compares ``dae`` and ``inpaint`` on the same cases, seed 0.

Usage: ``LATENTSEG_NUM_THREADS=2 PYTHONPATH=src python benchmarks/_inpaint.py [--cases ...]
[--methods dae inpaint] [--hole 16] [--tag T]``; writes
``benchmarks/results/inpaint{T}.json`` / ``.md``. ``LATENTSEG_INPAINT_FILL`` sets what a
hidden voxel reads (default -2, outside the data; 0 is in range); ``LAST`` keeps the last
fill to look at. Measured in ``docs/anomaly_benchmarks.md`` ("Inpainting"): at chance.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
import _dae_noise  # noqa: E402
import bench_anomaly as B  # noqa: E402

HOLE = 16  # hole side (voxels at 1.5 mm: 24 mm)
FILL = float(os.environ.get("LATENTSEG_INPAINT_FILL", "-2"))  # a hidden voxel reads this
LAST: dict = {}  # the last fill and its input, to look at


def checkerboard(shape: tuple[int, int], hole: int, oy: int, ox: int) -> np.ndarray:
    """Boolean (h, w) mask of ``hole``-sided squares with period ``2 hole``, shifted."""
    yy = ((np.arange(shape[0]) + oy) // hole) % 2 == 0
    xx = ((np.arange(shape[1]) + ox) // hole) % 2 == 0
    return yy[:, None] & xx[None, :]


def inpaint_raw_iter(x, mask, *, spacing=None, steps=None, seed=0, device="cpu",
                     stop_event=None, hole=None):
    """The engine's ``dae_raw_iter`` contract, with inpainting instead of denoising."""
    import torch
    from scipy import ndimage

    import napari_latentseg.engine.anomaly_dae as D

    hole = hole or HOLE
    steps = steps or int(os.environ.get(D.STEPS_ENV) or D.DAE_STEPS)
    f = 1
    if spacing is not None and min(spacing[-2:]) > 0:
        f = max(1, int(round(D.TARGET_MM / float(min(spacing[-2:])))))
    if f > 1:
        full = x.shape
        r = yield from inpaint_raw_iter(D._block_mean(x, f), D._block_mean(mask, f) >= 0.5,
                                        steps=steps, seed=seed, device=device,
                                        stop_event=stop_event, hole=hole)
        r = np.repeat(np.repeat(r, f, axis=1), f, axis=2)[:, : full[1], : full[2]]
        return ndimage.gaussian_filter(r, (0, f / 2, f / 2)).astype(np.float32)
    z, h, w = x.shape
    crop = min(D._CROP, h - h % 8, w - w % 8)
    keep = mask.reshape(z, -1).mean(1) > 0.05
    xs = np.ascontiguousarray(x[keep], dtype=np.float32)
    ms = np.ascontiguousarray(mask[keep], dtype=np.float32)

    def loss_of(net, rng, gen, cycle):  # the denoiser's crops, with holes instead of noise
        _, xb, mb = D.noisy_batch(xs, ms, crop, D._BATCH, rng, gen)
        hm = torch.from_numpy(np.stack([checkerboard((crop, crop), hole, *rng.integers(
            0, 2 * hole, size=2)) for _ in range(len(xb))])[:, None].astype(np.float32))
        wgt = (hm * mb).to(device)
        pred = net((xb * (1 - hm) + FILL * hm).to(device))
        return (((pred - xb.to(device)) ** 2) * wgt).sum() / wgt.sum().clamp(min=1)

    net = yield from D.fit_unet_iter(steps, loss_of, seed=seed, device=device,
                                     stop_event=stop_event, stage="anomaly: inpainting")
    ph, pw = (-h) % 8, (-w) % 8
    xp = np.pad(x.astype(np.float32), ((0, 0), (0, ph), (0, pw)), mode="edge")
    out = np.zeros_like(xp)
    with torch.no_grad():
        for oy, ox in ((0, 0), (0, hole), (hole, 0), (hole, hole)):
            hm = checkerboard(xp.shape[1:], hole, oy, ox)
            inp = torch.from_numpy(np.where(hm, np.float32(FILL), xp))[:, None]
            for k in range(0, z, 8):
                pred = net(inp[k:k + 8].to(device))[:, 0].cpu().numpy()
                out[k:k + 8][:, hm] = pred[:, hm]
    out = out[:, :h, :w]
    LAST.update(x=x, fill=out)
    err = ndimage.gaussian_filter(np.abs(x - out), (0, 1, 1)).astype(np.float32)
    return D.slice_normalise(err, mask)


@contextlib.contextmanager
def as_engine_dae(hole: int):
    """Make the engine's ``dae`` method run the inpainting score."""
    import functools

    import napari_latentseg.engine.anomaly as A

    old = A.dae_raw_iter
    A.dae_raw_iter = functools.partial(inpaint_raw_iter, hole=hole)
    try:
        yield
    finally:
        A.dae_raw_iter = old


def main() -> None:
    from napari_latentseg.engine.anomaly import anomaly_map

    p = argparse.ArgumentParser()
    p.add_argument("--cases", nargs="+", default=_dae_noise.MR_CASES)
    p.add_argument("--methods", nargs="+", default=["dae", "inpaint"])
    p.add_argument("--hole", type=int, default=HOLE)
    p.add_argument("--tag", default="")
    p.add_argument("--out", type=Path, default=HERE / "results")
    a = p.parse_args()
    cases = [c for c in B.build_cases(False)[0] if c["name"] in a.cases]
    rows, t_all = [], time.perf_counter()
    out = a.out / f"inpaint{a.tag}"
    out.parent.mkdir(parents=True, exist_ok=True)
    for c in cases:
        v, truth = c["v"], c["truth"]
        _, smask, fmask = B.case_masks(c)
        for m in a.methods:
            ctx = as_engine_dae(a.hole) if m == "inpaint" else contextlib.nullcontext()
            t = time.perf_counter()
            with ctx:
                r = anomaly_map(None, v, modality=c["mod"], method="dae", spacing=c["sp"],
                                error_map=False)
            bd, ap = B.curve_metrics(r.score, truth, smask)
            row = {"case": c["name"], "variant": m, "smooth": 0.0, "best_dice": bd,
                   "auprc": ap, "dice_at_threshold": B.dice(r.labels > 0, truth & smask),
                   "seconds": round(time.perf_counter() - t, 1)}
            if c["fp"]:
                row["fp_pct_head"] = float(100 * (r.labels[fmask] > 0).mean())
            rows.append(row)
            print(json.dumps(row), flush=True)
            out.with_suffix(".json").write_text(json.dumps(
                {"rows": rows, "hole": a.hole,
                 "seconds": round(time.perf_counter() - t_all, 1)}, indent=1))
    out.with_suffix(".md").write_text(_dae_noise.markdown(rows))
    print(_dae_noise.markdown(rows))


if __name__ == "__main__":
    main()
