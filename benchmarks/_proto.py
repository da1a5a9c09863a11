"""Prototype columns for the forest loop (a probe of issue #13: can the latent pay?).

A forest splits one column at a time, so it cannot measure how close a voxel's latent vector
is to the painted voxels' as a whole. ``ProtoLoop`` adds, each round, one column per painted
class: the distance (root mean square over the source columns, standardised over the scan) of
every voxel's features to the mean feature vector of the class's painted voxels (few-shot
segmentation's prototypes), or with ``metric="diag"`` the same scaled by the class's own
spread per column (a diagonal Mahalanobis distance). ``source`` says which columns the
prototypes are built from: ``"vae"`` (the latent and encoder components: the VAE's share),
``"ilastik"`` (the control: does the mechanism alone help?) or ``"all"``; ``object_only``:
in two-class rounds, the object's column alone.
"""

from __future__ import annotations

import _loop_methods as lm
import numpy as np

CHUNK = 1 << 18


class ProtoLoop(lm.ForestLoop):
    """``lm.ForestLoop`` with per-class prototype-distance columns recomputed every round."""

    def __init__(self, feats: np.ndarray, spacing, opts: lm.LoopOptions, setup_s: float,
                 source: str = "vae", metric: str = "euclid", floor: float = 0.1,
                 object_only: bool = False):
        super().__init__(feats, spacing, opts, setup_s)
        cols = {"vae": slice(lm.N_MULTISCALE, None), "ilastik": slice(0, lm.N_MULTISCALE),
                "all": slice(None)}[source]
        src = feats[..., cols]
        self.src = src.reshape(-1, src.shape[-1])
        sub = self.src[:: max(1, len(self.src) // 50_000)].astype(np.float32)
        self.mu, self.sd = sub.mean(0), sub.std(0) + 1e-3
        self.metric, self.floor = metric, floor
        # Two-class tasks: only the object's prototype (the prior's background class is
        # mostly unpainted, so its prototype describes one stroke).
        self.object_only = object_only
        self.base = self.feats

    def columns(self, ann: np.ndarray) -> np.ndarray:
        """(z, y, x, n_painted_classes) float16 distances to each painted class's prototype."""
        flat = ann.reshape(-1)
        classes = np.unique(flat[flat > 0])
        if self.object_only and len(classes) == 2:
            classes = classes[classes != self.opts.pu_class]
        protos, scales = [], []
        for c in classes:
            x = (self.src[flat == c].astype(np.float32) - self.mu) / self.sd
            protos.append(x.mean(0))
            scales.append(x.var(0) + self.floor if self.metric == "diag"
                          else np.ones(x.shape[1], np.float32))
        out = np.empty((len(flat), len(classes)), dtype=np.float16)
        for i in range(0, len(flat), CHUNK):
            z = (self.src[i : i + CHUNK].astype(np.float32) - self.mu) / self.sd
            for j, (m, s) in enumerate(zip(protos, scales, strict=True)):
                out[i : i + CHUNK, j] = np.sqrt((((z - m) ** 2) / s).mean(1))
        return out.reshape(ann.shape + (len(classes),))

    def __call__(self, ann: np.ndarray, strokes_round: np.ndarray) -> lm.Round:
        self.feats = np.concatenate([self.base, self.columns(ann)], -1)
        try:
            return super().__call__(ann, strokes_round)
        finally:
            self.feats = self.base
