"""The main job end to end, headless: what ``latentseg demo`` and ``make demo`` run.

On the embedded phantom (or a user's scan) it fits the default VAE, reconstructs the volume
with its error and anomaly maps, clusters the latent features, segments from the sparse
annotations (few-shot, then one fine-tuning round) and writes NIfTI results in the scan's
geometry, an overview PNG and ``metrics.json`` (Dice per class against the ground truth when
there is one). Nothing is read from the network or from outside the package.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

from .models.config import DEFAULT_CONFIG
from .runtime.files import atomic_path, atomic_write

__all__ = ["run_demo"]


def _dice_per_class(pred: np.ndarray, truth: np.ndarray, classes: list[int],
                    names: dict[str, str]) -> dict[str, float]:
    out = {}
    for c in classes:
        denom = (pred == c).sum() + (truth == c).sum()
        if denom:
            out[names.get(str(c), str(c))] = round(
                float(2 * ((pred == c) & (truth == c)).sum() / denom), 4)
    return out


def _overview_png(path: Path, image: np.ndarray, recon: np.ndarray, error: np.ndarray,
                  seg: np.ndarray | None, truth: np.ndarray | None,
                  spacing: tuple[float, ...], seg_title: str = "segmentation") -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    n = image.shape[0]
    slices = sorted({int(n * f) for f in (0.3, 0.5, 0.7)})
    cols = ["image", "reconstruction", "error map"]
    overlays = []
    if seg is not None:
        cols.append(seg_title)
        overlays.append(seg)
    if truth is not None:
        cols.append("ground truth")
        overlays.append(truth)
    fig, axes = plt.subplots(len(slices), len(cols), figsize=(3.2 * len(cols), 3.2 * len(slices)),
                             squeeze=False)
    vmin, vmax = np.percentile(image, [0.5, 99.5])
    aspect = spacing[1] / spacing[2] if len(spacing) == 3 else 1.0
    emax = float(np.percentile(error, 99.5)) or 1.0
    for r, z in enumerate(slices):
        panels = [(image[z], "gray", vmin, vmax), (recon[z], "gray", vmin, vmax),
                  (error[z], "magma", 0, emax)]
        for c, (arr, cmap, lo, hi) in enumerate(panels):
            axes[r, c].imshow(arr, cmap=cmap, vmin=lo, vmax=hi, aspect=aspect)
        for c, over in enumerate(overlays, start=3):
            ax = axes[r, c]
            ax.imshow(image[z], cmap="gray", vmin=vmin, vmax=vmax, aspect=aspect)
            masked = np.ma.masked_where(over[z] <= 1, over[z])  # class 1 is the background
            ax.imshow(masked, cmap="tab10", alpha=0.55, vmin=0, vmax=9, aspect=aspect,
                      interpolation="nearest")
        axes[r, 0].set_ylabel(f"slice {z}")
    for c, title in enumerate(cols):
        axes[0, c].set_title(title)
    for ax in axes.ravel():
        ax.set_xticks([])
        ax.set_yticks([])
    fig.tight_layout()
    with atomic_path(path, suffix=".png") as tmp:
        fig.savefig(tmp, dpi=80, format="png")
    plt.close(fig)


def run_demo(
    output: str | Path,
    *,
    input_path: str | Path | None = None,
    annotations: str | Path | None = None,
    config: str = DEFAULT_CONFIG,
    steps: int = 400,
    finetune_steps: int = 60,
    minutes: float | None = None,
    device: str = "auto",
    seed: int = 0,
    overwrite: bool = False,
    progress: Callable[[dict], None] | None = None,
    stop_event: threading.Event | None = None,
) -> dict:
    """Run the demo and return its metrics (also written to ``output/metrics.json``).

    Parameters
    ----------
    output : path
        Output folder (created). Existing result files are only replaced with ``overwrite``.
    input_path : path, optional
        A scan to use instead of the embedded phantom.
    annotations : path, optional
        Sparse annotations for the segmentation stages (default: the phantom's).
    config, steps, minutes, device, seed
        Fit settings (see :class:`~napari_latentseg.engine.train.FitOptions`).
    progress : callable, optional
        Receives the core's progress dicts (``stage`` names the step).
    """
    from .data.phantom import sample_data_dir
    from .engine.normalize import Normalizer
    from .engine.segment import FeatureCache
    from .engine.train import FitOptions, fit_iter
    from .models.checkpoint import save_model
    from .pipeline import (
        cluster_job,
        load_annotations,
        load_scan,
        reconstruct_job,
        save_outputs,
        segment_job,
    )
    from .runtime.progress import drive

    out = Path(output)
    out.mkdir(parents=True, exist_ok=True)
    names = ["vae.pt", "vae-finetuned.pt", "reconstruction.nii.gz", "error.nii.gz",
             "anomalies.nii.gz", "clusters.nii.gz", "segmentation-fewshot.nii.gz",
             "segmentation.nii.gz", "uncertainty.nii.gz", "overview.png", "metrics.json"]
    existing = [n for n in names if (out / n).exists()]
    if existing and not overwrite:
        raise FileExistsError(
            f"{out} already holds demo results ({', '.join(existing)}); choose another "
            "--output folder or pass --overwrite")
    for n in existing:  # --overwrite: the model file too (the demo's own, never the user's)
        (out / n).unlink()

    emit = progress or (lambda ev: None)
    times: dict[str, float] = {}
    t = time.perf_counter()
    classes_names: dict[str, str] = {}
    if input_path is None:
        folder = sample_data_dir()
        scan = load_scan(folder / "phantom_t1.nii.gz")
        truth = load_annotations(scan, folder / "phantom_labels.nii.gz", "labels")
        ann = load_annotations(scan, folder / (annotations or "phantom_annotations.nii.gz"))
        scan.modality = scan.modality or "MR"
        classes_names = json.loads((folder / "phantom.json").read_text())["classes"]
        source = "embedded phantom"
    else:
        scan = load_scan(input_path)
        truth = None
        ann = load_annotations(scan, annotations) if annotations is not None else None
        source = str(input_path)
    times["load_s"] = time.perf_counter() - t

    t = time.perf_counter()
    opts = FitOptions(steps=steps, minutes=minutes, device=device, seed=seed)
    fit_res = drive(fit_iter(scan.data, config, opts, modalities=[scan.modality],
                             sources=[source], stop_event=stop_event), emit)
    model = fit_res.model
    save_model(model, out / "vae.pt")
    times["fit_s"] = time.perf_counter() - t

    t = time.perf_counter()
    recon_job = drive(reconstruct_job(model, scan, stop_event=stop_event), emit)
    rec = recon_job.result
    times["reconstruct_s"] = time.perf_counter() - t
    save_outputs(recon_job, {"reconstruction": out / "reconstruction.nii.gz",
                             "error": out / "error.nii.gz",
                             "anomalies": out / "anomalies.nii.gz"}, scan)

    from skimage.metrics import peak_signal_noise_ratio

    norm = Normalizer.from_dict(rec.info["normalization"])
    a, b = norm(scan.data), norm(rec.reconstruction)
    psnr = float(peak_signal_noise_ratio(a, b, data_range=norm.clip_high - norm.clip_low))

    cache = FeatureCache()
    n_classes = len(np.unique(truth)) if truth is not None else 4
    t = time.perf_counter()
    clu_job = drive(cluster_job(model, scan, k=n_classes, stop_event=stop_event), emit)
    clu = clu_job.result
    times["cluster_s"] = time.perf_counter() - t
    save_outputs(clu_job, {"clusters": out / "clusters.nii.gz"}, scan)

    seg_metrics: dict = {}
    final = None
    if ann is not None:
        t = time.perf_counter()
        few_job = drive(segment_job(model, scan, ann, cache=cache, stop_event=stop_event), emit)
        few = few_job.result
        times["segment_fewshot_s"] = time.perf_counter() - t
        save_outputs(few_job, {"labels": out / "segmentation-fewshot.nii.gz"}, scan)
        t = time.perf_counter()
        final_job = drive(segment_job(model, scan, ann, cache=cache,
                                      finetune_steps=finetune_steps, stop_event=stop_event),
                          emit)
        final = final_job.result
        times["finetune_round_s"] = time.perf_counter() - t
        save_outputs(final_job, {"labels": out / "segmentation.nii.gz",
                                 "uncertainty": out / "uncertainty.nii.gz"}, scan)
        save_model(final.model, out / "vae-finetuned.pt")
        seg_metrics = {"classes": final.classes, "annotated_voxels": int((ann > 0).sum()),
                       "next_slice": {k: final.suggestion[k] for k in ("axis", "index",
                                                                        "score")}}
        if truth is not None:
            keep = ~(ann > 0).reshape(ann.shape[0], -1).any(1)  # slices not annotated
            for name, res in (("fewshot", few), ("finetuned", final)):
                seg_metrics[f"dice_{name}"] = _dice_per_class(
                    res.labels[keep], truth[keep], final.classes, classes_names)
            seg_metrics["dice_evaluated_on"] = "slices without annotations"

    import importlib.util

    has_plot = importlib.util.find_spec("matplotlib") is not None
    if has_plot:
        emit({"stage": "overview", "done": 0, "total": 1})
        _overview_png(out / "overview.png", scan.data, rec.reconstruction, rec.error,
                      final.labels if final is not None else clu.labels, truth,
                      tuple(scan.spacing),
                      # Without annotations the demo has clusters only: say so.
                      "segmentation" if final is not None else f"clusters ({clu.method})")
        emit({"stage": "overview", "done": 1, "total": 1})
    else:
        emit({"stage": "overview", "done": 1, "total": 1,
              "message": "overview.png skipped: pip install 'napari-latentseg[demo]'"})

    metrics = {
        "input": source,
        "shape": list(scan.data.shape),
        "spacing_mm": [round(float(s), 4) for s in scan.spacing],
        "device": rec.info["device"],
        "config": model.config.name,
        "fit": {"steps": fit_res.steps, "decoder_steps": fit_res.decoder_steps,
                "stop_reason": fit_res.reason,
                "best_val_l1": round(fit_res.best_val, 5)},
        "reconstruction": {"psnr_db": round(psnr, 2),
                           "mean_abs_error": round(float(rec.error.mean()), 5),
                           "anomaly_candidates": recon_job.metrics.get("anomaly_candidates", 0),
                           "anomaly_method": recon_job.metrics.get("anomaly_method")},
        "clusters": {"k": clu.k, "method": clu.method},
        "segmentation": seg_metrics,
        "times_s": {k: round(v, 2) for k, v in times.items()},
        "outputs": sorted(names),
    }
    if annotations is not None:
        metrics["annotations"] = str(annotations)
    if not has_plot:
        metrics["outputs"].remove("overview.png")
    if ann is None:
        metrics["outputs"] = [n for n in metrics["outputs"] if "segment" not in n
                              and "uncertainty" not in n and "finetuned" not in n]
    with atomic_write(out / "metrics.json") as fh:
        fh.write(json.dumps(metrics, indent=2) + "\n")
    return metrics
