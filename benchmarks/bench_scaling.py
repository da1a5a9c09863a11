"""Scaling: reconstruction and segmentation time and peak memory against voxel count.

Synthetic CT-like volumes of 64^3, 128^3, 256^3 and 400x512x512 voxels (a body ellipse in
air with two lungs and a tumour sphere, HU with noise, int16 like real CT) go through the
pipeline with a model already fitted: ``reconstruct`` (reconstruction, error map, anomaly
candidates) and ``segment`` (the default few-shot forest from three annotated axial slices).
Each stage of each size runs in its own process, so its peak RSS is its own. The model is the
default ``cpu-2d`` configuration fitted once for 150 steps on the 128^3 volume (the fit cost
does not grow with the volume: it is a number of steps on crops).

Usage: ``python benchmarks/bench_scaling.py [--sizes 64 128 256 big] [--device auto]``
Writes ``benchmarks/results/scaling.json`` and ``scaling.md``.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from bench_engine import _peak_rss_mb, machine  # noqa: E402

SIZES = {"64": (64, 64, 64), "128": (128, 128, 128), "256": (256, 256, 256),
         "big": (400, 512, 512)}


def synthetic_ct(shape: tuple[int, int, int], seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """(CT volume int16 HU, truth labels 1 air, 2 body, 3 lung, 4 tumour), built slab by slab."""
    rng = np.random.default_rng(seed)
    z, h, w = shape
    img = np.empty(shape, dtype=np.int16)
    lab = np.empty(shape, dtype=np.uint8)
    yy, xx = np.ogrid[:h, :w]
    yy, xx = yy / h - 0.5, xx / w - 0.5
    body = (yy / 0.4) ** 2 + (xx / 0.45) ** 2 < 1
    centre = np.array([0.5, 0.45, 0.35]) * np.array(shape)
    radius = 0.08 * min(shape[1:])
    for k in range(z):
        t = k / max(1, z - 1)
        lung_r = 0.3 * np.sin(np.pi * t) + 0.05
        lungs = (((yy / (0.6 * lung_r)) ** 2 + ((np.abs(xx) - 0.2) / (0.4 * lung_r)) ** 2) < 1)
        sl = np.ones((h, w), dtype=np.uint8)
        sl[body] = 2
        sl[lungs & body] = 3
        dz = (k - centre[0]) * (shape[1] / shape[0])  # a sphere in voxel units of the plane
        yy2 = (np.arange(h)[:, None] - centre[1]) ** 2 + (np.arange(w)[None, :] - centre[2]) ** 2
        sl[(yy2 + dz**2 < radius**2) & (sl == 3)] = 4
        hu = np.choose(sl - 1, [-1000, 40, -850, 60]).astype(np.float32)
        img[k] = np.clip(hu + rng.normal(0, 25, size=(h, w)), -1024, 3000).astype(np.int16)
        lab[k] = sl
    return img, lab


def _model(models_dir: Path, device: str) -> Path:
    from napari_latentseg.engine.train import FitOptions, fit
    from napari_latentseg.models.checkpoint import save_model

    path = models_dir / "scaling-ct.pt"
    if not path.exists():
        img, _ = synthetic_ct(SIZES["128"])
        res = fit(img, options=FitOptions(steps=150, device=device), modalities=["CT"])
        models_dir.mkdir(parents=True, exist_ok=True)
        save_model(res.model, path)
    return path


def child(stage: str, size: str, model_path: Path, device: str) -> dict:
    """One stage on one size, in this (fresh) process."""
    from napari_latentseg.engine.infer import reconstruct
    from napari_latentseg.engine.segment import segment
    from napari_latentseg.models.checkpoint import load_model

    shape = SIZES[size]
    img, truth = synthetic_ct(shape)
    model = load_model(model_path, device=device)
    base = _peak_rss_mb()
    t0 = time.perf_counter()
    out = {"stage": stage, "size": size, "shape": list(shape), "voxels": int(img.size),
           "input_mb": round(img.nbytes / 2**20)}
    if stage == "reconstruct":
        res = reconstruct(model, img, modality="CT")
        out["candidates"] = res.n_candidates
        out["device"] = res.info["device"]
    else:
        zs = np.linspace(0.3, 0.7, 3).round(2) * (shape[0] - 1)
        ann = np.zeros_like(truth)
        for z in zs.astype(int):
            ann[z] = truth[z]
        res = segment(model, img, ann, modality="CT")
        keep = np.ones(shape[0], bool)
        keep[zs.astype(int)] = False
        p, t = res.labels[keep], truth[keep]
        out["dice"] = {str(c): round(float(2 * ((p == c) & (t == c)).sum()
                                           / max(1, (p == c).sum() + (t == c).sum())), 3)
                       for c in (2, 3, 4)}
    secs = time.perf_counter() - t0
    out.update(seconds=round(secs, 1), mvox_per_s=round(img.size / secs / 1e6, 3),
               rss_before_mb=round(base), peak_rss_mb=round(_peak_rss_mb()))
    return out


def to_markdown(rows: list[dict], info: dict) -> str:
    lines = [f"Machine: {info.get('cpu')} ({info.get('cores')} cores), torch {info['torch']}"
             + (f", GPU {info['gpu']}" if "gpu" in info else ""), "",
             "| stage | shape | Mvoxels | seconds | Mvoxel/s | input MB | peak RSS MB |",
             "|---|---|---|---|---|---|---|"]
    for r in rows:
        if "error" in r:
            lines.append(f"| {r['stage']} | {r['size']} | – | failed: {r['error']} | | | |")
            continue
        lines.append(f"| {r['stage']} | {'x'.join(map(str, r['shape']))} | "
                     f"{r['voxels'] / 1e6:.1f} | {r['seconds']:.1f} | {r['mvox_per_s']:.2f} | "
                     f"{r['input_mb']} | {r['peak_rss_mb']} |")
    return "\n".join(lines) + "\n"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--sizes", nargs="+", default=list(SIZES), choices=list(SIZES))
    p.add_argument("--stages", nargs="+", default=["reconstruct", "segment"])
    p.add_argument("--device", default="auto")
    p.add_argument("--out", type=Path, default=HERE / "results")
    p.add_argument("--child", nargs=3, metavar=("STAGE", "SIZE", "MODEL"), help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.child:
        print(json.dumps(child(args.child[0], args.child[1], Path(args.child[2]), args.device)))
        return
    args.out.mkdir(parents=True, exist_ok=True)
    model = _model(args.out / "models", args.device)
    rows = []
    for size in args.sizes:
        for stage in args.stages:
            print(f"{stage} {size} ...", flush=True)
            r = subprocess.run([sys.executable, __file__, "--device", args.device, "--child",
                                stage, size, str(model)], capture_output=True, text=True)
            if r.returncode != 0:
                tail = (r.stderr.strip().splitlines() or ["no output"])[-1]
                rows.append({"stage": stage, "size": size, "error": tail})
            else:
                rows.append(json.loads(r.stdout.strip().splitlines()[-1]))
            print(rows[-1], flush=True)
            info = machine()
            (args.out / "scaling.json").write_text(json.dumps(
                {"machine": info, "results": rows}, indent=2))
            (args.out / "scaling.md").write_text(to_markdown(rows, info))
    print(to_markdown(rows, machine()))


if __name__ == "__main__":
    main()
