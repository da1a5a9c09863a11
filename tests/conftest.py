"""Shared fixtures: small generated data and a tiny fitted model (no files from outside)."""

from __future__ import annotations

import os

import numpy as np
import pytest

# Qt without a display unless a test asks for Xvfb (pytest-xvfb sets DISPLAY when it runs).
os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")


@pytest.fixture(scope="session")
def small_phantom():
    """A (12, 40, 40) phantom: fast enough for every test."""
    from napari_latentseg.data.phantom import make_phantom

    return make_phantom((12, 40, 40), spacing=(4.0, 4.0, 4.0), seed=3)


@pytest.fixture(scope="session")
def tiny_model(small_phantom):
    """A tiny 2D VAE fitted for a few steps on the small phantom."""
    from napari_latentseg.engine.train import FitOptions, fit

    result = fit(small_phantom.image, "tiny", FitOptions(steps=40, eval_every=10, seed=0),
                 modalities=["MR"], sources=["phantom"])
    return result.model


@pytest.fixture(scope="module")
def annotations(small_phantom):
    """The small phantom's labels painted whole on slices 4 and 8."""
    from napari_latentseg.data.phantom import annotation_from_labels

    return annotation_from_labels(small_phantom.labels, [4, 8])


@pytest.fixture(scope="module")
def few_shot(tiny_model, small_phantom, annotations):
    """The default few-shot round of the tiny model on those annotations."""
    from napari_latentseg.engine.segment import segment

    return segment(tiny_model, small_phantom.image, annotations)


@pytest.fixture
def rng():
    return np.random.default_rng(0)


@pytest.fixture(autouse=True)
def recovery_dir(tmp_path, monkeypatch):
    """Autosaved annotations go to the test's own folder, never to ~/.cache."""
    folder = tmp_path / "recovery"
    monkeypatch.setenv("LATENTSEG_RECOVERY_DIR", str(folder))
    return folder


@pytest.fixture(autouse=True)
def short_denoiser(monkeypatch):
    """The default anomaly score of an MR scan fits a denoiser (300 steps, ~1 min on a CPU):
    tests fit a tiny one, as they fit tiny VAEs. A test that needs more steps sets
    ``LATENTSEG_DAE_STEPS`` itself."""
    # Through the environment, so CLI subprocesses and dask workers fit a tiny one too.
    monkeypatch.setenv("LATENTSEG_DAE_STEPS", "12")


@pytest.fixture(scope="session")
def chest_ct():
    """Factory of small chest-like CTs in HU (8 x 48 x 48): chest wall around a lung, and with
    ``nodule=True`` a 40 HU nodule at [3:5, 22:26, 18:22]."""
    def make(seed: int, nodule: bool = False) -> np.ndarray:
        rng = np.random.default_rng(seed)
        ct = np.full((8, 48, 48), -1000.0, np.float32)
        ct[:, 3:45, 3:45] = rng.normal(40.0, 20.0, (8, 42, 42))
        ct[:, 10:38, 10:38] = rng.normal(-850.0, 30.0, (8, 28, 28))
        if nodule:
            ct[3:5, 22:26, 18:22] = 40.0
        return ct

    return make


@pytest.fixture(scope="session")
def scene():
    """A bright block (the object) inside a plate of tissue on a dark field; one stroke of
    the object and a small one of background on the plate: everything unlike that background
    stroke looks like the object to a forest without the prior."""
    rng = np.random.default_rng(0)
    vol = rng.normal(0, 0.3, (8, 64, 64)).astype(np.float32)
    vol[:, 10:50, 10:50] += 1.0
    vol[2:6, 25:35, 25:35] += 1.5
    truth = np.zeros(vol.shape, bool)
    truth[2:6, 25:35, 25:35] = True
    ann = np.zeros(vol.shape, np.uint8)
    ann[4, 29:32, 29:32] = 2
    ann[4, 12:14, 12:14] = 1
    return vol, ann, truth
