"""The fit's decoder phase: sharper reconstructions, the encoder (segmentation) untouched."""

from __future__ import annotations

import threading

import pytest
import torch

from napari_latentseg.engine.train import FitOptions, fit, fit_iter


def _encoder_state(net) -> dict:
    keep = ("encoder.", "quant_conv_mu.", "quant_conv_log_sigma.")
    return {k: v for k, v in net.state_dict().items() if k.startswith(keep)}


def _same(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_the_decoder_phase_trains_the_decoder_alone(small_phantom):
    base = dict(steps=12, eval_every=4, patience=0, seed=3, device="cpu")
    plain = fit(small_phantom.image, "tiny", FitOptions(decoder_steps=0, **base))
    res = fit(small_phantom.image, "tiny", FitOptions(decoder_steps=16, **base))
    assert plain.decoder_steps == 0 and plain.model.info["decoder_steps"] == 0
    assert res.steps == 12 and res.decoder_steps == 16
    assert res.model.info["decoder_steps"] == 16
    assert "+ 16 decoder steps" in res.model.describe()
    # Segmentation reads the encoder: bit for bit the plain fit's.
    assert _same(_encoder_state(res.model.net), _encoder_state(plain.model.net))
    phase = [h for h in res.history if h.get("phase") == "decoder"]
    assert [h["step"] for h in phase] == list(range(13, 29))
    assert all(h["total"] == 28 for h in phase)
    # The decoder learned, and the kept weights are never worse on validation than before.
    first, last = (sum(h["recon"] for h in hs) / 4 for hs in (phase[:4], phase[-4:]))
    assert last < first
    assert res.best_val <= plain.best_val
    if res.best_val < plain.best_val:
        dec = [k for k in res.model.net.state_dict() if k.startswith("decoder.")]
        assert any(not torch.equal(res.model.net.state_dict()[k], plain.model.net.state_dict()[k])
                   for k in dec)
    assert all(p.requires_grad for p in res.model.net.parameters())


def test_the_default_decoder_phase_has_as_many_steps_as_the_fit():
    assert FitOptions().planned_decoder_steps == 450
    assert FitOptions(steps=9).planned_decoder_steps == 9
    assert FitOptions(steps=9, decoder_steps=0).planned_decoder_steps == 0
    assert FitOptions(minutes=3).main_minutes == pytest.approx(1.8)
    assert FitOptions(minutes=3, decoder_steps=0).main_minutes == 3
    with pytest.raises(ValueError, match="decoder_steps"):
        FitOptions(decoder_steps=-1)


def test_a_stop_in_the_decoder_phase_keeps_a_whole_model(small_phantom):
    stop = threading.Event()
    opts = FitOptions(steps=6, decoder_steps=1000, eval_every=3, seed=1)
    gen = fit_iter(small_phantom.image, "tiny", opts, stop_event=stop)
    try:
        while True:
            ev = next(gen)
            if ev.get("phase") == "decoder" and ev["step"] == 10:
                stop.set()
    except StopIteration as done:
        result = done.value
    assert result.reason == "stopped"
    assert (result.steps, result.decoder_steps) == (6, 4)
    plain = fit(small_phantom.image, "tiny",
                FitOptions(steps=6, decoder_steps=0, eval_every=3, seed=1)).model
    assert _same(_encoder_state(result.model.net), _encoder_state(plain.net))
    assert result.model.anomaly["threshold"] > 0


def test_a_time_budget_is_shared_with_the_decoder_phase(small_phantom):
    res = fit(small_phantom.image, "tiny", FitOptions(steps=10**9, minutes=0.03, eval_every=10))
    assert res.reason == "time" and res.decoder_steps > 0
    main_end = max(h["elapsed"] for h in res.history if h.get("phase") != "decoder")
    # The main fit stops at 60 % of the budget (1.08 s), leaving the rest to the decoder.
    assert main_end < 0.03 * 60


def test_the_encoder_model_is_handed_over_when_the_decoder_phase_starts(small_phantom):
    gen = fit_iter(small_phantom.image, "tiny",
                   FitOptions(steps=8, decoder_steps=6, eval_every=4, seed=2))
    handed = []
    try:
        while True:
            ev = next(gen)
            if ev.get("model") is not None:
                handed.append(ev)
    except StopIteration as done:
        result = done.value
    assert len(handed) == 1 and handed[0]["step"] == 8
    interim = handed[0]["model"]
    assert interim.net is not result.model.net  # a copy: the decoder trains on apart
    assert interim.info["decoder_steps"] == 0 and not interim.anomaly
    assert _same(_encoder_state(interim.net), _encoder_state(result.model.net))
    # No decoder phase, no hand-over.
    plain = [ev for ev in fit_iter(small_phantom.image, "tiny",
                                   FitOptions(steps=4, decoder_steps=0, eval_every=2))
             if ev.get("model") is not None]
    assert plain == []
