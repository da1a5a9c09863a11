"""Semi-supervised rounds (benchmark prototype, issue #13): the VAE as the segmenter's regulariser.

Each round trains the encoder (with its decoder) and an MLP head on the hypercolumn together:

- cross-entropy on the painted voxels (weight 1) and on the engine's background prior
  (``engine/segment/prior.py``: 2000 unpainted voxels at least 10 mm from the object's strokes,
  as background, together weighing ``adaptive_prior_weight(share, n_object)``; the object's
  share is the engine forest's estimate of the same round);
- the VAE's own loss on the same slices (L1 reconstruction + ``kl`` x KL, as in the fit), so
  the encoder stays an autoencoder while it learns the task (``recon=0``: the ablation, plain
  fine-tuning with the prior).

Slices are drawn in proportion to the weight of their targets (the stroke slices often), each
slice's cross-entropy is its weighted mean (an importance-sampled estimate of the weighted mean
over every target). Rounds continue from the previous round's network and head (a new head
when the painted classes change). The round's probabilities are the network's, optionally
averaged with the engine forest's (``mix``), or the engine forest is fitted on the tuned
encoder's features instead (``forest_on_tuned``). Labels: the strokes win, then the engine's
keep-connected rule (as every method of the benchmark).
"""

from __future__ import annotations

import copy
import time
from dataclasses import dataclass

import numpy as np


@dataclass
class SemiOptions:
    recon: float = 1.0  # weight of the VAE loss (L1 + kl * KL); 0 = cross-entropy only
    kl: float = 1e-6  # the fit's kl_weight
    first_steps: int = 40  # joint steps of the first round
    steps: int = 20  # joint steps of each later round (continuing)
    head_steps: int = 200  # head alone on frozen features first, every round (cheap)
    lr: float = 1e-3  # head
    encoder_factor: float = 0.1  # encoder + decoder at lr * factor
    batch: int = 4  # slices per step
    mix: float = 1.0  # weight of the network's probabilities against the forest's
    forest_on_tuned: bool = False  # the engine forest on the tuned encoder's features
    seed: int = 0


