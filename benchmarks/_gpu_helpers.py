"""Helpers of ``bench_gpu.py``: the data, the run's budget, timed blocks, the machine.

Split from the script so each file stays short; ``bench_gpu_quality.py`` uses them too.
"""

from __future__ import annotations

import os
import platform
import threading
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
DATA_ENV = "LATENTSEG_BENCH_DATA"


def default_data() -> Path:
    """``$LATENTSEG_BENCH_DATA``, else the first ``shared/data/pyradiomics`` found upwards."""
    if os.environ.get(DATA_ENV):
        return Path(os.environ[DATA_ENV])
    for base in (ROOT, ROOT.parent, ROOT.parent.parent):
        cand = base / "shared" / "data" / "pyradiomics"
        if cand.is_dir():
            return cand
    return ROOT / "shared" / "data" / "pyradiomics"


class Budget:
    """Seconds left of the whole run (started at ``t0``, a ``time.perf_counter()``)."""

    def __init__(self, total: float, t0: float) -> None:
        self.total, self.t0 = total, t0

    def left(self) -> float:
        return self.total - (time.perf_counter() - self.t0)


class Clock:
    """Wall time between device synchronisations, and peak GPU memory of the block."""

    def __init__(self, cuda: bool) -> None:
        self.cuda, self.s, self.peak_mb = cuda, 0.0, None

    def __enter__(self) -> Clock:
        import torch

        if self.cuda:
            torch.cuda.synchronize()
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats()
        self.t0 = time.perf_counter()
        return self

    def __exit__(self, *exc) -> None:
        import torch

        if self.cuda:
            torch.cuda.synchronize()
            self.peak_mb = round(torch.cuda.max_memory_allocated() / 2**20, 1)
        self.s = time.perf_counter() - self.t0


def capped(cap_s: float) -> tuple[threading.Event, threading.Timer]:
    """A stop event set after ``cap_s`` seconds (cancel the timer when done)."""
    ev = threading.Event()
    timer = threading.Timer(max(1.0, cap_s), ev.set)
    timer.daemon = True
    timer.start()
    return ev, timer


def machine(cuda: bool) -> dict:
    import torch

    from napari_latentseg.runtime.device import amp_dtype

    info = {"python": platform.python_version(), "torch": torch.__version__,
            "cuda_build": torch.version.cuda, "cpu_cores": os.cpu_count()}
    if cuda:
        dev = torch.device("cuda")
        props = torch.cuda.get_device_properties(dev)
        info.update(gpu=props.name, capability=list(torch.cuda.get_device_capability(dev)),
                    gpu_memory_mb=round(props.total_memory / 2**20),
                    amp_dtype=str(amp_dtype(dev)).replace("torch.", ""),
                    cudnn=torch.backends.cudnn.version())
    return info


def warm_up(cuda: bool) -> float:
    """One-time costs (imports, CUDA context) kept out of the first timed item; returns seconds.

    They are reported as ``warmup_s``: a user's first fit in a fresh process pays them too.
    """
    t0 = time.perf_counter()
    import scipy.ndimage  # noqa: F401
    import sklearn.ensemble  # noqa: F401
    import torch
    from monai.networks.nets import AutoencoderKL  # noqa: F401  (the slowest import)

    import napari_latentseg.engine.infer  # noqa: F401
    import napari_latentseg.engine.segment  # noqa: F401
    import napari_latentseg.engine.train  # noqa: F401

    conv = torch.nn.Conv2d(1, 8, 3)
    torch.optim.Adam(conv.parameters())  # its first use imports torch._dynamo (seconds)
    if cuda:
        from napari_latentseg.runtime.device import autocast

        dev = torch.device("cuda")
        conv = conv.to(dev)
        with autocast(dev):
            conv(torch.zeros(2, 1, 32, 32, device=dev)).sum().item()
        torch.cuda.synchronize()
    return time.perf_counter() - t0


def synthetic_ct(shape: tuple[int, int, int], seed: int = 0) -> np.ndarray:
    """A CT-like int16 volume: body ellipse (soft tissue, noise), two lungs, a few nodules."""
    rng = np.random.default_rng(seed)
    z, h, w = shape
    yy, xx = np.mgrid[:h, :w].astype(np.float32)
    body = ((yy - h / 2) / (0.4 * h)) ** 2 + ((xx - w / 2) / (0.45 * w)) ** 2 < 1
    lungs = np.zeros((h, w), bool)
    for cx in (0.32 * w, 0.68 * w):
        lungs |= ((yy - 0.48 * h) / (0.25 * h)) ** 2 + ((xx - cx) / (0.13 * w)) ** 2 < 1
    base = np.where(body, np.where(lungs, -820.0, 40.0), -1000.0).astype(np.float32)
    out = np.empty(shape, np.int16)
    for k in range(z):
        noise = rng.standard_normal((h, w), dtype=np.float32) * 25.0
        out[k] = np.clip(base + noise * body, -1024, 3000).astype(np.int16)
    for _ in range(6):  # nodules
        c = rng.uniform([0.1 * z, 0.35 * h, 0.25 * w], [0.9 * z, 0.6 * h, 0.75 * w])
        r = rng.uniform(3, 10)
        lo, hi = np.maximum(0, (c - r).astype(int)), np.minimum(shape, (c + r + 1).astype(int))
        g = np.ogrid[lo[0]:hi[0], lo[1]:hi[1], lo[2]:hi[2]]
        ball = sum((a - ci) ** 2 for a, ci in zip(g, c, strict=True)) < r * r
        out[lo[0]:hi[0], lo[1]:hi[1], lo[2]:hi[2]][ball] = 30
    return out


def load_cases(data: Path, dry: bool) -> dict:
    """``{name: (image, truth or None, modality)}``: pyradiomics scans, or tiny phantoms."""
    if dry:
        from napari_latentseg.data.phantom import make_phantom

        out = {}
        for name, seed in (("brain1", 1), ("lung2", 2)):
            ph = make_phantom((16, 48, 48), spacing=(4.0, 4.0, 4.0), seed=seed)
            truth = np.where(ph.labels == 7, 2, 1).astype(np.int64)  # lesion vs the rest
            out[name] = (ph.image, truth, "MR")
        return out
    from napari_latentseg.io import read_volume

    out = {}
    for name in ("brain1", "lung2"):
        img_path, lab_path = data / f"{name}_image.nrrd", data / f"{name}_label.nrrd"
        if not img_path.exists():
            continue
        vol = read_volume(img_path)
        truth = (np.where(read_volume(lab_path).data > 0, 2, 1).astype(np.int64)
                 if lab_path.exists() else None)
        out[name] = (vol.data, truth, vol.metadata.get("modality"))
    return out


def dice(a: np.ndarray, b: np.ndarray, classes) -> dict:
    out = {}
    for c in classes:
        denom = int((a == c).sum() + (b == c).sum())
        out[str(int(c))] = round(float(2 * ((a == c) & (b == c)).sum() / denom), 4) \
            if denom else None
    return out
