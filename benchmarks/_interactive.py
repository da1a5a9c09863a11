"""Simulated annotator and metrics of the interactive benchmark (importable by tests).

The annotator paints in-plane disks (radius 4 voxels) on axial slices, only over voxels of the
class it paints (a careful user):

- first strokes: one per class, on the middle axial slice of the class's extent, centred on the
  class's most interior voxel of that slice;
- each later round: one corrective stroke centred on the most interior voxel (largest distance
  to the component's border) of the largest face-connected 3D error component, painted with
  the true label there.

Metrics: Dice per round, mean over rounds (the area under the Dice-per-round curve, "AUC"),
the number of strokes needed to reach a Dice (NoC@80/90), the largest drop between rounds.
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

DEFAULT_DATA = Path("/work/shared/data/pyradiomics")
CACHE = Path(os.environ.get("LATENTSEG_BENCH_CACHE",
                            Path(__file__).resolve().parent / ".cache" / "interactive"))
# The product's default fit (450 steps, no time cap: ~6-11 min a scan on the 2-core CPU),
# once per scan, cached under CACHE. Until session 4 the benchmark capped it at 2 minutes,
# which left 17-66 steps on this CPU: barely trained encoders.
FIT_MINUTES: float | None = None
# Where the benchmark's VAEs are fitted and run (bench_gpu_quality.py sets "cuda").
DEVICE = os.environ.get("LATENTSEG_BENCH_DEVICE", "cpu")
RADIUS = 4
TUMOUR_CASES = ("brain1", "brain2", "lung1", "lung2", "breast1")


# --------------------------------------------------------------------------- strokes
def disk(shape2d: tuple[int, int], cy: int, cx: int, radius: int) -> np.ndarray:
    """Boolean in-plane disk of ``radius`` voxels centred on (cy, cx)."""
    yy, xx = np.ogrid[: shape2d[0], : shape2d[1]]
    return (yy - cy) ** 2 + (xx - cx) ** 2 <= radius * radius


def _interior_2d(mask2d: np.ndarray) -> tuple[int, int]:
    """The in-plane voxel farthest from the mask's border (first in C order on ties)."""
    from scipy import ndimage as ndi

    d = ndi.distance_transform_edt(np.pad(mask2d, 1))[1:-1, 1:-1]
    return tuple(int(v) for v in np.unravel_index(int(np.argmax(d)), d.shape))


def stroke_at(truth: np.ndarray, z: int, y: int, x: int, label: int,
              radius: int = RADIUS) -> np.ndarray:
    """Boolean volume: a disk on slice ``z`` around (y, x), only where the truth is ``label``."""
    out = np.zeros(truth.shape, dtype=bool)
    out[z] = disk(truth.shape[1:], y, x, radius) & (truth[z] == label)
    return out


def object_class(truth: np.ndarray) -> int:
    """The rarest class of ``truth`` (0 does not count): what a user would name as the object
    among several classes (a tumour, the phantom's lesions)."""
    ids, counts = np.unique(truth[truth > 0], return_counts=True)
    return int(ids[np.argmin(counts)])


def first_strokes(truth: np.ndarray, classes: list[int],
                  radii: dict[int, int] | None = None) -> np.ndarray:
    """Annotation volume with one stroke per class (0 = not annotated).

    Each class is painted on the middle slice of its axial extent, centred on its most
    interior voxel there; ``radii`` overrides the radius per class (unequal strokes).
    """
    ann = np.zeros(truth.shape, dtype=np.int64)
    for c in classes:
        zs = np.flatnonzero((truth == c).reshape(truth.shape[0], -1).any(1))
        if zs.size == 0:
            continue
        z = int(zs[np.argmin(np.abs(zs - 0.5 * (zs[0] + zs[-1])))])
        y, x = _interior_2d(truth[z] == c)
        r = (radii or {}).get(c, RADIUS)
        ann[stroke_at(truth, z, y, x, c, r)] = c
    return ann


@dataclass
class Correction:
    """Where the simulated user corrected: position, true label, error component size."""

    z: int
    y: int
    x: int
    label: int
    component_voxels: int
    stroke: np.ndarray  # boolean volume


def corrective_stroke(pred: np.ndarray, truth: np.ndarray,
                      radius: int = RADIUS) -> Correction | None:
    """One stroke at the most interior voxel of the largest 3D error component (None: no
    error left).

    Interior is measured in 3D, in voxels (the distance of a voxel to the nearest voxel
    outside the component), ties broken by the in-plane distance.
    """
    from scipy import ndimage as ndi

    err = np.asarray(pred) != np.asarray(truth)
    if not err.any():
        return None
    comp, n = ndi.label(err)
    sizes = np.bincount(comp.ravel())
    sizes[0] = 0
    big = int(np.argmax(sizes))
    sl = ndi.find_objects((comp == big).astype(np.int8))[0]
    sub = np.pad(comp[sl] == big, 1)
    d = ndi.distance_transform_edt(sub)[1:-1, 1:-1, 1:-1]
    # Thin slabs tie in 3D (the z distance wins): break ties by the in-plane distance.
    d2 = ndi.distance_transform_edt(sub, sampling=(1e6, 1, 1))[1:-1, 1:-1, 1:-1]
    d = d + 1e-3 * np.minimum(d2, 999)
    lz, ly, lx = np.unravel_index(int(np.argmax(d)), d.shape)
    z, y, x = lz + sl[0].start, ly + sl[1].start, lx + sl[2].start
    label = int(truth[z, y, x])
    return Correction(int(z), int(y), int(x), label, int(sizes[big]),
                      stroke_at(truth, z, y, x, label, radius))


