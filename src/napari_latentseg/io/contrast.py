"""The contrast a scan opens with: a CT window in Hounsfield units, percentiles otherwise.

CT
    The DICOM window (``WindowCenter``/``WindowWidth``, first value when several are
    given) when the file has one, else a soft-tissue window (centre 40, width 400 HU).
    A volume without a modality (NIfTI, NRRD) counts as CT when its values look like
    Hounsfield units (see :func:`looks_like_ct`).
MR, PET and anything else
    The 0.5th and 99.5th percentiles of the voxels, from a fixed random sample of at most
    a million voxels so that a 500^3 volume costs milliseconds.

Nothing here imports napari: the reader hook puts the result in the layer's
``contrast_limits`` once, when the layer is created.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from ._volume import Volume

__all__ = ["SOFT_TISSUE_WINDOW", "default_contrast_limits", "looks_like_ct", "sample_voxels"]

#: (centre, width) in HU of the soft-tissue window used for CT without a DICOM window.
SOFT_TISSUE_WINDOW = (40.0, 400.0)
#: Percentiles used for MR and unknown modalities.
PERCENTILES = (0.5, 99.5)
_MAX_SAMPLES = 1_000_000


def sample_voxels(data: np.ndarray, max_samples: int = _MAX_SAMPLES, seed: int = 0) -> np.ndarray:
    """All voxels as a flat array, or a fixed random sample of ``max_samples`` of them.

    A random (not strided) sample, so that a stride equal to a row length cannot pick a
    single column; the seed is fixed so the same file always opens with the same limits.
    """
    flat = np.asarray(data).reshape(-1)
    if flat.size <= max_samples:
        return flat
    idx = np.random.default_rng(seed).integers(0, flat.size, size=max_samples)
    return flat[idx]


def looks_like_ct(data: np.ndarray, sample: np.ndarray | None = None) -> bool:
    """True when the values look like Hounsfield units (a CT without a modality tag).

    Air at about -1000 HU surrounds every patient: at least 1 % of the voxels must lie
    between -1100 and -900 and none below -3100 (the lowest padding value scanners use).
    MR intensities are not negative, and normalised images do not reach -900.
    """
    arr = np.asarray(data)
    if arr.dtype.kind not in "if":
        return False
    s = sample_voxels(arr) if sample is None else sample
    if s.size == 0 or float(s.min()) < -3100:
        return False
    air = np.count_nonzero((s >= -1100) & (s <= -900))
    return air >= 0.01 * s.size


def default_contrast_limits(vol: Volume) -> dict[str, Any]:
    """Contrast limits for showing ``vol``, and where they come from.

    Parameters
    ----------
    vol : Volume
        A volume from :func:`napari_latentseg.io.read_volume` (``metadata["modality"]``
        and, for DICOM, ``metadata["dicom_window"]`` are used).

    Returns
    -------
    dict
        ``{"contrast_limits": [lo, hi], "source": str}``, ``source`` being ``"dicom
        window"``, ``"soft-tissue window"`` or ``"percentiles 0.5-99.5"`` (``"min-max"``
        when the percentiles coincide). ``lo < hi`` always.
    """
    meta = vol.metadata or {}
    modality = str(meta.get("modality") or "").upper()
    sample = sample_voxels(vol.data)
    is_ct = modality == "CT" or (not modality and looks_like_ct(vol.data, sample))
    if is_ct:
        window = meta.get("dicom_window")  # first centre/width, checked by the DICOM reader
        if window:
            centre, width = float(window["center"]), float(window["width"])
            return {"contrast_limits": [centre - width / 2, centre + width / 2],
                    "source": "dicom window"}
        centre, width = SOFT_TISSUE_WINDOW
        return {"contrast_limits": [centre - width / 2, centre + width / 2],
                "source": "soft-tissue window"}
    sample = sample.astype(np.float64, copy=False)
    lo, hi = (float(v) for v in np.percentile(sample, PERCENTILES))
    source = f"percentiles {PERCENTILES[0]:g}-{PERCENTILES[1]:g}"
    if not hi > lo:
        lo, hi = float(np.min(vol.data)), float(np.max(vol.data))
        source = "min-max"
    if not hi > lo:
        hi = lo + 1.0
    return {"contrast_limits": [lo, hi], "source": source}
