"""Prototype: denoising autoencoder with coarse noise (Kascenas et al., MIDL 2022) as an
anomaly map, against the engine's default on bench_anomaly's cases.

A small 2D UNet learns to remove coarse Gaussian noise (drawn on a grid ``NOISE_RES`` times
coarser than the crop, bilinear-upsampled, inside the head only) from random crops of the
training slices; the anomaly is ``|x - DAE(x)|``, smoothed (1 voxel in-plane), inside the
head, calibrated with the engine's :func:`calibrate` on the training scans' own residuals.
Self mode trains on the scan itself, normative on the other scan of the pair (as in
bench_anomaly). One thread, CPU.

Stabilising options (docs/anomaly_benchmarks.md, "Stabilising the DAE"), self mode: ``--seeds
0,1,2`` (several fits per case), ``--weights last,ema,swa`` (weight averages tracked in the
same fit), ``--post mean,median,slice,tissue`` (residual post-processing), ``--ensemble K``
(K fits of steps / K, errors averaged), ``--pairs`` (errors of two full fits averaged). The
defaults reproduce the original prototype.

Usage: ``LATENTSEG_NUM_THREADS=1 OMP_NUM_THREADS=1 python benchmarks/_dae.py [--steps N]
[--cases a,b]``; writes ``benchmarks/results/anomaly-dae{--tag}.json``.
"""

from __future__ import annotations

import argparse
import json
import time

import bench_anomaly as B
import numpy as np

from napari_latentseg.engine.anomaly_dae import _NOISE_RES as NOISE_RES
from napari_latentseg.engine.anomaly_dae import _NOISE_STD as NOISE_STD
from napari_latentseg.engine.anomaly_dae import noisy_batch

CROP = 64  # training crop (in-plane voxels); inference runs on whole slices
EMA_DECAY = 0.98  # --weights ema: horizon ~50 steps
SWA_FRAC = 1 / 3  # --weights swa: mean over the last third of the steps


def unet():
    """The engine's denoiser (``engine/anomaly_dae.py``: 3-level 2D UNet, 16-32-64 channels,
    residual output ``x - net(x)``; a direct output stayed blurred after 300 steps)."""
    from napari_latentseg.engine.anomaly_dae import _unet

    return _unet()


def prepare(vols, mod):
    from napari_latentseg.engine.anomaly import _prepare

    out = []
    for v in vols:
        x, m = _prepare(None, np.asarray(v, np.float32), mod)
        out.append((x.astype(np.float32), m))
    return out


def train(prepared, steps, seed=0, batch=16, avg=()):
    """Fit the DAE on crops of the prepared slices.

    Returns ``({"last": net, ...}, seconds)``; ``avg`` adds weight averages tracked along the
    same run (the random stream is unchanged, so "last" is the plain fit): ``"ema"`` (decay
    ``EMA_DECAY`` from the end of the one-cycle warm-up) and ``"swa"`` (uniform mean of the
    weights over the last ``SWA_FRAC`` of the steps).
    """
    import copy

    import torch

    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    rng_t = torch.Generator().manual_seed(seed)
    xs = np.concatenate([x for x, _ in prepared])
    ms = np.concatenate([m for _, m in prepared]).astype(np.float32)
    keep = ms.reshape(len(ms), -1).mean(1) > 0.05  # slices with some head
    xs, ms = xs[keep], ms[keep]
    net = unet()
    opt = torch.optim.AdamW(net.parameters(), lr=2e-3, weight_decay=1e-4)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=2e-3, total_steps=steps)
    ema_from, swa_from = int(0.3 * steps), int((1 - SWA_FRAC) * steps)
    avgs: dict = {}
    t = time.perf_counter()
    for step in range(steps):
        noisy, xb, mb = noisy_batch(xs, ms, CROP, batch, rng, rng_t)  # the engine's batches
        loss = (((net(noisy) - xb) ** 2) * mb).sum() / mb.sum().clamp(min=1)
        opt.zero_grad()
        loss.backward()
        opt.step()
        sched.step()
        with torch.no_grad():
            for name, start in (("ema", ema_from), ("swa", swa_from)):
                if name not in avg or step < start:
                    continue
                if name not in avgs:
                    avgs[name] = copy.deepcopy(net)
                    continue
                # EMA: fixed decay; SWA: running uniform mean (weight 1 / count).
                k = EMA_DECAY if name == "ema" else (step - start) / (step - start + 1)
                for pa, pn in zip(avgs[name].parameters(), net.parameters(), strict=True):
                    pa.mul_(k).add_(pn, alpha=1 - k)
    net.eval()
    for m in avgs.values():
        m.eval()
    return {"last": net, **avgs}, time.perf_counter() - t


