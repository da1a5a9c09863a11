"""Probe: the decoder phase's steps, learning rate and crop size (issue #14's PSNR target).

Takes the case's default VAE fitted without a decoder phase (``--decoder-steps 0``, cached
beside the interactive benchmark's VAEs; fitted once when missing), runs the product's decoder
phase (:func:`napari_latentseg.engine.polish.polish_iter`) with the steps, peak learning rate
and crop size asked for, and reports the PSNR before and after with the phase's seconds:
normalised, on the held-out slices (as ``bench_engine.py``), and for brain1 also in the head
in scan units (``bench_anomaly.psnr_and_timing``, the issue's figure). The main fit's recipe
is the default; only the phase's changes.

Usage: ``LATENTSEG_NUM_THREADS=1 OMP_NUM_THREADS=1 PYTHONPATH=src python
benchmarks/_decoder_phase.py --steps 300 --lr 2e-3 [--seed N] [--case lung1] [--crop 64]``;
appends to ``benchmarks/results/decoder-phase.json``.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
import _interactive as ia  # noqa: E402
import bench_anomaly as ba  # noqa: E402


def heldout_psnr(model, image, modality: str, opts) -> float:
    """PSNR of the held-out slices' reconstruction, normalised over the clipping range (the
    figure ``bench_engine.py`` reports)."""
    from skimage.metrics import peak_signal_noise_ratio

    from napari_latentseg.engine.infer import reconstruct
    from napari_latentseg.engine.normalize import Normalizer
    from napari_latentseg.engine.sampling import holdout_slices

    held = holdout_slices(image.shape[0], opts.holdout_every)
    rec = reconstruct(model, image, modality=modality, anomalies=False)
    norm = Normalizer.from_dict(rec.info["normalization"])
    return float(peak_signal_noise_ratio(norm(image[held]), norm(rec.reconstruction[held]),
                                         data_range=norm.clip_high - norm.clip_low))


def main() -> None:
    import torch

    from napari_latentseg.engine.polish import DecoderPhase, polish_iter
    from napari_latentseg.engine.sampling import CropSampler, prepare_volume
    from napari_latentseg.engine.train import FitOptions
    from napari_latentseg.runtime.device import configure_threads

    p = argparse.ArgumentParser()
    p.add_argument("--steps", type=int, default=300)
    p.add_argument("--lr", type=float, default=FitOptions.lr)
    p.add_argument("--seed", type=int, default=0, help="the main fit's seed")
    p.add_argument("--case", default="brain1")
    p.add_argument("--crop", type=int, default=None,
                   help="crop side of the phase (default: the model's own crops)")
    p.add_argument("--out", type=Path, default=HERE / "results")
    a = p.parse_args()
    configure_threads()
    image, _, modality, _ = ia.load_case(a.case)
    extra = {"seed": a.seed} if a.seed else {}
    model, _ = ia.get_model(a.case, image, modality, config="cpu-2d-fine", decoder_steps=0,
                            **extra)
    opts = dataclasses.replace(FitOptions(), decoder_steps=a.steps, lr=a.lr)

    def psnrs() -> dict:
        out = {"heldout_db": round(heldout_psnr(model, image, modality, opts), 2)}
        if a.case == "brain1":
            out["head_db"] = round(ba.psnr_and_timing(model, quick=True)[
                "psnr_brain1_restored_db"], 2)
        return out

    before = psnrs()
    prepared = prepare_volume(image, modality, holdout_every=opts.holdout_every, seed=a.seed)
    cfg = model.config
    if a.crop:
        cfg = dataclasses.replace(cfg, patch_size=(a.crop, a.crop))
    sampler = CropSampler([prepared], cfg, seed=a.seed + 1000)
    val = torch.from_numpy(sampler.validation_batch(16))
    net = model.net.train()

    def validate() -> float:
        with torch.inference_mode():
            return float((net.reconstruct(val) - val).abs().mean())

    # The fit's own pieces on the CPU: no mixed precision, no scaling, one process.
    phase = DecoderPhase(net, lambda: torch.from_numpy(sampler.sample()), validate,
                         lambda x: x, lambda *f: list(f), wrap=lambda m: m,
                         autocast=contextlib.nullcontext,
                         scaler=torch.amp.GradScaler("cuda", enabled=False),
                         clock=time.perf_counter)
    t0 = time.perf_counter()
    gen = polish_iter(phase, opts, steps=a.steps, first_step=0, total=a.steps,
                      best_val=validate(), deadline_s=None, t_start=t0)
    while True:
        try:
            next(gen)
        except StopIteration as done:
            steps, reason, _ = done.value
            break
    seconds = time.perf_counter() - t0
    net.eval()
    after = psnrs()
    row = {"case": a.case, "seed": a.seed, "steps": steps, "reason": reason, "lr": a.lr,
           "crop": list(cfg.patch_size), "psnr_before": before, "psnr_after": after,
           "seconds": round(seconds, 1), "s_per_step": round(seconds / max(1, steps), 3)}
    print(json.dumps(row), flush=True)
    path = a.out / "decoder-phase.json"
    rows = json.loads(path.read_text()) if path.exists() else []
    rows.append(row)
    a.out.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
