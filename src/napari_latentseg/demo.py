"""The main job end to end, headless: what ``latentseg demo`` and ``make demo`` run.

On the embedded phantom (or a user's scan) it fits the default VAE, reconstructs the volume
with its error and anomaly maps, and writes NIfTI results in the scan's geometry, an overview
PNG and ``metrics.json``. Nothing is read from the network or from outside the package.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

__all__ = ["run_demo"]


def _overview_png(path: Path, image: np.ndarray, recon: np.ndarray, error: np.ndarray,
                  truth: np.ndarray | None, anomalies: np.ndarray | None,
                  spacing: tuple[float, ...]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    n = image.shape[0]
    slices = sorted({int(n * f) for f in (0.3, 0.5, 0.7)})
    cols = ["image", "reconstruction", "error map", "ground truth" if truth is not None
            else "anomaly candidates"]
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
        ax = axes[r, 3]
        ax.imshow(image[z], cmap="gray", vmin=vmin, vmax=vmax, aspect=aspect)
        over = truth[z] if truth is not None else anomalies[z] if anomalies is not None else None
        if over is not None:
            masked = np.ma.masked_where(over <= (1 if truth is not None else 0), over)
            ax.imshow(masked, cmap="tab10", alpha=0.5, vmin=0, vmax=9, aspect=aspect,
                      interpolation="nearest")
        axes[r, 0].set_ylabel(f"slice {z}")
    for c, title in enumerate(cols):
        axes[0, c].set_title(title)
    for ax in axes.ravel():
        ax.set_xticks([])
        ax.set_yticks([])
    fig.tight_layout()
    fig.savefig(path, dpi=80)
    plt.close(fig)


def run_demo(
    output: str | Path,
    *,
    input_path: str | Path | None = None,
    annotations: str | Path | None = None,
    config: str = "cpu-2d",
    steps: int = 400,
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
    from ._napari._sample_data import sample_data_dir
    from .engine.common import drive
    from .engine.infer import reconstruct_iter
    from .engine.normalize import Normalizer
    from .engine.train import FitOptions, fit_iter
    from .io import read_volume, save_volume
    from .models.checkpoint import save_model

    out = Path(output)
    out.mkdir(parents=True, exist_ok=True)
    names = ["vae.pt", "reconstruction.nii.gz", "error.nii.gz", "anomalies.nii.gz",
             "overview.png", "metrics.json"]
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
    if input_path is None:
        folder = sample_data_dir()
        vol = read_volume(folder / "phantom_t1.nii.gz")
        truth = read_volume(folder / "phantom_labels.nii.gz").data
        vol.metadata["modality"] = vol.metadata.get("modality") or "MR"
        source = "embedded phantom"
    else:
        vol = read_volume(input_path)
        truth = None
        source = str(input_path)
    geometry = vol.metadata.get("latentseg_geometry") or vol.geometry()
    modality = vol.metadata.get("modality")
    times["load_s"] = time.perf_counter() - t

    t = time.perf_counter()
    opts = FitOptions(steps=steps, minutes=minutes, device=device, seed=seed)
    fit_res = drive(fit_iter(vol.data, config, opts, modalities=[modality], sources=[source],
                             stop_event=stop_event), emit)
    model = fit_res.model
    save_model(model, out / "vae.pt")
    times["fit_s"] = time.perf_counter() - t

    t = time.perf_counter()
    rec = drive(reconstruct_iter(model, vol.data, modality=modality, stop_event=stop_event), emit)
    times["reconstruct_s"] = time.perf_counter() - t
    save_volume(out / "reconstruction.nii.gz", rec.reconstruction, geometry, kind="image")
    save_volume(out / "error.nii.gz", rec.error, geometry, kind="image")
    save_volume(out / "anomalies.nii.gz", rec.anomalies, geometry, kind="labels")

    from skimage.metrics import peak_signal_noise_ratio

    norm = Normalizer.from_dict(rec.info["normalization"])
    a, b = norm(vol.data), norm(rec.reconstruction)
    psnr = float(peak_signal_noise_ratio(a, b, data_range=norm.clip_high - norm.clip_low))
    emit({"stage": "overview", "done": 0, "total": 1})
    _overview_png(out / "overview.png", vol.data, rec.reconstruction, rec.error, truth,
                  rec.anomalies, tuple(vol.spacing))
    emit({"stage": "overview", "done": 1, "total": 1})

    metrics = {
        "input": source,
        "shape": list(vol.data.shape),
        "spacing_mm": [round(float(s), 4) for s in vol.spacing],
        "device": rec.info["device"],
        "config": model.config.name,
        "fit": {"steps": fit_res.steps, "stop_reason": fit_res.reason,
                "best_val_l1": round(fit_res.best_val, 5)},
        "reconstruction": {"psnr_db": round(psnr, 2),
                           "mean_abs_error": round(float(rec.error.mean()), 5),
                           "anomaly_candidates": rec.n_candidates},
        "times_s": {k: round(v, 2) for k, v in times.items()},
        "outputs": sorted(names),
    }
    if annotations is not None:
        metrics["annotations"] = str(annotations)
    (out / "metrics.json").write_text(json.dumps(metrics, indent=2) + "\n")
    return metrics