def annotate_slice(ann: np.ndarray, truth: np.ndarray, axis: int, index: int) -> None:
    """The simulated user labels every voxel of one slice (in place)."""
    sl = [slice(None)] * truth.ndim
    sl[axis] = index
    ann[tuple(sl)] = truth[tuple(sl)]


# --------------------------------------------------------------------------- metrics
def dice(pred: np.ndarray, truth: np.ndarray, classes: list[int]) -> float:
    """Mean Dice over ``classes`` (those absent from both count as 1)."""
    vals = []
    for c in classes:
        p, t = pred == c, truth == c
        denom = int(p.sum() + t.sum())
        vals.append(1.0 if denom == 0 else 2.0 * int((p & t).sum()) / denom)
    return float(np.mean(vals))


def noc(dices: list[float], strokes: list[int], threshold: float) -> int | None:
    """Strokes painted when Dice first reaches ``threshold`` (None: never within the run)."""
    for d, s in zip(dices, strokes, strict=True):
        if d >= threshold:
            return int(s)
    return None


def summarise(dices: list[float], strokes: list[int], seconds: list[float],
              first_s: float) -> dict:
    """AUC (mean Dice over rounds), NoC@80/90, largest drop, seconds per later round."""
    drops = [a - b for a, b in zip(dices[:-1], dices[1:], strict=True)]
    later = seconds[1:] if len(seconds) > 1 else seconds
    return {"auc": round(float(np.mean(dices)), 4), "final": round(dices[-1], 4),
            "noc80": noc(dices, strokes, 0.8), "noc90": noc(dices, strokes, 0.9),
            "max_drop": round(max(drops), 4) if drops else 0.0,
            "drops_over_002": int(sum(d > 0.02 for d in drops)),
            "round_s": round(float(np.median(later)), 2),
            "first_result_s": round(float(first_s), 1)}


# --------------------------------------------------------------------------- cases
# Synthetic heads whose three tissue-intensity lesions are the object (two classes), on a
# near-isotropic grid and on thick slices (session 54: where the late-round merge applies).
LESION_HEADS = {"iso": dict(shape=(96, 112, 112), spacing=(1.6, 1.6, 1.6)),
                "thick": dict(shape=(24, 112, 112), spacing=(6.4, 1.6, 1.6))}


def load_case(name: str, data: Path = DEFAULT_DATA):
    """(image float32, truth int64, modality, spacing) of a case; tumour cases: 1 bg, 2 tumour."""
    from napari_latentseg.io import read_volume

    if name in ("phantom", "phantomlesions"):  # the shipped phantom: tissues, or lesions
        from napari_latentseg._napari._sample_data import sample_data_dir

        folder = sample_data_dir()
        img = read_volume(folder / "phantom_t1.nii.gz")
        truth = read_volume(folder / "phantom_labels.nii.gz").data.astype(np.int64)
        if name == "phantomlesions":  # its three lesions as the object, as a user tries it
            truth = np.where(truth == 7, 2, 1).astype(np.int64)
        return img.data.astype(np.float32), truth, "MR", tuple(img.spacing)
    for kind, geo in LESION_HEADS.items():  # phantom<kind><seed>: its lesions as the object
        seed = name.removeprefix(f"phantom{kind}")
        if seed != name and seed.isdigit():
            from napari_latentseg.data.phantom import make_phantom

            ph = make_phantom(**geo, seed=int(seed))
            truth = np.where(ph.labels == 7, 2, 1).astype(np.int64)
            return ph.image.astype(np.float32), truth, "MR", tuple(ph.spacing)
    if name.startswith("phantom") and name[7:].isdigit():  # another instance: phantom<seed>
        from napari_latentseg.data.phantom import make_phantom

        ph = make_phantom(seed=int(name[7:]))
        return ph.image.astype(np.float32), ph.labels.astype(np.int64), "MR", tuple(ph.spacing)
    img = read_volume(data / f"{name}_image.nrrd")
    lab = read_volume(data / f"{name}_label.nrrd").data
    truth = np.where(lab > 0, 2, 1).astype(np.int64)
    mod = img.metadata.get("modality") or ("CT" if name.startswith("lung") else "MR")
    return img.data.astype(np.float32), truth, mod, tuple(img.spacing)


def eval_classes(name: str, truth: np.ndarray) -> list[int]:
    """Classes Dice is averaged over: the tumour, or the phantom's tissues (not the air)."""
    cs = sorted(int(c) for c in np.unique(truth))
    return [c for c in cs if c != 1]


