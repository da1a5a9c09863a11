"""Probe: how the VAE's latent size limits the reconstruction (issue #14's PSNR target).

Fits each preset (and the losing variants of ``variants()``) on full-size brain1 with the
product's default fit options (cached beside the interactive benchmark's VAEs,
``<case>-<config>``) and reports the fit's seconds and steps, and the reconstruction PSNR in
the head in scan units (the issue's figure, computed by ``bench_anomaly.psnr_and_timing``).
The same models then go to ``_probe_pcs.py --config`` for their value as segmentation
columns.

Usage: ``LATENTSEG_NUM_THREADS=1 OMP_NUM_THREADS=1 PYTHONPATH=src python
benchmarks/_psnr_latent.py [--configs ...] [--cases brain1] [--steps N] [--lr X]
[--schedule cosine] [--seed N] [--loss l2] [--decoder-steps N]``;
writes ``benchmarks/results/psnr-latent.json``.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
import _interactive as ia  # noqa: E402
import bench_anomaly as ba  # noqa: E402


def variants() -> dict:
    """Latent sizes measured in session 6 that lost (not product presets)."""
    from napari_latentseg.models.config import ModelConfig

    return {
        "cpu-2d-wide": ModelConfig(name="cpu-2d-wide", latent_channels=16,
                                   description="cpu-2d with a 16-channel latent at 1/4"),
        "cpu-2d-fine8": ModelConfig(name="cpu-2d-fine8", channels=(16, 32), latent_channels=8,
                                    description="cpu-2d-fine with an 8-channel latent"),
        "cpu-2d-fine32": ModelConfig(name="cpu-2d-fine32", channels=(32, 64),
                                     description="cpu-2d-fine with channels 32-64"),
        # Session 15: more, cheaper steps for the same compute (fitted with --steps 900).
        "cpu-2d-fine-b8": ModelConfig(name="cpu-2d-fine-b8", channels=(16, 32), batch_size=8,
                                      description="cpu-2d-fine, batches of 8"),
        "cpu-2d-fine-p64": ModelConfig(name="cpu-2d-fine-p64", channels=(16, 32),
                                       patch_size=(64, 64),
                                       description="cpu-2d-fine, 64x64 patches"),
        # cpu-2d-fine as it was until session 15 (96x96 crops), for same-run comparisons.
        "cpu-2d-fine-p96": ModelConfig(name="cpu-2d-fine-p96", channels=(16, 32),
                                       patch_size=(96, 96),
                                       description="cpu-2d-fine with 96x96 crops"),
    }


def main() -> None:
    from napari_latentseg.io import read_volume

    p = argparse.ArgumentParser()
    p.add_argument("--configs", nargs="+", default=["cpu-2d", "cpu-2d-fine", "cpu-2d-wide",
                                                     "cpu-2d-fine8", "cpu-2d-fine32"])
    p.add_argument("--cases", nargs="+", default=["brain1"],
                   help="scans each preset is fitted on; PSNR is always measured on brain1")
    p.add_argument("--steps", type=int, default=None,
                   help="fit this many steps instead of the default")
    p.add_argument("--lr", type=float, default=None,
                   help="fit with this learning rate instead of the default")
    p.add_argument("--schedule", default=None, help="fit with this learning-rate schedule")
    p.add_argument("--seed", type=int, default=None, help="fit with this seed (default 0)")
    p.add_argument("--loss", default=None, help="reconstruction loss (default l1)")
    p.add_argument("--decoder-steps", type=int, default=None,
                   help="steps of the decoder phase (default: as many as the steps)")
    p.add_argument("--out", type=Path, default=HERE / "results")
    a = p.parse_args()
    path = a.out / "psnr-latent.json"
    rows = json.loads(path.read_text()) if path.exists() else []  # earlier runs' presets
    for case in a.cases:
        image = read_volume(ia.DEFAULT_DATA / f"{case}_image.nrrd").data.astype("float32")
        extra = {k: v for k, v in (("seed", a.seed), ("recon_loss", a.loss),
                                   ("decoder_steps", a.decoder_steps)) if v is not None}
        suffix = ia.fit_suffix(a.steps, a.lr, a.schedule, **extra)
        for cfg in a.configs:
            t = time.perf_counter()
            model, fit_s = ia.get_model(case, image, "MR", config=variants().get(cfg, cfg),
                                        steps=a.steps, lr=a.lr, schedule=a.schedule,
                                        **extra)
            n_par = sum(p.numel() for p in model.net.parameters())
            row = {"case": case, "config": cfg + suffix,
                   "fit_s": fit_s, "steps": model.info.get("steps"),
                   "parameters": n_par, "load_s": round(time.perf_counter() - t, 1),
                   **ba.psnr_and_timing(model, quick=True),
                   "psnr_note": f"fitted on full-size {case}, measured on full-size brain1"}
            rows = [r for r in rows if (r["case"], r["config"]) != (case, row["config"])]
            rows.append(row)
            print(json.dumps(row), flush=True)
            a.out.mkdir(parents=True, exist_ok=True)
            path.write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
