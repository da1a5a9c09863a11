"""Segmentation quality against the field's baselines, on the same sparse annotations.

Methods (all in one run, same annotated slices, Dice on the slices NOT annotated):

- ``vae-fewshot``: napari-latentseg's default ``segment``: a random forest on the ilastik
  multiscale features plus the VAE's latent and encoder components, then the rule that a region
  must connect to a stroke of its class;
- ``vae-finetune``: the same plus one 60-step fine-tuning round (MLP head + encoder), whose
  head refines the forest's boundaries if held-out annotated tiles say it helps;
- ``vae-mlp``: the previous default (an MLP head on the frozen hypercolumn, no rule), kept as a
  reference;
- ``skimage-rf``: scikit-image's trainable segmentation (multiscale_basic_features +
  RandomForestClassifier, the ilastik recipe), slice by slice;
- ``skimage-rf-connected``: the same followed by napari-latentseg's connectivity rule, to show
  how much of the gain comes from the rule rather than from the VAE features;
- ``monai-unet``: a MONAI 2D UNet trained from scratch on the annotated slices for the same
  wall time as ``vae-finetune``'s round.

Cases: tumour vs background in brain1, brain2, lung1, lung2 (pyradiomics) with 1, 2 and 3
annotated axial slices (those with the largest tumour area; every voxel of an annotated slice is
labelled: 1 = background, 2 = tumour), and all tissue classes of the phantom. The VAE of each
case is fitted once with the default options (not counted in the segmentation time).

Usage: ``python benchmarks/bench_segment.py [--cases phantom brain1 ...] [--slices 1 2 3]``
Writes ``benchmarks/results/segment.json`` and ``segment.md``.
"""

from __future__ import annotations

import argparse
import json
import resource
import sys
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from bench_engine import DEFAULT_DATA, machine  # noqa: E402

MAX_PER_CLASS = 20_000
FINETUNE_STEPS = 60


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def load_case(name: str, data: Path):
    """(image Volume, ground truth int array, class ids of the truth, modality)."""
    from napari_latentseg._napari._sample_data import sample_data_dir
    from napari_latentseg.io import read_volume

    if name == "phantom":
        folder = sample_data_dir()
        img = read_volume(folder / "phantom_t1.nii.gz")
        truth = read_volume(folder / "phantom_labels.nii.gz").data.astype(np.int64)
        return img, truth, "MR"
    img = read_volume(data / f"{name}_image.nrrd")
    lab = read_volume(data / f"{name}_label.nrrd").data
    truth = np.where(lab > 0, 2, 1).astype(np.int64)  # 1 background, 2 tumour
    return img, truth, img.metadata.get("modality")


def choose_slices(truth: np.ndarray, n: int, phantom: bool) -> list[int]:
    """Annotated axial slices: the largest tumour areas (tumour cases) or spread (phantom)."""
    if phantom:
        z = truth.shape[0]
        return sorted(int(round(f * (z - 1))) for f in np.linspace(0.3, 0.7, n)) if n > 1 \
            else [int(round(0.5 * (z - 1)))]
    area = (truth == 2).reshape(truth.shape[0], -1).sum(1)
    order = np.argsort(-area, kind="stable")
    return sorted(int(z) for z in order[:n])


def dice_scores(pred: np.ndarray, truth: np.ndarray, classes: list[int], keep: np.ndarray,
                phantom: bool) -> dict:
    p, t = pred[keep], truth[keep]
    out = {}
    eval_classes = [c for c in classes if c != 1] if not phantom else classes
    for c in eval_classes:
        denom = (p == c).sum() + (t == c).sum()
        out[str(c)] = float(2 * ((p == c) & (t == c)).sum() / denom) if denom else float("nan")
    return out


def normalise(image: np.ndarray, modality: str | None) -> np.ndarray:
    from napari_latentseg.engine.normalize import Normalizer, foreground_mask, guess_modality

    mod = guess_modality(image, modality)
    n = Normalizer.for_modality(mod).fit(image, foreground_mask(image, mod))
    return n(image)


