"""The denoiser's readings of a near-isotropic scan are combined by consensus: a finding must
stand out in every orientation (and, in self mode, to every fit) to stand out in the map."""

from __future__ import annotations

import numpy as np
import pytest

SHAPE = (36, 40, 44)  # distinct sides: each orientation's slices have their own shape
COMMON, ONE_ONLY = (18, 20, 22), (10, 12, 30)


def _reading(spikes) -> np.ndarray:
    """A normalised-looking score (noise around 0) with a 3-voxel blob of 8 at each spike."""
    rng = np.random.default_rng(len(spikes))
    s = rng.normal(0.0, 1.0, SHAPE).astype(np.float32)
    for z, y, x in spikes:
        s[z - 1:z + 2, y - 1:y + 2, x - 1:x + 2] += 8.0
    return s


def test_consensus_is_the_voxelwise_minimum():
    from napari_latentseg.engine.anomaly_residual import consensus

    a = np.array([0.0, 5.0, 2.0], np.float32)
    b = np.array([1.0, 1.0, 3.0], np.float32)
    np.testing.assert_array_equal(consensus([a, b]), [0.0, 1.0, 2.0])
    np.testing.assert_array_equal(consensus([a]), a)
    assert consensus(iter([a, b])).dtype == np.float32
    with pytest.raises(ValueError, match="at least one"):
        consensus([])


def test_three_orientations_must_agree(monkeypatch):
    """With ``agree`` (self mode) a blob seen in the axial slices alone (a grey-matter fold
    reaching across them) is not a finding; one seen in all three orientations is. Without
    (a normative fit) the orientations are summed and a strong single reading still shows."""
    import napari_latentseg.engine.anomaly_dae as D
    from napari_latentseg.runtime.progress import drive

    orders = {tuple(np.transpose(np.empty(SHAPE), o).shape): o for o in D.PLANES}

    def fake_plane(nets, xo, mo, so, device, lower, stop, stage="x"):
        order = orders[xo.shape]
        spikes = [COMMON, ONE_ONLY] if order == D.PLANES[0] else [COMMON]
        yield {"stage": stage, "done": 1, "total": 1}
        return np.ascontiguousarray(np.transpose(_reading(spikes), order))

    monkeypatch.setattr(D, "_plane_score", fake_plane)
    x = np.ones(SHAPE, np.float32)
    mask = np.ones(SHAPE, bool)
    s = drive(D.dae_score_iter([], x, mask, spacing=(1.2, 1.2, 1.2), lower_symmetric=False,
                               agree=True))
    assert s.shape == SHAPE
    top = np.percentile(s, 99.5)
    assert s[COMMON] > top  # every orientation saw it
    assert s[ONE_ONLY] < top  # the axial reading alone did
    summed = drive(D.dae_score_iter([], x, mask, spacing=(1.2, 1.2, 1.2),
                                    lower_symmetric=False))
    assert summed[COMMON] > summed[ONE_ONLY] > np.percentile(summed, 99.5)
    # Thick slices are read once, axially: the same reading passes through.
    thick = drive(D.dae_score_iter([], x, mask, spacing=(6.5, 1.2, 1.2),
                                   lower_symmetric=False))
    assert thick[ONE_ONLY] > np.percentile(thick, 99.5)


def test_self_mode_keeps_what_every_fit_finds(monkeypatch):
    """On a near-isotropic scan self mode fits the denoiser :data:`DAE_FITS_THIN` times: a
    finding of one fit's seed alone is dropped, one every fit makes is kept; thick slices
    fit once."""
    import napari_latentseg.engine.anomaly_dae as D
    from napari_latentseg.runtime.progress import drive

    def fake_fit(scans, *, steps=None, seed=0, **kw):
        yield {"stage": "fit", "done": 1, "total": 1}
        return seed  # the "network" is its seed

    agreed = []

    def fake_score(seed, x, mask, **kw):
        agreed.append(kw.get("agree"))  # self mode asks each fit for agreeing orientations
        yield {"stage": "score", "done": 1, "total": 1}
        return _reading([COMMON, ONE_ONLY] if seed == 7 else [COMMON])

    monkeypatch.setattr(D, "fit_dae_iter", fake_fit)
    monkeypatch.setattr(D, "dae_score_iter", fake_score)
    x, mask = np.ones(SHAPE, np.float32), np.ones(SHAPE, bool)
    s = drive(D.dae_raw_iter(x, mask, spacing=(1.2, 1.2, 1.2), seed=7, lower_symmetric=False))
    top = np.percentile(s, 99.5)
    assert s[COMMON] > top and s[ONE_ONLY] < top
    assert agreed == [True] * D.DAE_FITS_THIN
    thick = drive(D.dae_raw_iter(x, mask, spacing=(6.5, 1.2, 1.2), seed=7,
                                 lower_symmetric=False))
    assert thick[ONE_ONLY] > np.percentile(thick, 99.5)  # one fit: its findings stand
