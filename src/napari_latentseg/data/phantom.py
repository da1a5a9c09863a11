"""Deterministic synthetic head phantom with known ground truth.

The phantom is a T1-weighted-MRI-like head: scalp, skull, cerebrospinal fluid (outer CSF and
two ventricles), folded grey matter, white matter and a few lesions whose intensity sits
between grey and white matter (tissue-like, so they are not trivially separable). Boundaries
are smooth (partial volume), and the image carries a multiplicative bias field and Rician noise,
on an anisotropic grid (thick slices), as clinical MRI does.

Label ids follow the annotation convention of the segmentation engine: 0 is never used by the
ground truth (0 means "not annotated" in annotation volumes) and background air is class 1, a
class like any other.

Run ``python -m napari_latentseg.data.phantom OUTDIR`` to regenerate the shipped sample data.
"""

from __future__ import annotations

import argparse
import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

__all__ = [
    "sample_data_dir",
    "PHANTOM_CLASSES",
    "Phantom",
    "make_phantom",
    "annotation_from_labels",
    "write_sample_data",
]


def sample_data_dir() -> Path:
    """Folder of the sample files shipped inside the installed package."""
    from importlib.resources import files

    return Path(str(files("napari_latentseg") / "sample_data"))


#: Label id -> (name, mean T1 intensity before bias and noise).
PHANTOM_CLASSES: dict[int, tuple[str, float]] = {
    1: ("background", 0.0),
    2: ("scalp", 650.0),
    3: ("skull", 120.0),
    4: ("csf", 180.0),
    5: ("grey matter", 470.0),
    6: ("white matter", 720.0),
    7: ("lesion", 560.0),
}


@dataclass
class Phantom:
    """A generated phantom.

    Attributes
    ----------
    image : np.ndarray
        int16 intensities, axes (z, y, x).
    labels : np.ndarray
        uint8 ground-truth labels, ids as in :data:`PHANTOM_CLASSES`.
    spacing : tuple of float
        Voxel size in mm per array axis.
    origin : tuple of float
        World position (LPS, mm, array-axis order) of voxel ``[0, 0, 0]``.
    info : dict
        Class names and the generation parameters.
    """

    image: np.ndarray
    labels: np.ndarray
    spacing: tuple[float, float, float]
    origin: tuple[float, float, float]
    info: dict = field(default_factory=dict)


def _gyral_field(unit: np.ndarray, rng: np.random.Generator, n_waves: int = 24) -> np.ndarray:
    """Smooth pseudo-random function on the sphere, in [-1, 1] roughly (cortical folding)."""
    out = np.zeros(unit.shape[1:], dtype=np.float32)
    for _ in range(n_waves):
        w = rng.normal(size=3)
        w *= rng.uniform(9.0, 18.0) / np.linalg.norm(w)
        phase = rng.uniform(0, 2 * np.pi)
        out += np.sin(np.tensordot(w, unit, axes=1) + phase).astype(np.float32)
    return out / np.sqrt(n_waves / 2.0)


