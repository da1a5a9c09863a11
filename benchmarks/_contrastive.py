"""Prototype (issue #13): a training signal other than reconstruction for the VAE's encoder.

The VAE columns the forest sees (latent mean + principal components of the encoder's
hypercolumn) largely repeat the ilastik filters (docs/interactive_benchmarks.md, the probe):
reconstruction rewards encoding the local intensities. This prototype adds a dense
contrastive term to the product's fit (InfoNCE between the encoder's last level on a slice and
on a photometrically jittered copy of it: the same position is the positive, other positions
of the batch the negatives, as in dense contrastive learning: VADeR, DenseCL, PixPro), so
the encoder is pushed to tell positions apart by their context rather than their grey value.

Everything else is the product's fit (``engine.train.fit``, 450 steps, cosine from 2e-3): the
term is added through the fit's KL function (the only place the training step hands the
posterior to a function here), and the encoder's tap is read by a forward hook. The fitted
model is an ordinary VAE (no extra weights) cached beside the benchmark's VAEs as
``<case>-cpu-2d-fine-nce<W>``; the loop is the default's (``pu-adapt-sqrt1``) on its columns,
next to the default VAE's columns and the ablation without VAE columns, same seeds.

Usage: ``LATENTSEG_NUM_THREADS=1 OMP_NUM_THREADS=1 PYTHONPATH=src python
benchmarks/_contrastive.py [--weights 0.01] [--cases ...] [--seeds 3] [--fit-only]
[--fit-seed N] [--no-base] [--tag=-x]``; writes ``benchmarks/results/contrastive{tag}.json``
/ ``.md``. Measured in docs/interactive_benchmarks.md ("A dense contrastive term": loses).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
import _interactive as ia  # noqa: E402
import _loop_methods as lm  # noqa: E402
import bench_interactive as bi  # noqa: E402
from _probe_pcs import markdown  # noqa: E402

POSITIONS = 512  # sampled positions per step (the InfoNCE matrix is POSITIONS^2)
TEMPERATURE = 0.1


def _jitter(x, gen):
    """Photometric copy of a normalised batch: per-slice gain and offset, Gaussian noise."""
    import torch

    b = x.shape[0]
    shape = (b,) + (1,) * (x.ndim - 1)
    gain = 1.0 + 0.2 * (2 * torch.rand(shape, generator=gen) - 1)
    offset = 0.1 * (2 * torch.rand(shape, generator=gen) - 1)
    noise = 0.05 * torch.randn(x.shape, generator=gen)
    return (x * gain + offset + noise).to(x.dtype)


class DenseNCE:
    """Hooks on a network: records the encoder input and its last level's output while
    training, and computes the InfoNCE term against a jittered copy."""

    def __init__(self, net, seed: int = 0) -> None:
        import torch

        self.net = net
        blocks = list(net.encoder.blocks)
        self.tap = len(blocks) - 3  # the last level's output (features.py's tap)
        self.x = self.h = None
        self.gen = torch.Generator().manual_seed(seed)
        net.encoder.register_forward_pre_hook(self._pre)
        blocks[self.tap].register_forward_hook(self._post)
        self.active = True

    def _pre(self, module, args):
        import torch

        if self.active and torch.is_grad_enabled():
            self.x = args[0]

    def _post(self, module, args, out):
        import torch

        if self.active and torch.is_grad_enabled():
            self.h = out

    def loss(self):
        import torch
        import torch.nn.functional as F

        if self.x is None or self.h is None:
            return None
        x, h1 = self.x, self.h
        self.x = self.h = None
        self.active = False  # the second view's pass must not overwrite the records
        try:
            h = _jitter(x.detach(), self.gen)
            for block in list(self.net.encoder.blocks)[: self.tap + 1]:
                h = block(h)
        finally:
            self.active = True
        c = h1.shape[1]
        f1 = h1.permute(0, 2, 3, 1).reshape(-1, c).float()
        f2 = h.permute(0, 2, 3, 1).reshape(-1, c).float()
        # Positions inside the scan (not the air): the input, pooled to the tap's grid.
        xin = F.adaptive_avg_pool2d(x.detach()[:, :1].float(), h1.shape[2:]).reshape(-1)
        cand = torch.nonzero(xin > 0.05).reshape(-1)
        if len(cand) < 16:
            return None
        pick = cand[torch.randperm(len(cand), generator=self.gen)[:POSITIONS]]
        a = F.normalize(f1[pick], dim=1)
        b = F.normalize(f2[pick], dim=1)
        logits = a @ b.T / TEMPERATURE
        target = torch.arange(len(pick))
        return 0.5 * (F.cross_entropy(logits, target) + F.cross_entropy(logits.T, target))


def fit_contrastive(case: str, image, modality, weight: float, steps: int | None = None,
                    seed: int | None = None):
    """The product's default fit plus the dense term (weight x InfoNCE), cached."""
    import napari_latentseg.engine.train as train
    from napari_latentseg.engine.train import FitOptions
    from napari_latentseg.models.checkpoint import load_model, save_model
    from napari_latentseg.models.config import DEFAULT_CONFIG

    key = (f"{case}-{DEFAULT_CONFIG}-nce{weight:g}" + (f"-s{steps}" if steps else "")
           + (f"-seed{seed}" if seed is not None else ""))
    path, meta = ia.CACHE / f"{key}.pt", ia.CACHE / f"{key}.json"
    if path.exists() and meta.exists():
        return load_model(path, device=ia.DEVICE), json.loads(meta.read_text())
    opts = FitOptions(minutes=ia.FIT_MINUTES, device=ia.DEVICE,
                      **({"steps": steps} if steps else {}),
                      **({"seed": seed} if seed is not None else {}))
    orig_build, orig_kl = train.build_network, train._kl
    state: dict = {}
    log: list[float] = []

    def build(cfg):
        net = orig_build(cfg)
        state["nce"] = DenseNCE(net, seed or 0)
        return net

    def kl(z_mu, z_sigma):
        base = orig_kl(z_mu, z_sigma)
        term = state["nce"].loss() if "nce" in state else None
        if term is None:
            return base
        log.append(float(term.detach()))
        return base + (weight / opts.kl_weight) * term

    train.build_network, train._kl = build, kl
    t0 = time.perf_counter()
    try:
        res = train.fit(image, DEFAULT_CONFIG, opts, modalities=[modality])
    finally:
        train.build_network, train._kl = orig_build, orig_kl
    state["nce"].active = False
    fit_s = time.perf_counter() - t0
    ia.CACHE.mkdir(parents=True, exist_ok=True)
    save_model(res.model, path, overwrite=True)
    info = {"fit_s": round(fit_s, 1), "steps": res.steps, "reason": res.reason,
            "nce_first": float(np.mean(log[:20])) if log else None,
            "nce_last": float(np.mean(log[-20:])) if log else None}
    meta.write_text(json.dumps(info))
    return load_model(path, device=ia.DEVICE), info


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--weights", nargs="+", type=float, default=[0.01])
    p.add_argument("--cases", nargs="+", default=["brain1", "brain1-unequal", "brain2",
                                                   "breast1"])
    p.add_argument("--seeds", type=int, default=3)
    p.add_argument("--rounds", type=int, default=10)
    p.add_argument("--fit-only", action="store_true")
    p.add_argument("--fit-seed", type=int, default=None,
                   help="both VAEs (default and contrastive) fitted with this seed")
    p.add_argument("--no-base", action="store_true",
                   help="skip the default VAE and the ablation (measured in another run)")
    p.add_argument("--tag", default="")
    p.add_argument("--out", type=Path, default=HERE / "results")
    a = p.parse_args()
    a.out.mkdir(parents=True, exist_ok=True)
    name = a.out / f"contrastive{a.tag}"
    base_opts = bi.LOOPS["pu-adapt-sqrt1"]
    rows, fits, t_all = [], {}, time.perf_counter()
    for case in a.cases:
        fit_kw = {} if a.fit_seed is None else {"seed": a.fit_seed}
        env = bi.case_env(case, ia.DEFAULT_DATA, False, **fit_kw)
        default_model = env["model"]
        base = case.split("-")[0]
        models = [] if a.no_base else [("novae", default_model), ("default", default_model)]
        for w in a.weights:
            m, info = fit_contrastive(base, env["full_image"], env["modality"], w,
                                      seed=a.fit_seed)
            fits[f"{base}-nce{w:g}"] = info
            print(base, f"nce{w:g}", info, flush=True)
            models.append((f"nce{w:g}", m))
        if a.fit_only:
            continue
        for label, model in models:
            if env.get("feats_model") is not model:
                env["model"] = model
                env.pop("feats", None)
                bi.env_features(env)
                env["feats_model"] = model
            feats, feat_s = env["feats"], env["feat_s"]
            for seed in range(a.seeds):
                opts = dataclasses.replace(base_opts, seed=seed, vae=label != "novae")
                loop = lm.ForestLoop(feats, env["spacing"], opts, feat_s)
                r = bi.run_strokes(loop, env, a.rounds)
                r.update(case=case, method=label, seed=seed, protocol="strokes")
                rows.append(r)
                print(f"{case} {label} seed {seed}: AUC {r['auc']:.3f} drop "
                      f"{r['max_drop']:.3f} final {r['final']:.3f} {r['round_s']:.2f} s/round"
                      " | " + " ".join(f"{d:.2f}" for d in r["dice"]), flush=True)
                name.with_suffix(".json").write_text(json.dumps(
                    {"rows": rows, "fits": fits,
                     "seconds": round(time.perf_counter() - t_all, 1)}, indent=1))
    if rows:
        name.with_suffix(".md").write_text(markdown(rows))
        print(markdown(rows))


if __name__ == "__main__":
    main()
