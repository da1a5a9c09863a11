"""VAE engine benchmark: fit time, held-out PSNR/SSIM, reconstruction throughput, peak memory,
and the time of clustering a scan's voxels.

Each case runs in its own process so peak RSS belongs to that case alone. Real scans come from
``../shared/data/pyradiomics`` (override with ``--data``); a missing case is skipped with a
message. Results go to ``benchmarks/results/engine.json`` and ``engine.md``.

Usage: ``python benchmarks/bench_engine.py [--cases brain1 lung2 big] [--device auto]``
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
DEFAULT_DATA = HERE.parent.parent / "shared" / "data" / "pyradiomics"


def _peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def machine() -> dict:
    import torch

    info = {"cpu": platform.processor() or platform.machine(), "cores": os.cpu_count(),
            "torch": torch.__version__, "python": platform.python_version()}
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                info["cpu"] = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    if torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name(0)
    return info


def case_fit(name: str, data: Path, device: str, model_out: Path) -> dict:
    """Default fit on a real scan, then PSNR/SSIM on its held-out slices, then reconstruction."""
    from skimage.metrics import peak_signal_noise_ratio, structural_similarity

    from napari_latentseg.engine.infer import reconstruct
    from napari_latentseg.engine.normalize import Normalizer
    from napari_latentseg.engine.sampling import holdout_slices
    from napari_latentseg.engine.train import FitOptions, fit
    from napari_latentseg.io import read_volume
    from napari_latentseg.models.checkpoint import save_model

    vol = read_volume(data / f"{name}_image.nrrd")
    opts = FitOptions(device=device)
    t0 = time.perf_counter()
    res = fit(vol.data, options=opts, modalities=[vol.metadata.get("modality")])
    fit_s = time.perf_counter() - t0
    if model_out.exists():
        model_out.unlink()
    save_model(res.model, model_out)
    rec = reconstruct(res.model, vol.data, modality=vol.metadata.get("modality"))
    clusters = _cluster_times(res.model, vol.data, vol.metadata.get("modality"))
    norm = Normalizer.from_dict(rec.info["normalization"])
    held = holdout_slices(vol.data.shape[0], opts.holdout_every)
    a, b = norm(vol.data[held]), norm(rec.reconstruction[held])
    lo, hi = norm.clip_low, norm.clip_high
    psnr = peak_signal_noise_ratio(a, b, data_range=hi - lo)
    ssim = float(np.mean([structural_similarity(x, y, data_range=hi - lo)
                          for x, y in zip(a, b, strict=True)]))
    return {
        "case": name, "shape": list(vol.data.shape), "modality": res.model.info["modalities"][0],
        "config": res.model.config.name, "fit_s": round(fit_s, 1), "steps": res.steps,
        "decoder_steps": res.decoder_steps,
        # When the encoder (all that segmentation reads) was final and handed over.
        "encoder_ready_s": round(max((h["elapsed"] for h in res.history
                                      if h.get("phase") != "decoder"), default=0.0), 1),
        "stop_reason": res.reason, "best_val_l1": round(res.best_val, 4),
        "heldout_slices": held.tolist(), "psnr_db": round(float(psnr), 2), "ssim": round(ssim, 3),
        "recon_s": round(rec.seconds, 2),
        "recon_mvox_per_s": round(vol.data.size / rec.seconds / 1e6, 3),
        "anomaly_candidates": rec.n_candidates, "device": rec.info["device"],
        "peak_rss_mb": round(_peak_rss_mb(), 0), **clusters,
    }


def _cluster_times(model, data: np.ndarray, modality: str | None) -> dict:
    """Seconds of Cluster (k-means, k = 4), with a Gaussian mixture, and again with k = 5."""
    from napari_latentseg.engine.segment import cluster

    out = {}
    for key, k, method in (("cluster_s", 4, "kmeans"), ("cluster_gmm_s", 4, "gmm"),
                           ("cluster_again_s", 5, "kmeans")):
        t0 = time.perf_counter()
        cluster(model, data, k, method=method, modality=modality)
        out[key] = round(time.perf_counter() - t0, 2)
    return out


def case_recon(model_path: Path, shape: tuple[int, ...] | None, image: Path | None,
               device: str) -> dict:
    """Reconstruction only (model already fitted): throughput and peak memory."""
    from napari_latentseg.engine.infer import reconstruct
    from napari_latentseg.io import read_volume
    from napari_latentseg.models.checkpoint import load_model

    model = load_model(model_path, device=device)
    if image is not None:
        vol = read_volume(image)
        data, modality, name = vol.data, vol.metadata.get("modality"), image.name
    else:
        # A CT-like synthetic volume: body ellipse in air, HU noise; int16 like real CT.
        rng = np.random.default_rng(0)
        data = np.full(shape, -1000, dtype=np.int16)
        yy, xx = np.ogrid[: shape[1], : shape[2]]
        body = ((yy - shape[1] / 2) / (0.4 * shape[1])) ** 2 + (
            (xx - shape[2] / 2) / (0.45 * shape[2])) ** 2 < 1
        for z in range(shape[0]):
            data[z][body] = rng.normal(40, 30, size=int(body.sum())).astype(np.int16)
        modality, name = "CT", "x".join(map(str, shape))
    base = _peak_rss_mb()
    t0 = time.perf_counter()
    rec = reconstruct(model, data, modality=modality)
    secs = time.perf_counter() - t0
    return {"case": f"reconstruct {name}", "shape": list(data.shape),
            "recon_s": round(secs, 1), "recon_mvox_per_s": round(data.size / secs / 1e6, 3),
            "anomaly_candidates": rec.n_candidates, "device": rec.info["device"],
            "input_mb": round(data.nbytes / 2**20), "rss_before_mb": round(base),
            "peak_rss_mb": round(_peak_rss_mb())}


def _child(argv: list[str]) -> dict:
    res = subprocess.run([sys.executable, __file__, "--child", *argv], capture_output=True,
                         text=True)
    if res.returncode != 0:
        return {"case": " ".join(argv), "error": res.stderr.strip().splitlines()[-1:]}
    return json.loads(res.stdout.strip().splitlines()[-1])


def to_markdown(results: list[dict], info: dict) -> str:
    lines = [f"Machine: {info.get('cpu')} ({info.get('cores')} cores)"
             + (f", GPU {info['gpu']}" if "gpu" in info else "") + f", torch {info['torch']}",
             "", "| case | shape | fit s | steps | PSNR dB | SSIM | recon s | Mvox/s | "
             "peak RSS MB | cluster s: k-means / gmm / k = 5 |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for r in results:
        if "error" in r:
            lines.append(f"| {r['case']} | error: {r['error']} |||||||| ")
            continue
        clusters = " / ".join(str(r[k]) for k in ("cluster_s", "cluster_gmm_s",
                                                   "cluster_again_s") if k in r)
        lines.append("| {} | {} | {} | {} | {} | {} | {} | {} | {} | {} |".format(
            r["case"], "x".join(map(str, r["shape"])), r.get("fit_s", ""), r.get("steps", ""),
            r.get("psnr_db", ""), r.get("ssim", ""), r["recon_s"], r["recon_mvox_per_s"],
            r["peak_rss_mb"], clusters))
    return "\n".join(lines) + "\n"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--cases", nargs="+", default=["brain1", "lung2", "big"])
    p.add_argument("--data", type=Path, default=DEFAULT_DATA)
    p.add_argument("--device", default="auto")
    p.add_argument("--out", type=Path, default=HERE / "results")
    p.add_argument("--child", nargs="+", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.child:
        kind = args.child[0]
        if kind == "fit":
            out = case_fit(args.child[1], Path(args.child[2]), args.child[3], Path(args.child[4]))
        else:
            shape = tuple(map(int, args.child[2].split("x"))) if args.child[2] != "-" else None
            image = Path(args.child[3]) if args.child[3] != "-" else None
            out = case_recon(Path(args.child[1]), shape, image, args.child[4])
        print(json.dumps(out))
        return

    args.out.mkdir(parents=True, exist_ok=True)
    results = []
    tmp = Path(tempfile.mkdtemp(prefix="latentseg-bench-"))
    models: dict[str, Path] = {}
    for case in args.cases:
        if case == "big":
            continue
        if not (args.data / f"{case}_image.nrrd").exists():
            print(f"skipping {case}: {args.data / (case + '_image.nrrd')} not found")
            continue
        print(f"fitting {case} ...", flush=True)
        models[case] = tmp / f"{case}.pt"
        r = _child(["fit", case, str(args.data), args.device, str(models[case])])
        print(r, flush=True)
        results.append(r)
        if case == "lung2" and models[case].exists():
            r = _child(["recon", str(models[case]), "-", str(args.data / "lung2_image.nrrd"),
                        args.device])
            print(r, flush=True)
            results.append(r)
    if "big" in args.cases:
        model = models.get("lung2") or next(iter(models.values()), None)
        if model is None or not model.exists():
            print("skipping 512x512x400: no fitted model (needs lung2 or brain1)")
        else:
            print("reconstructing 400x512x512 ...", flush=True)
            r = _child(["recon", str(model), "400x512x512", "-", args.device])
            print(r, flush=True)
            results.append(r)
    info = machine()
    (args.out / "engine.json").write_text(json.dumps({"machine": info, "results": results},
                                                     indent=2))
    (args.out / "engine.md").write_text(to_markdown(results, info))
    print(to_markdown(results, info))


if __name__ == "__main__":
    main()