def run_rf(image_n: np.ndarray, ann: np.ndarray, seed: int = 0,
           connected: bool = False) -> np.ndarray:
    """scikit-image trainable segmentation, slice by slice (features are 2D, like ilastik's).

    ``connected`` applies napari-latentseg's rule (regions must touch a stroke of their class).
    """
    from functools import partial

    from skimage.feature import multiscale_basic_features
    from sklearn.ensemble import RandomForestClassifier

    feat = partial(multiscale_basic_features, intensity=True, edges=True, texture=True,
                   sigma_min=1, sigma_max=16, channel_axis=None)
    rng = np.random.default_rng(seed)
    xs, ys = [], []
    for z in np.flatnonzero(ann.reshape(ann.shape[0], -1).any(1)):
        f = feat(image_n[z]).astype(np.float32)
        m = ann[z] > 0
        xs.append(f[m])
        ys.append(ann[z][m])
    x, y = np.concatenate(xs), np.concatenate(ys)
    keep = np.concatenate([rng.permutation(np.flatnonzero(y == c))[:MAX_PER_CLASS]
                           for c in np.unique(y)])
    clf = RandomForestClassifier(n_estimators=50, max_depth=10, max_samples=0.05,
                                 n_jobs=-1, random_state=seed)
    clf.fit(x[keep], y[keep])
    out = np.empty(ann.shape, dtype=np.int64)
    probs = np.empty((len(clf.classes_),) + ann.shape, dtype=np.float32)
    for z in range(ann.shape[0]):
        f = feat(image_n[z]).astype(np.float32)
        p = clf.predict_proba(f.reshape(-1, f.shape[-1]))
        probs[:, z] = p.T.reshape((-1,) + ann.shape[1:])
        out[z] = clf.classes_[p.argmax(1)].reshape(ann.shape[1:])
    painted = ann > 0
    out[painted] = ann[painted]
    if connected:
        from napari_latentseg.engine.segment import keep_connected

        out = keep_connected(out, probs, ann, [int(c) for c in clf.classes_])[0]
    return out


def run_unet(image_n: np.ndarray, ann: np.ndarray, seconds: float, seed: int = 0) -> tuple:
    """MONAI UNet from scratch on crops of the annotated slices for ``seconds`` of training."""
    import torch
    from monai.networks.nets import UNet

    from napari_latentseg.engine.sampling import _crop_bounds, _pad_to

    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    classes = [int(c) for c in np.unique(ann) if c]
    lut = np.full(int(ann.max()) + 1, -1, dtype=np.int64)
    lut[classes] = np.arange(len(classes))
    net = UNet(spatial_dims=2, in_channels=1, out_channels=len(classes),
               channels=(16, 32, 64, 128), strides=(2, 2, 2), num_res_units=1)
    opt = torch.optim.Adam(net.parameters(), lr=1e-3)
    pts = np.argwhere(ann > 0)
    counts = np.bincount(lut[ann[ann > 0]], minlength=len(classes)).astype(np.float32)
    w = torch.from_numpy(counts.sum() / (len(classes) * np.maximum(counts, 1)))
    t0, steps = time.perf_counter(), 0
    net.train()
    while time.perf_counter() - t0 < seconds:
        xs, ys = [], []
        for _ in range(8):
            c = pts[rng.integers(len(pts))]
            y0, y1 = _crop_bounds(int(c[1]), 96, ann.shape[1])
            x0, x1 = _crop_bounds(int(c[2]), 96, ann.shape[2])
            xs.append(_pad_to(image_n[c[0], y0:y1, x0:x1], (96, 96), 0.0)[None])
            ys.append(_pad_to(lut[ann[c[0], y0:y1, x0:x1]], (96, 96), -1))
        logits = net(torch.from_numpy(np.stack(xs).astype(np.float32)))
        loss = torch.nn.functional.cross_entropy(logits, torch.from_numpy(np.stack(ys)),
                                                 weight=w, ignore_index=-1)
        opt.zero_grad()
        loss.backward()
        opt.step()
        steps += 1
    net.eval()
    out = np.empty(ann.shape, dtype=np.int64)
    pad = [(0, (-s) % 8) for s in ann.shape[1:]]
    with torch.inference_mode():
        for z0 in range(0, ann.shape[0], 4):
            x = np.pad(image_n[z0 : z0 + 4], [(0, 0)] + pad, mode="edge")[:, None]
            p = net(torch.from_numpy(x.astype(np.float32))).argmax(1).numpy()
            out[z0 : z0 + 4] = np.array(classes)[p[:, : ann.shape[1], : ann.shape[2]]]
    painted = ann > 0
    out[painted] = ann[painted]
    return out, steps


def available_cases(cases: list[str], data: Path) -> list[str]:
    """The cases whose data exist (the phantom ships with the package), the others said."""
    out = []
    for case in cases:
        if case != "phantom" and not (data / f"{case}_image.nrrd").exists():
            print(f"skipping {case}: {data / (case + '_image.nrrd')} not found")
            continue
        out.append(case)
    return out


def get_model(name: str, img, modality, models_dir: Path):
    from napari_latentseg.engine.train import FitOptions, fit
    from napari_latentseg.models.checkpoint import load_model, save_model

    path = models_dir / f"{name}.pt"
    if path.exists():
        return load_model(path), None
    t0 = time.perf_counter()
    res = fit(img.data, options=FitOptions(), modalities=[modality])
    models_dir.mkdir(parents=True, exist_ok=True)
    save_model(res.model, path)
    return res.model, time.perf_counter() - t0