def crop_box(name: str, truth: np.ndarray, margin: int = 32, zmargin: int = 3) -> tuple:
    """Quick-mode crop: the object's box plus ``margin`` voxels in-plane, ``zmargin`` slices
    (the phantom: its 12 middle slices, whole in-plane)."""
    if name == "phantom" or (name.startswith("phantom") and name[7:].isdigit()):
        z0 = truth.shape[0] // 2 - 6
        return (slice(z0, z0 + 12), slice(None), slice(None))
    idx = np.argwhere(truth == 2)
    lo, hi = idx.min(0), idx.max(0) + 1
    m = (zmargin, margin, margin)
    return tuple(slice(max(0, int(a) - k), min(s, int(b) + k))
                 for a, b, k, s in zip(lo, hi, m, truth.shape, strict=True))


def fit_suffix(steps: int | None, lr: float | None, schedule: str | None = None,
               **fit_kw) -> str:
    """Cache-name suffix of a fit with non-default steps, learning rate, schedule or other
    ``FitOptions`` fields (``-<field><value>``, sorted)."""
    return ((f"-s{steps}" if steps else "") + (f"-lr{lr:g}" if lr else "")
            + (f"-{schedule}" if schedule else "")
            + "".join(f"-{k}{v}" for k, v in sorted(fit_kw.items())))


def config_stamp(config) -> dict:
    """What of a preset (a name or a ``ModelConfig``) shapes its fit: every field but the
    name and description. A cached VAE is reused only under the same stamp, so a preset whose
    recipe changed (session 15: cpu-2d-fine's 64x64 crops) is refitted, not mistaken for the
    old one."""
    from napari_latentseg.models.config import get_config

    d = get_config(config).to_dict()  # tuples as lists, as the cache file holds them
    return {k: v for k, v in d.items() if k not in ("name", "description")}


def get_model(name: str, image: np.ndarray, modality: str | None,
              minutes: float | None = None, config=None, steps: int | None = None,
              lr: float | None = None, schedule: str | None = None,
              encoder_only: bool = False, **fit_kw):
    """The case's VAE fitted on the whole scan once (the product default, or a ``minutes``
    cap), cached in CACHE (refitted when the cached one had another cap). ``config``: a
    preset name or a ``ModelConfig`` other than the default (cached as ``<name>-<config>``,
    cpu-2d as ``<name>``); ``steps`` / ``lr``: other fit options (cached with ``-s<N>`` /
    ``-lr<X>``); ``schedule``: another learning-rate schedule (``-<schedule>``); other
    ``FitOptions`` fields as keywords (cached with ``-<field><value>``). ``encoder_only``: the
    caller reads the encoder alone (segmentation), so a cached VAE from before the decoder
    phase (session 16) is taken: its encoder is the one a fit makes today.

    Returns (model, fit seconds) -- the seconds of the original fit, also when cached.
    """
    from napari_latentseg.engine.train import FitOptions, fit
    from napari_latentseg.models.checkpoint import load_model, save_model

    if minutes is None and os.environ.get("LATENTSEG_BENCH_FIT_MINUTES"):
        minutes = float(os.environ["LATENTSEG_BENCH_FIT_MINUTES"])
    minutes = FIT_MINUTES if minutes is None else minutes
    from napari_latentseg.models.config import DEFAULT_CONFIG

    config = config or DEFAULT_CONFIG
    cname = config if isinstance(config, str) else config.name
    # cpu-2d models (the default until session 6) keep their plain cache names.
    key = ((name if cname == "cpu-2d" else f"{name}-{cname}")
           + fit_suffix(steps, lr, schedule, **fit_kw))
    path = CACHE / f"{key}.pt"
    meta = CACHE / f"{key}.json"
    cached = json.loads(meta.read_text()) if path.exists() and meta.exists() else {}
    arch = config_stamp(config)
    kw = {k: v for k, v in (("steps", steps), ("lr", lr), ("lr_schedule", schedule)) if v}
    kw.update(fit_kw)
    opts = FitOptions(minutes=minutes, device=DEVICE, **kw)
    # Files from before session 15 carry no stamp: taken as they are. Files from before
    # session 16 had no decoder phase: taken only when the decoder does not matter.
    decoder_ok = encoder_only or cached.get("decoder_steps", 0) == opts.planned_decoder_steps
    if (cached and cached.get("minutes") == minutes and cached.get("config", arch) == arch
            and decoder_ok):
        return load_model(path, device=DEVICE), cached["fit_s"]
    t0 = time.perf_counter()
    res = fit(image, config, opts, modalities=[modality])
    fit_s = time.perf_counter() - t0
    CACHE.mkdir(parents=True, exist_ok=True)
    save_model(res.model, path, overwrite=True)
    meta.write_text(json.dumps({"fit_s": round(fit_s, 1), "steps": res.steps,
                                "reason": res.reason, "minutes": minutes, "config": arch,
                                "decoder_steps": opts.planned_decoder_steps}))
    return res.model, fit_s