def make_phantom(
    shape: tuple[int, int, int] = (40, 128, 128),
    spacing: tuple[float, float, float] = (4.0, 1.6, 1.6),
    seed: int = 0,
    noise_sigma: float = 20.0,
    bias_strength: float = 0.15,
    n_lesions: int = 3,
) -> Phantom:
    """Generate the head phantom.

    Parameters
    ----------
    shape : tuple of int
        Array shape (z, y, x). Smaller shapes give a smaller head at the same relative anatomy,
        so tests can use e.g. ``(12, 40, 40)``.
    spacing : tuple of float
        Voxel size in mm (z, y, x). The head is scaled to fill ~90 % of the field of view.
    seed : int
        Seed of every random choice: the same arguments give the same arrays.
    noise_sigma : float
        Standard deviation of the Rician noise, in intensity units.
    bias_strength : float
        Peak relative amplitude of the multiplicative bias field.
    n_lesions : int
        Lesions to place (0 gives a healthy head, e.g. a normative cohort for the anomaly
        scores).

    Returns
    -------
    Phantom
    """
    from scipy import ndimage

    if len(shape) != 3 or min(shape) < 4:
        raise ValueError(f"shape must be 3 integers >= 4, got {shape}")
    rng = np.random.default_rng(seed)
    shape_a = np.asarray(shape)
    sp = np.asarray(spacing, dtype=np.float64)
    fov = shape_a * sp
    # Head semi-axes (z=S-I, y=A-P, x=L-R) as fractions of the field of view, clipped top and
    # bottom like a real axial acquisition.
    semi = np.array([0.62, 0.46, 0.38]) * fov
    semi[0] = min(semi[0], 0.6 * fov[0])
    centre = np.array([0.42, 0.5, 0.5]) * fov

    zz, yy, xx = np.meshgrid(
        *[(np.arange(n) + 0.5) * s - c for n, s, c in zip(shape, sp, centre, strict=True)],
        indexing="ij",
        sparse=False,
    )
    p = np.stack([zz / semi[0], yy / semi[1], xx / semi[2]]).astype(np.float32)
    r = np.sqrt((p**2).sum(axis=0))
    unit = p / np.maximum(r, 1e-6)
    folds = _gyral_field(unit, rng)
    outline = 0.015 * _gyral_field(unit, rng, n_waves=6)  # gentle asymmetry of the skull

    # Thickness of each shell as a fraction of the head radius (~5 mm at adult size).
    r_head = r / (1.0 + outline)
    labels = np.full(shape, 1, dtype=np.uint8)
    labels[r_head < 1.0] = 2  # scalp
    labels[r_head < 0.93] = 3  # skull
    labels[r_head < 0.87] = 4  # outer CSF
    cortex = r_head < 0.84 + 0.012 * folds
    labels[cortex] = 5  # grey matter
    labels[r_head < 0.70 + 0.07 * folds] = 6  # white matter

    # Ventricles: two ellipsoids either side of the midline, in the upper half of the brain.
    for side in (-1.0, 1.0):
        c = np.array([0.10, -0.05, side * 0.13])
        a = np.array([0.16, 0.30, 0.07])
        inside = (((p - c[:, None, None, None]) / a[:, None, None, None]) ** 2).sum(0) < 1.0
        labels[inside] = 4

    # Lesions: spheres in white matter (radius 8-14 % of the head), tissue-like intensity.
    wm_idx = np.argwhere(labels == 6)
    if n_lesions < 0:
        raise ValueError(f"n_lesions must be >= 0, got {n_lesions}")
    placed = 0
    attempts = 0
    while placed < n_lesions and attempts < 200 and len(wm_idx):
        attempts += 1
        centre_idx = wm_idx[rng.integers(len(wm_idx))]
        rad = rng.uniform(0.08, 0.14)
        d = np.sqrt(((p - p[:, centre_idx[0], centre_idx[1], centre_idx[2]][:, None, None, None])
                     ** 2).sum(0))
        ball = d < rad
        # Keep lesions inside white matter so each one is surrounded by tissue.
        if np.mean(labels[ball] == 6) < 0.8:
            continue
        labels[ball] = 7
        placed += 1

    means = np.zeros(max(PHANTOM_CLASSES) + 1, dtype=np.float32)
    for k, (_, mu) in PHANTOM_CLASSES.items():
        means[k] = mu
    clean = means[labels]
    # Mild within-tissue texture, then partial volume at boundaries (blur ~0.8 mm).
    texture = ndimage.gaussian_filter(rng.normal(size=shape).astype(np.float32), 1.5)
    clean = clean * (1.0 + 0.04 * texture / (texture.std() + 1e-6)) * (labels > 1)
    clean = ndimage.gaussian_filter(clean, sigma=0.8 / sp)

    # Smooth multiplicative bias field: a random low-order polynomial in normalised coordinates.
    grid = [np.linspace(-1, 1, n, dtype=np.float32) for n in shape]
    gz, gy, gx = np.meshgrid(*grid, indexing="ij", sparse=True)
    coef = rng.uniform(-1, 1, size=6).astype(np.float32)
    bias = coef[0] * gx + coef[1] * gy + coef[2] * gz + coef[3] * gx * gy + coef[4] * gy**2
    bias = bias + coef[5] * gz * gx
    bias = 1.0 + bias_strength * bias / (np.abs(bias).max() + 1e-6)

    signal = clean * bias
    n1 = rng.normal(scale=noise_sigma, size=shape).astype(np.float32)
    n2 = rng.normal(scale=noise_sigma, size=shape).astype(np.float32)
    image = np.sqrt((signal + n1) ** 2 + n2**2)  # Rician magnitude noise
    image = np.clip(np.rint(image), 0, np.iinfo(np.int16).max).astype(np.int16)

    origin = tuple(float(v) for v in (-centre + 0.5 * sp))
    info = {
        "classes": {str(k): name for k, (name, _) in PHANTOM_CLASSES.items()},
        "generator": "napari_latentseg.data.phantom.make_phantom",
        "parameters": {
            "shape": [int(s) for s in shape],
            "spacing": [float(s) for s in spacing],
            "seed": int(seed),
            "noise_sigma": float(noise_sigma),
            "bias_strength": float(bias_strength),
        },
        "lesions": int(placed),
    }
    return Phantom(image, labels, tuple(float(s) for s in spacing), origin, info)


