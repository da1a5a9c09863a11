"""Probe: the denoiser's noise scale and residual smoothing, on bench_anomaly's MR cases.

The engine's ``dae`` score (``engine/anomaly_dae.py``) heals coarse noise drawn on an 8 x 8
grid over a 64-voxel crop (cells of ~12 mm at 1.5 mm). Implanted spheres of 8-26 mm diameter
come back nearly untouched (their residual is an edge ring, not a disk), so this probe
measures, in one run and on the same cases and seed, the engine's recipe against coarser or
mixed noise grids, a stronger noise, and wider smoothing of the final score. Each variant
patches the engine module for its fit and restores it afterwards.

Usage: ``LATENTSEG_NUM_THREADS=1 OMP_NUM_THREADS=1 PYTHONPATH=src python
benchmarks/_dae_noise.py [--variants base res4 ...] [--cases ...] [--tag T]``; writes
``benchmarks/results/dae-noise{T}.json`` / ``.md``.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
import bench_anomaly as B  # noqa: E402

# name: (noise grid cells per crop side: an int or a tuple drawn from per batch, noise std)
VARIANTS = {
    "base": (8, 0.2),  # the engine's recipe
    "res4": (4, 0.2),  # cells twice as wide (~24 mm)
    "mix": ((4, 8, 16), 0.2),  # a grid drawn per batch: lesions of several sizes
    "std3": (8, 0.3),
    "mix-std3": ((4, 8, 16), 0.3),
}
SMOOTH = (0.0, 1.5)  # extra Gaussian sigma (in-plane voxels) on the final score, post hoc
MR_CASES = ["brain1-tumour", "brain1-syn-tissue", "brain1-syn-dark", "brain1-syn-bright",
            "brain2-tumour", "brain2-syn-tissue", "brain2-syn-dark", "brain2-syn-bright",
            "phantom"]


def patched(res, std):
    """A context that makes the engine draw its coarse noise with ``res`` cells (an int, or a
    tuple to draw from per batch) and ``std``."""
    import contextlib

    import torch

    import napari_latentseg.engine.anomaly_dae as D

    engine = D._coarse_noise

    def coarse(n, size, mask, gen, **_):  # ``res`` overrides every cycle's grid
        r = res if isinstance(res, int) else int(res[int(torch.randint(len(res), (1,),
                                                                       generator=gen))])
        return engine(n, size, mask, gen, res=r, std=std)

    @contextlib.contextmanager
    def ctx():
        D._coarse_noise = coarse
        try:
            yield
        finally:
            D._coarse_noise = engine

    return ctx()


def main() -> None:
    from scipy import ndimage

    from napari_latentseg.engine.anomaly import anomaly_map

    p = argparse.ArgumentParser()
    p.add_argument("--variants", nargs="+", default=list(VARIANTS))
    p.add_argument("--cases", nargs="+", default=MR_CASES)
    p.add_argument("--tag", default="")
    p.add_argument("--seed", type=int, default=0, help="the denoiser's seed")
    p.add_argument("--out", type=Path, default=HERE / "results")
    a = p.parse_args()
    cases = [c for c in B.build_cases(False)[0] if c["name"] in a.cases]
    rows, t_all = [], time.perf_counter()
    out = a.out / f"dae-noise{a.tag}"
    for c in cases:
        v, truth = c["v"], c["truth"]
        _, smask, fmask = B.case_masks(c)
        for name in a.variants:
            res_, std = VARIANTS[name]
            t = time.perf_counter()
            with patched(res_, std):
                r = anomaly_map(None, v, modality=c["mod"], method="dae", spacing=c["sp"],
                                error_map=False, seed=a.seed)
            secs = time.perf_counter() - t
            for sm in SMOOTH:
                s = r.score if not sm else ndimage.gaussian_filter(r.score, (0, sm, sm))
                bd, ap = B.curve_metrics(s, truth, smask)
                row = {"case": c["name"], "variant": name, "seed": a.seed, "smooth": sm,
                       "best_dice": bd, "auprc": ap, "seconds": round(secs, 1)}
                if not sm:
                    row["dice_at_threshold"] = B.dice(r.labels > 0, truth & smask)
                    if c["fp"]:
                        row["fp_pct_head"] = float(100 * (r.labels[fmask] > 0).mean())
                rows.append(row)
                print(json.dumps(row), flush=True)
            out.parent.mkdir(parents=True, exist_ok=True)
            out.with_suffix(".json").write_text(json.dumps(
                {"rows": rows, "seconds": round(time.perf_counter() - t_all, 1)}, indent=1))
    out.with_suffix(".md").write_text(markdown(rows))
    print(markdown(rows))


def markdown(rows: list[dict]) -> str:
    """Best Dice per case (columns) and variant + smoothing (rows), with the mean."""
    cases = list(dict.fromkeys(r["case"] for r in rows))
    keys = list(dict.fromkeys((r["variant"], r["smooth"]) for r in rows))
    out = ["| variant | smooth | " + " | ".join(cases) + " | mean |",
           "|---|---|" + "---|" * (len(cases) + 1)]
    for k in keys:
        vals = [next((r["best_dice"] for r in rows if (r["variant"], r["smooth"]) == k
                      and r["case"] == c), None) for c in cases]
        got = [x for x in vals if x is not None]
        out.append(f"| {k[0]} | {k[1]:g} | " + " | ".join(
            "" if x is None else f"{x:.3f}" for x in vals) + f" | {np.mean(got):.3f} |")
    return "\n".join(out) + "\n"


if __name__ == "__main__":
    main()