def recon(net, x):
    """DAE output on whole slices (padded to a multiple of 8)."""
    import torch

    z, h, w = x.shape
    ph, pw = (-h) % 8, (-w) % 8
    with torch.no_grad():
        xt = torch.from_numpy(np.pad(x, ((0, 0), (0, ph), (0, pw)), mode="edge"))[:, None]
        return torch.cat([net(xt[i:i + 8]) for i in range(0, z, 8)])[:, 0, :h, :w].numpy()


def post(err, x, m, kind="mean"):
    """Anomaly from ``|x - DAE(x)|`` inside the head (NaN outside).

    ``mean``: Gaussian, 1 voxel in-plane (the default); ``median``: 3 x 3 in-plane median;
    ``slice``: ``mean`` then centred and scaled per slice by the head's median / MAD (the
    end slices' residuals are larger everywhere); ``tissue``: ``mean`` divided by the median
    residual of the voxels of similar intensity (10 intensity-quantile bins of the head).
    """
    from scipy import ndimage

    if kind == "median":
        r = ndimage.median_filter(err, (1, 3, 3)).astype(np.float32)
    else:
        r = ndimage.gaussian_filter(err, (0, 1, 1)).astype(np.float32)
    if kind == "slice":
        r = slice_norm(r, m)
    elif kind == "tissue":
        edges = np.quantile(x[m], np.linspace(0, 1, 11)[1:-1])
        b = np.digitize(x, edges)
        scale = np.array([np.median(r[m & (b == j)]) if (m & (b == j)).any() else 1.0
                          for j in range(10)]) + 1e-6
        r = r / scale[b]
    r[~m] = np.nan
    return r


def slice_norm(r, m):
    """Centre and scale each slice by its head voxels' median / MAD (the engine's)."""
    from napari_latentseg.engine.anomaly_dae import slice_normalise

    return slice_normalise(r, m)


def residual(net, x, m):
    """Smoothed |x - DAE(x)| inside the head (NaN outside), whole slices."""
    return post(np.abs(x - recon(net, x)), x, m)


def evaluate(case, raw, cal, mask, truth, smask, fmask):
    from napari_latentseg.engine.anomaly import _calibrated, components

    score = _calibrated(raw, cal)
    score[~mask] = 0
    bd, ap = B.curve_metrics(score, truth, smask)
    lab, _ = components((score > 3.0) & mask, score, case["sp"], 0.05)
    row = {"best_dice": bd, "auprc": ap, "dice_at_threshold": B.dice(lab > 0, truth & smask),
           "flagged_pct_head": float(100 * (lab[mask] > 0).mean())}
    if case["fp"] and fmask.any():
        row["fp_pct_head"] = float(100 * (lab[fmask] > 0).mean())
    return row


def self_variants(x, mask, a, seed):
    """Self-mode fits of one seed: ``{(weights, post): map}``, raw errors, fit seconds.

    ``--ensemble K``: K fits of ``steps / K`` steps (seeds ``seed + 1000 k``) whose raw
    errors are averaged before the post-processing (same training cost as one fit).
    """
    errs: dict = {}
    fit_s = 0.0
    for k in range(a.ensemble):
        nets, s = train([(x, mask)], a.steps // a.ensemble, seed=seed + 1000 * k,
                        avg=tuple(w for w in a.weights if w != "last"))
        fit_s += s
        for w in a.weights:
            errs.setdefault(w, []).append(np.abs(x - recon(nets[w], x)))
    errs = {w: np.mean(e, 0) for w, e in errs.items()}
    maps = {(w, pk): post(errs[w], x, mask, pk) for w in a.weights for pk in a.post}
    return maps, errs, fit_s


