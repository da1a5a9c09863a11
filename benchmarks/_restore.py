"""Prototype: restoration by iterative latent MAP as an anomaly score (issue #14).

Chen et al. (2020, "Unsupervised lesion detection via image restoration with a normative
prior") heal the input towards what the VAE finds likely: starting from the scan ``x``, the
restored image ``r`` descends ``recon(r) + w_kl KL(r) + lam |r - x|_1``, where ``recon(r)`` is
the VAE's own reconstruction loss of ``r`` (L1 here, as the product's fit) and ``KL`` its
latent's divergence from the prior with the fit's weight. The score is ``|x - r|``: what the
model had to change. A lesion the model cannot reproduce is healed away; normal tissue, which
it reproduces, stays. ``lam`` trades how far ``r`` may move.

Compared in one run, on the MR cases of ``bench_anomaly`` with the cached VAE those cases use
(``cpu-2d-fine``, 450 steps, fitted on lesion-free brain1 and brain2, the most favourable
case for a VAE score): the plain reconstruction error ``|x - D(E(x))|`` and the restoration
residual, each raw and with the denoiser's per-slice normalisation (``slice_normalise``).

Usage: ``LATENTSEG_NUM_THREADS=1 PYTHONPATH=src python benchmarks/_restore.py [--cases ...]
[--steps 60] [--lam 0.1 0.3] [--tag T]``; writes ``benchmarks/results/restore{T}.json``.
Measured in ``docs/anomaly_benchmarks.md`` ("Restoration by latent MAP").
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
import bench_anomaly as B  # noqa: E402

MR_CASES = ["brain1-tumour", "brain1-syn-tissue", "brain1-syn-dark", "brain1-syn-bright",
            "brain2-tumour", "brain2-syn-tissue", "brain2-syn-dark", "brain2-syn-bright",
            "phantom"]


def restore(model, xn: np.ndarray, lam: float, steps: int, lr: float = 0.02,
            kl_weight: float = 1e-6, batch: int = 8) -> np.ndarray:
    """The restored image ``r`` (normalised units) of normalised slices ``xn`` (z, y, x)."""
    import torch

    from napari_latentseg.engine.infer import pad_to_multiple

    net = model.net.eval()
    for p in net.parameters():
        p.requires_grad_(False)
    out = np.empty_like(xn, dtype=np.float32)
    for k in range(0, len(xn), batch):
        x = torch.from_numpy(np.ascontiguousarray(xn[k:k + batch], np.float32))[:, None]
        x, spatial = pad_to_multiple(x, model.config.downsampling)
        r = x.clone().requires_grad_(True)
        opt = torch.optim.Adam([r], lr=lr)
        n = x[0].numel()
        for _ in range(steps):
            mu, sigma = net.encode(r)
            rec = net.decode(mu)
            kl = 0.5 * (mu.pow(2) + sigma.pow(2) - torch.log(sigma.pow(2) + 1e-12) - 1)
            loss = ((rec - r).abs().sum() + kl_weight * kl.sum()
                    + lam * (r - x).abs().sum()) / n
            opt.zero_grad()
            loss.backward()
            opt.step()
        crop = (slice(None), 0) + tuple(slice(0, s) for s in spatial)
        out[k:k + batch] = r.detach()[crop].numpy()
    return out


def main() -> None:
    from scipy import ndimage

    import napari_latentseg.engine.anomaly_dae as D
    from napari_latentseg.engine.infer import normalizer_for, reconstruct_normalised
    from napari_latentseg.runtime.device import configure_threads

    configure_threads()
    p = argparse.ArgumentParser()
    p.add_argument("--cases", nargs="+", default=MR_CASES)
    p.add_argument("--steps", type=int, default=60)
    p.add_argument("--lam", type=float, nargs="+", default=[0.1, 0.3])
    p.add_argument("--model", default="anomaly-mr-450-cpu-2d-fine.pt")
    p.add_argument("--tag", default="")
    p.add_argument("--out", type=Path, default=HERE / "results")
    a = p.parse_args()
    from napari_latentseg.models.checkpoint import load_model

    model = load_model(B.CACHE / a.model)
    cases = [c for c in B.build_cases(False)[0] if c["name"] in a.cases]
    rows, t_all = [], time.perf_counter()
    out = a.out / f"restore{a.tag}.json"
    out.parent.mkdir(parents=True, exist_ok=True)

    def add(c, variant, score, secs, smask, mask):
        for norm in (False, True):
            s = D.slice_normalise(score, mask) if norm else score
            bd, ap = B.curve_metrics(s, c["truth"], smask)
            row = {"case": c["name"], "variant": variant + ("+slice-norm" if norm else ""),
                   "best_dice": round(bd, 4), "auprc": round(ap, 4), "seconds": round(secs, 1)}
            rows.append(row)
            print(json.dumps(row), flush=True)

    for c in cases:
        v = c["v"]
        mask, smask, _ = B.case_masks(c)
        norm = normalizer_for(model, v, c["mod"])[0]
        xn = norm(v).astype(np.float32)
        t = time.perf_counter()
        rec = reconstruct_normalised(model, xn)
        err = ndimage.gaussian_filter(np.abs(xn - rec), (0, 1, 1)).astype(np.float32)
        add(c, "error", err, time.perf_counter() - t, smask, mask)
        for lam in a.lam:
            t = time.perf_counter()
            r = restore(model, xn, lam, a.steps)
            res = ndimage.gaussian_filter(np.abs(xn - r), (0, 1, 1)).astype(np.float32)
            add(c, f"restore-lam{lam:g}", res, time.perf_counter() - t, smask, mask)
        out.write_text(json.dumps({"rows": rows, "steps": a.steps, "model": a.model,
                                   "seconds": round(time.perf_counter() - t_all, 1)},
                                  indent=1))
    print(f"total {time.perf_counter() - t_all:.0f} s")


if __name__ == "__main__":
    main()