def run_case(name: str, data: Path, slices_list: list[int], models_dir: Path,
             methods: list[str]) -> list[dict]:
    from napari_latentseg.engine.segment import FeatureCache, segment

    img, truth, modality = load_case(name, data)
    phantom = name == "phantom"
    model, fit_s = get_model(name, img, modality, models_dir)
    image_n = normalise(img.data, modality)
    classes = sorted(int(c) for c in np.unique(truth))
    cache = FeatureCache()
    rows = []
    for n in slices_list:
        zs = choose_slices(truth, n, phantom)
        ann = np.zeros_like(truth)
        ann[zs] = truth[zs]
        keep = np.ones(truth.shape[0], dtype=bool)
        keep[zs] = False
        row = {"case": name, "annotated_slices": zs, "n_slices": n,
               "fit_s": round(fit_s, 1) if fit_s else "cached"}
        ft_seconds = 30.0
        for method in methods:
            t0 = time.perf_counter()
            extra = {}
            if method == "vae-fewshot":
                res = segment(model, img.data, ann, modality=modality, cache=cache)
                pred = res.labels
                extra["cache_hit"] = res.cache_hit
            elif method == "vae-finetune":
                res = segment(model, img.data, ann, modality=modality, cache=cache,
                              finetune_steps=FINETUNE_STEPS)
                pred = res.labels
                ft_seconds = time.perf_counter() - t0
            elif method == "vae-mlp":
                res = segment(model, img.data, ann, modality=modality, cache=cache,
                              classifier="mlp", keep_connected_regions=False)
                pred = res.labels
            elif method == "skimage-rf":
                pred = run_rf(image_n, ann)
            elif method == "skimage-rf-connected":
                pred = run_rf(image_n, ann, connected=True)
            elif method == "monai-unet":
                pred, steps = run_unet(image_n, ann, seconds=ft_seconds)
                extra["steps"] = steps
            else:
                raise ValueError(method)
            secs = time.perf_counter() - t0
            d = dice_scores(pred, truth, classes, keep, phantom)
            vals = [v for v in d.values() if np.isfinite(v)]
            row[method] = {"dice": d, "mean_dice": round(float(np.mean(vals)), 4) if vals
                           else None, "seconds": round(secs, 1), **extra}
            print(f"{name} n={n} {method}: mean Dice {row[method]['mean_dice']} "
                  f"in {secs:.1f} s", flush=True)
        row["peak_rss_mb"] = round(peak_rss_mb())
        rows.append(row)
    return rows


def to_markdown(rows: list[dict], methods: list[str], info: dict) -> str:
    head = "| case | annotated slices | " + " | ".join(
        f"{m} Dice (s)" for m in methods) + " | peak RSS MB |"
    lines = [f"Machine: {info.get('cpu')} ({info.get('cores')} cores), torch {info['torch']}",
             "", "Dice on the slices not annotated (tumour for pyradiomics cases, mean over all "
             "classes for the phantom); seconds per round (features, head, fine-tuning, "
             "prediction; the VAE fit is done once per case beforehand).", "", head,
             "|" + "---|" * (len(methods) + 3)]
    for r in rows:
        cells = []
        for m in methods:
            v = r.get(m)
            cells.append(f"{v['mean_dice']:.3f} ({v['seconds']:.0f})" if v and
                         v["mean_dice"] is not None else "n/a")
        zs = ", ".join(map(str, r["annotated_slices"]))
        lines.append(f"| {r['case']} | {r['n_slices']} ({zs}) | " + " | ".join(cells)
                     + f" | {r['peak_rss_mb']} |")
    return "\n".join(lines) + "\n"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--cases", nargs="+",
                   default=["phantom", "brain1", "brain2", "lung1", "lung2"])
    p.add_argument("--slices", nargs="+", type=int, default=[1, 2, 3])
    p.add_argument("--methods", nargs="+",
                   default=["vae-fewshot", "vae-finetune", "vae-mlp", "skimage-rf",
                            "skimage-rf-connected", "monai-unet"])
    p.add_argument("--data", type=Path, default=DEFAULT_DATA)
    p.add_argument("--out", type=Path, default=HERE / "results")
    args = p.parse_args()
    from napari_latentseg.runtime.device import configure_threads

    configure_threads()
    args.out.mkdir(parents=True, exist_ok=True)
    rows = []
    for case in available_cases(args.cases, args.data):
        rows += run_case(case, args.data, args.slices, args.out / "models", args.methods)
        info = machine()
        (args.out / "segment.json").write_text(json.dumps(
            {"machine": info, "methods": args.methods, "results": rows}, indent=2))
        (args.out / "segment.md").write_text(to_markdown(rows, args.methods, info))
    print(to_markdown(rows, args.methods, machine()))


if __name__ == "__main__":
    main()
