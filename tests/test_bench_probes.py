"""The session-5 probes patch the engine only while they run, and patch it as they say."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
import _dae_noise  # noqa: E402


def _roughness(res) -> float:
    """Mean |neighbour difference| / std of the patched coarse noise on a 64 x 64 crop."""
    import torch

    import napari_latentseg.engine.anomaly_dae as D

    with _dae_noise.patched(res, 0.2):
        n = D._coarse_noise(8, 64, torch.ones(8, 1, 64, 64), torch.Generator().manual_seed(0))
    n = n.numpy()
    assert n.shape == (8, 1, 64, 64)
    return float(np.abs(np.diff(n, axis=-1)).mean() / n.std())


def test_noise_patch_sets_the_grid_and_restores_the_engine():
    import napari_latentseg.engine.anomaly_dae as D

    original = D._coarse_noise
    coarse, fine = _roughness(4), _roughness(16)
    assert D._coarse_noise is original  # restored after each use
    # Cells of 16 voxels vary about four times slower than cells of 4.
    assert fine > 2.5 * coarse
    mixed = _roughness((4, 16))
    assert coarse * 0.9 <= mixed <= fine * 1.1