class SemiSup:
    """A benchmark method (``__call__(ann, strokes_round) -> Round``) of semi-supervised
    rounds; ``last_train_s`` holds the training seconds of the last round."""

    def __init__(self, model, image, modality, spacing, fit_s: float, opts: SemiOptions):
        import torch

        from napari_latentseg.engine.features import Hypercolumn
        from napari_latentseg.engine.infer import normalizer_for, pad_to_multiple
        from napari_latentseg.engine.segment import FeatureCache

        self.torch = torch
        self.model0 = model  # the input VAE: the forest's features (cached across rounds)
        self.model = copy.deepcopy(model)  # the one trained, round after round
        self.net = self.model.net.cpu().eval()
        self.image, self.modality, self.spacing = image, modality, spacing
        self.opts = opts
        self.setup_s = fit_s
        self.cache = FeatureCache()
        norm = normalizer_for(model, image, modality)[0]
        x = torch.from_numpy(np.ascontiguousarray(norm(image)[:, None], np.float32))
        self.x, self.spatial = pad_to_multiple(x, model.config.downsampling)
        self.hyper = Hypercolumn(self.net, model.config.context_slices)
        self.head = None
        self.classes: list[int] | None = None
        self.share: float | None = None
        self.round = 0
        self.last_train_s = 0.0
        torch.manual_seed(opts.seed)

    # ----------------------------------------------------------------- network
    def _forward(self, x):
        """(logits, reconstruction, z_mu, z_sigma) of a (B, 1, H, W) batch, one encoder pass."""
        import torch.nn.functional as F

        hy, net = self.hyper, self.net
        size = x.shape[2:]
        feats, h = [], x
        for i, block in enumerate(net.encoder.blocks):
            h = block(h)
            if i in hy.taps:
                feats.append(h)
        mu = net.quant_conv_mu(h)
        sigma = torch_exp_half(net.quant_conv_log_sigma(h))
        feats.append(mu)
        up = [f if f.shape[2:] == size else F.interpolate(f, size=size, mode="bilinear",
                                                           align_corners=False) for f in feats]
        up += hy._intensity(x)
        logits = self.head(self.torch.cat(up, dim=1))
        z = mu + sigma * self.torch.randn_like(sigma)
        return logits, net.decode(z), mu, sigma

    def _probs(self) -> np.ndarray:
        """(n_classes, z, y, x) softmax of the network over the (unpadded) volume."""
        torch = self.torch
        out = []
        with torch.inference_mode():
            for i in range(0, len(self.x), 8):
                out.append(torch.softmax(self.head(self.hyper(self.x[i : i + 8])), 1))
        p = torch.cat(out)[:, :, : self.spatial[0], : self.spatial[1]]
        return p.transpose(0, 1).numpy().astype(np.float32)

    def _new_head(self, n_classes: int):
        from napari_latentseg.models.head import SegmentationHead

        torch = self.torch
        with torch.inference_mode():
            f = torch.cat([self.hyper(self.x[i : i + 8]) for i in range(0, len(self.x), 8)])
        rows = f.transpose(0, 1).reshape(f.shape[1], -1)
        head = SegmentationHead(rows.shape[0], n_classes, 64, 2)
        head.mean.copy_(rows.mean(1))
        head.std.copy_(rows.std(1) + 1e-4)
        return head

    # ----------------------------------------------------------------- targets
    def _targets(self, ann: np.ndarray, classes: list[int], rng) -> tuple[np.ndarray, np.ndarray]:
        """Class-index targets (-1: none) and weights, padded like the input."""
        from napari_latentseg.engine.segment.prior import (
            adaptive_prior_weight,
            effective_background,
            unpainted_sample,
        )

        lut = np.full(int(max(classes)) + 1, -1, dtype=np.int64)
        lut[classes] = np.arange(len(classes))
        y = np.where(ann > 0, lut[ann], -1)
        w = (ann > 0).astype(np.float32)
        bg = effective_background("auto", classes)
        if bg is not None:
            flat = unpainted_sample(ann, bg, 2000, 10.0, self.spacing, rng)
            n_obj = float(np.count_nonzero((ann > 0) & (ann != bg)))
            share = self.share if self.share is not None else 0.5
            y.reshape(-1)[flat] = lut[bg]
            w.reshape(-1)[flat] = adaptive_prior_weight(share, n_obj) / max(len(flat), 1)
        pad = [(0, 0)] + [(0, int(s) - int(a)) for s, a in zip(self.x.shape[2:], ann.shape[1:],
                                                                strict=True)]
        return np.pad(y, pad, constant_values=-1), np.pad(w, pad)

    def _train(self, ann: np.ndarray, classes: list[int], rng) -> None:
        torch = self.torch
        o = self.opts
        y, w = self._targets(ann, classes, rng)
        if self.head is None or self.classes != classes:
            self.head = self._new_head(len(classes))
            self.classes = list(classes)
        yt, wt = torch.from_numpy(y), torch.from_numpy(w)
        # The head alone on frozen features of the target voxels first (cheap, rows only).
        with torch.inference_mode():
            f = torch.cat([self.hyper(self.x[i : i + 8]) for i in range(0, len(self.x), 8)])
        sel = (yt >= 0).nonzero(as_tuple=True)
        rows = f[sel[0], :, sel[1], sel[2]].clone()
        ry, rw = yt[sel], wt[sel]
        hopt = torch.optim.Adam(self.head.parameters(), lr=3e-3, weight_decay=1e-4)
        for _ in range(o.head_steps):
            ce = torch.nn.functional.cross_entropy(self.head.forward_flat(rows), ry,
                                                   reduction="none")
            loss = (ce * rw).sum() / rw.sum()
            hopt.zero_grad(set_to_none=True)
            loss.backward()
            hopt.step()
        # Joint steps: head + encoder + decoder, cross-entropy + the VAE's loss.
        net = self.net
        vae_params = [p for n, p in net.named_parameters()]
        opt = torch.optim.Adam([{"params": self.head.parameters(), "lr": o.lr},
                                {"params": vae_params, "lr": o.lr * o.encoder_factor}])
        per_slice = w.reshape(len(w), -1).sum(1)
        ok = np.flatnonzero(per_slice > 0)
        p = per_slice[ok] / per_slice[ok].sum()
        steps = o.first_steps if self.round == 0 else o.steps
        for _ in range(steps):
            zs = np.sort(rng.choice(ok, min(o.batch, len(ok)), replace=False, p=p))
            xb, yb, wb = self.x[zs], yt[zs], wt[zs]
            if rng.random() < 0.5:
                xb, yb, wb = xb.flip(-1), yb.flip(-1), wb.flip(-1)
            logits, rec, mu, sigma = self._forward(xb)
            ce = torch.nn.functional.cross_entropy(logits, yb.clamp(min=0), reduction="none")
            ce = ((ce * wb).flatten(1).sum(1) / wb.flatten(1).sum(1)).mean()
            loss = ce
            if o.recon:
                kl = 0.5 * (mu.pow(2) + sigma.pow(2) - torch.log(sigma.pow(2) + 1e-12) - 1)
                vae = (rec - xb).abs().mean() + o.kl * kl.flatten(1).sum(1).mean()
                loss = loss + o.recon * vae
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
        net.eval()

    # ----------------------------------------------------------------- a round
    def __call__(self, ann: np.ndarray, strokes_round: np.ndarray):
        import _loop_methods as lm

        from napari_latentseg.engine.segment import FeatureCache, segment

        o = self.opts
        rng = np.random.default_rng(o.seed + 1000 * self.round)
        classes = [int(c) for c in np.unique(ann[ann > 0])]
        res = None
        if not o.forest_on_tuned or self.share is None:
            # The engine's forest on the input VAE: the prior's object share (and the mix).
            res = segment(self.model0, self.image, ann, modality=self.modality,
                          cache=self.cache, seed=o.seed, spacing=self.spacing)
            self.share = _share(res, self.share)
        t0 = time.perf_counter()
        self._train(ann, classes, rng)
        self.last_train_s = time.perf_counter() - t0
        if o.forest_on_tuned:
            tuned = copy.copy(self.model)
            tuned.head = None
            res = segment(tuned, self.image, ann, modality=self.modality, cache=FeatureCache(),
                          seed=o.seed, spacing=self.spacing)
            self.share = _share(res, self.share)
            probs = res.probabilities
        else:
            probs = self._probs()
            if o.mix < 1.0:
                probs = o.mix * probs + (1 - o.mix) * res.probabilities
        self.round += 1
        labels = lm.finish(probs, classes, ann, connected=True)
        return lm.Round(labels, probs, classes)


def _share(res, default):
    """The object's share of the scan the engine's adaptive forest estimated this round."""
    for h in res.history:
        if h.get("stage") == "forest" and h.get("object_share") is not None:
            return float(h["object_share"])
    return default


def torch_exp_half(log_var):
    """MONAI's ``z_sigma`` from its log-variance head (clamped as in ``encode``)."""
    import torch

    return torch.exp(torch.clamp(log_var, -30.0, 20.0) / 2)