def annotation_from_labels(
    labels: np.ndarray, slices: list[int] | tuple[int, ...], axis: int = 0
) -> np.ndarray:
    """Sparse annotation: the ground truth on the given slices, 0 (not annotated) elsewhere.

    Parameters
    ----------
    labels : np.ndarray
        Full label volume (ids >= 1 everywhere).
    slices : sequence of int
        Slice indices along ``axis`` to keep.
    axis : int
        Axis of the slices.

    Returns
    -------
    np.ndarray
        Same shape and dtype as ``labels``.
    """
    ann = np.zeros_like(labels)
    index: list = [slice(None)] * labels.ndim
    for s in slices:
        if not 0 <= s < labels.shape[axis]:
            raise ValueError(f"slice {s} is outside axis {axis} of length {labels.shape[axis]}")
        index[axis] = s
        ann[tuple(index)] = labels[tuple(index)]
    return ann


def default_annotated_slices(n_slices: int) -> list[int]:
    """Two axial slices at 40 % and 60 % of the stack: the shipped sample annotation."""
    return sorted({int(round(0.4 * (n_slices - 1))), int(round(0.6 * (n_slices - 1)))})


def write_sample_data(outdir: str | Path, overwrite: bool = True) -> dict[str, Path]:
    """Write the shipped sample: image, ground truth, sparse annotations and a JSON description.

    Parameters
    ----------
    outdir : str or Path
        Destination folder (created if missing).
    overwrite : bool
        Replace existing files (the files are generated, so this is the default).

    Returns
    -------
    dict
        Paths keyed by ``"image"``, ``"labels"``, ``"annotations"``, ``"info"``.
    """
    from ..io import save_volume
    from ..runtime.files import atomic_write

    out = Path(outdir)
    out.mkdir(parents=True, exist_ok=True)
    ph = make_phantom()
    slices = default_annotated_slices(ph.image.shape[0])
    ann = annotation_from_labels(ph.labels, slices)
    geo = {"spacing": ph.spacing, "origin": ph.origin}
    paths = {
        "image": save_volume(out / "phantom_t1.nii.gz", ph.image, kind="image",
                             overwrite=overwrite, **geo),
        "labels": save_volume(out / "phantom_labels.nii.gz", ph.labels, kind="labels",
                              overwrite=overwrite, **geo),
        "annotations": save_volume(out / "phantom_annotations.nii.gz", ann, kind="labels",
                                   overwrite=overwrite, **geo),
    }
    info = dict(ph.info, annotated_slices={"axis": 0, "slices": slices}, modality="MR")
    info_path = out / "phantom.json"
    with atomic_write(info_path, overwrite=overwrite) as fh:
        fh.write(json.dumps(info, indent=2) + "\n")
    paths["info"] = info_path
    return paths


def main(argv: list[str] | None = None) -> None:
    """Command line: regenerate the sample data."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("outdir", type=Path)
    args = parser.parse_args(argv)
    for key, path in write_sample_data(args.outdir).items():
        print(f"{key}: {path} ({path.stat().st_size / 1e6:.2f} MB)")


if __name__ == "__main__":
    main()
