"""Few-shot without a fitted VAE: the forest on the ilastik multiscale set alone.

The benchmark (``docs/interactive_benchmarks.md``) measures the VAE features adding little to
the forest on strokes (+0.013 mean AUC over seven cases in session 18), while the fit costs
minutes. A scan can therefore be segmented before (or without) any fit. The rounds'
machinery takes a model for the intensity normalisation and the slice context;
:func:`features_only_model` builds the smallest one, untrained, whose network is never run
(``vae_features=False``).
"""

from __future__ import annotations

import numpy as np

from ...models.checkpoint import VAEModel

__all__ = ["features_only_model", "NO_MODEL_NOTE"]

NO_MODEL_NOTE = ("no model: the forest used the ilastik multiscale features (no VAE "
                 "features, no fit needed)")


def features_only_model(volume: np.ndarray, modality: str | None = None) -> VAEModel:
    """A stand-in model for feature-only rounds: the modality's normalisation, the ``tiny``
    configuration's geometry, weights never used (fixed seed, so caches stay valid)."""
    import torch

    from ...models.config import build_network, get_config
    from ..normalize import Normalizer, guess_modality

    config = get_config("tiny")
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        net = build_network(config).eval()
    norm = Normalizer.for_modality(guess_modality(np.asarray(volume), modality))
    return VAEModel(net=net, config=config, normalization=norm.to_dict(),
                    info={"features_only": True})