def main() -> None:
    import torch
    from scipy import ndimage

    from napari_latentseg.engine.anomaly import anomaly_map, calibrate

    torch.set_num_threads(1)
    p = argparse.ArgumentParser()
    p.add_argument("--steps", type=int, default=300)
    p.add_argument("--cases", default="")
    p.add_argument("--tag", default="")
    p.add_argument("--seed", type=int, default=0, help="seed of the DAE fits")
    p.add_argument("--seeds", default="", help="comma list, overrides --seed (self mode)")
    p.add_argument("--self-only", action="store_true", help="skip normative mode")
    p.add_argument("--weights", default="last",
                   help="comma list of last, ema, swa (averages tracked in the same fit)")
    p.add_argument("--post", default="mean", help="comma list of mean, median, slice, tissue")
    p.add_argument("--ensemble", type=int, default=1, help="K fits of steps / K, averaged")
    p.add_argument("--pairs", action="store_true",
                   help="also average the 'last' errors of every pair of seeds (2x the cost)")
    p.add_argument("--controls", action="store_true",
                   help="only intensity / median with and without the per-slice normalisation")
    a = p.parse_args()
    a.weights, a.post = a.weights.split(","), a.post.split(",")
    seeds = [int(s) for s in a.seeds.split(",")] if a.seeds else [a.seed]
    cases, refs = B.build_cases(False)
    if a.cases:
        cases = [c for c in cases if c["name"] in a.cases.split(",")]
    norm_models: dict = {}
    rows = []
    for c in cases:
        v, truth = c["v"], c["truth"]
        (x, mask), = prepare([v], c["mod"])
        smask = mask & c["zmask"][:, None, None] if "zmask" in c else mask
        lesion_z = np.nonzero(ndimage.binary_dilation(truth.any((1, 2)), iterations=3))[0]
        far = np.ones(v.shape[0], bool)
        far[lesion_z] = False
        fmask = mask & far[:, None, None]
        base = {"case": c["name"]}
        t = time.perf_counter()
        res = anomaly_map(None, v, modality=c["mod"], spacing=c["sp"], error_map=False)
        bd, ap = B.curve_metrics(res.score, truth, smask)
        rows.append({**base, "method": "intensity", "mode": "self", "best_dice": bd,
                     "auprc": ap, "seconds": round(time.perf_counter() - t, 1)})
        print(json.dumps(rows[-1]), flush=True)
        if a.controls:
            # The per-slice normalisation on the model-free maps: is a gain the DAE's or the
            # normalisation's?
            med = np.abs(x - ndimage.median_filter(x, (1, 5, 5)))
            for name, raw in (("intensity", np.where(mask, res.score, np.nan)),
                              ("median", np.where(mask, med, np.nan))):
                for pk, r in (("none", raw), ("slice", slice_norm(raw, mask))):
                    row = evaluate(c, r, calibrate(r[mask]), mask, truth, smask, fmask)
                    rows.append({**base, "method": name, "mode": "self", "post": pk, **row})
                    print(json.dumps(rows[-1]), flush=True)
            continue
        # Self mode: trained and calibrated on the scan itself.
        last_errs = {}
        for seed in seeds:
            maps, errs, fit_s = self_variants(x, mask, a, seed)
            last_errs[seed] = errs.get("last")
            for (w, pk), raw in maps.items():
                row = evaluate(c, raw, calibrate(raw[mask]), mask, truth, smask, fmask)
                rows.append({**base, "method": "dae", "mode": "self", "seed": seed,
                             "weights": w, "post": pk, "ensemble": a.ensemble, **row,
                             "fit_seconds": round(fit_s, 1)})
                print(json.dumps(rows[-1]), flush=True)
        if a.pairs and "last" in a.weights:
            for i, s1 in enumerate(seeds):
                for s2 in seeds[i + 1:]:
                    for pk in a.post:
                        raw = post((last_errs[s1] + last_errs[s2]) / 2, x, mask, pk)
                        row = evaluate(c, raw, calibrate(raw[mask]), mask, truth, smask, fmask)
                        rows.append({**base, "method": "dae", "mode": "self", "seed": [s1, s2],
                                     "weights": "last", "post": pk, "ensemble": "pair", **row})
                        print(json.dumps(rows[-1]), flush=True)
        if a.self_only:
            continue
        # Normative: trained and calibrated on the other scan(s).
        key = c["ref"]
        if key not in norm_models:
            other = refs["phantom"] if key == "phantom" else [refs[B.OTHER[key]]]
            prep = prepare(other, c["mod"])
            nets, fs = train(prep, a.steps, seed=seeds[0])
            net_n = nets["last"]
            cal = calibrate(np.concatenate([residual(net_n, xo, mo)[mo] for xo, mo in prep]))
            norm_models[key] = (net_n, cal, fs)
        net_n, cal, fs = norm_models[key]
        row = evaluate(c, residual(net_n, x, mask), cal, mask, truth, smask, fmask)
        rows.append({**base, "method": "dae", "mode": "normative", **row,
                     "fit_seconds": round(fs, 1)})
        print(json.dumps(rows[-1]), flush=True)
    out = B.HERE / "results"
    out.mkdir(exist_ok=True)
    (out / f"anomaly-dae{a.tag}.json").write_text(json.dumps(
        {"rows": rows, "steps": a.steps, "seeds": seeds, "crop": CROP, "noise_res": NOISE_RES,
         "noise_std": NOISE_STD, "weights": a.weights, "post": a.post,
         "ensemble": a.ensemble, "ema_decay": EMA_DECAY, "swa_frac": SWA_FRAC}, indent=1))


if __name__ == "__main__":
    main()
