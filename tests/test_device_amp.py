"""Mixed precision type: bfloat16 only where the GPU has it natively (checked without a GPU)."""

from __future__ import annotations

import contextlib

import pytest
import torch

from napari_latentseg.runtime.device import amp_dtype, autocast


def test_no_mixed_precision_off_cuda():
    cpu = torch.device("cpu")
    assert amp_dtype(cpu) is None
    assert isinstance(autocast(cpu), contextlib.nullcontext)


@pytest.mark.parametrize("capability, dtype", [((7, 0), torch.float16), ((7, 5), torch.float16),
                                               ((8, 0), torch.bfloat16), ((9, 0), torch.bfloat16)])
def test_bf16_only_from_ampere(monkeypatch, capability, dtype):
    # V100 (7.0) / T4 (7.5) only emulate bfloat16, which torch.cuda.is_bf16_supported() accepts.
    asked = []
    monkeypatch.setattr(torch.version, "hip", None)
    monkeypatch.setattr(torch.cuda, "get_device_capability",
                        lambda d=None: asked.append(d) or capability)
    dev = torch.device("cuda", 1)
    assert amp_dtype(dev) is dtype
    assert asked == [dev]  # the device asked about, not the current one


def test_adversarial_fit_runs_through_both_scalers(small_phantom):
    # On the CPU the scalers are disabled pass-throughs; this checks the discriminator's path.
    import numpy as np

    from napari_latentseg.engine.train import FitOptions, fit

    res = fit(small_phantom.image, "tiny", FitOptions(steps=3, eval_every=1, adversarial=True,
                                                      adversarial_start=1), modalities=["MR"])
    assert res.steps == 3
    main = [h for h in res.history if h.get("phase") != "decoder"]  # the decoder's L1 alone
    assert len(main) == 3
    assert all(np.isfinite(h["adv_d"]) and np.isfinite(h["adv_g"]) for h in main)
