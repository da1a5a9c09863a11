"""Intensity normalisation per modality, stored with the model.

CT is normalised with a fixed Hounsfield window (the same mapping for every scan, so values keep
their physical meaning); MR and unknown modalities with robust percentiles of the foreground of
each scan (MR intensities have no absolute scale). Both map to roughly [0, 1] and are inverted
exactly inside the clipping range; :meth:`Normalizer.out_of_range` gives what clipping removed,
which reconstructions add back so they come back in the input's units over the whole range.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np

__all__ = ["Normalizer", "guess_modality", "foreground_mask", "fitted_modalities",
           "modality_note"]

_CT_WINDOW = (-1000.0, 1000.0)
_MR_PERCENTILES = (0.5, 99.5)


def guess_modality(volume: np.ndarray, modality: str | None = None) -> str:
    """Return ``"CT"`` or ``"MR"``; a header's modality wins, else values below -500 mean HU."""
    if modality:
        m = modality.upper()
        if m.startswith("CT"):
            return "CT"
        if m.startswith("M"):
            return "MR"
    sample = np.asarray(volume[:: max(1, volume.shape[0] // 8)])
    return "CT" if float(np.percentile(sample, 1)) < -500 else "MR"


def fitted_modalities(info: dict | None) -> list[str]:
    """The modalities a model was fitted on (its ``info["modalities"]``), sorted, unique."""
    return sorted({str(m).upper() for m in (info or {}).get("modalities") or () if m})


def modality_note(fitted: list[str] | None, volume: np.ndarray, modality: str | None) -> str | None:
    """A warning when a model ``fitted`` on scans of these modalities
    (:func:`fitted_modalities`) is used on ``volume`` of another, else None.

    What the VAE learnt, and its intensity normalisation, are those of its own scans: a CT
    read by a model of MR scans comes back poorly, and so do its features.
    """
    if not fitted:
        return None
    found = guess_modality(volume, modality)
    if found in fitted:
        return None
    how = "" if modality else " (guessed from its intensities)"
    return (f"The model was fitted on {' and '.join(fitted)} scans but this scan is "
            f"{found}{how}: its reconstruction, error map and VAE features will be poor. "
            f"Fit a model on {found} scans.")


def foreground_mask(volume: np.ndarray, modality: str) -> np.ndarray:
    """Body / head foreground: HU > -500 for CT, above half an Otsu threshold for MR."""
    if modality == "CT":
        return volume > -500
    from skimage.filters import threshold_otsu

    sub = np.asarray(volume[:: max(1, volume.shape[0] // 16)], dtype=np.float32).ravel()
    sub = sub[:: max(1, sub.size // 500_000)]
    if sub.max() == sub.min():
        return np.ones(volume.shape, dtype=bool)
    return volume > 0.5 * threshold_otsu(sub)


@dataclass
class Normalizer:
    """Affine intensity mapping ``(x - low) / (high - low)`` clipped to ``[clip_low, clip_high]``.

    Parameters
    ----------
    method : {"ct-window", "percentile"}
        ``ct-window`` uses ``window`` for every scan; ``percentile`` recomputes ``low`` and
        ``high`` from each scan's foreground at ``percentiles``.
    window : tuple of float
        HU window for CT.
    percentiles : tuple of float
        Lower and upper percentiles for MR.
    low, high : float
        Mapping of the scan last fitted (set by :meth:`fit`).
    """

    method: str = "percentile"
    window: tuple[float, float] = _CT_WINDOW
    percentiles: tuple[float, float] = _MR_PERCENTILES
    clip_low: float = -0.2
    clip_high: float = 1.5
    low: float = 0.0
    high: float = 1.0

    @classmethod
    def for_modality(cls, modality: str) -> Normalizer:
        """The default normaliser for ``"CT"`` or anything else (MR-like)."""
        if modality == "CT":
            return cls(method="ct-window", clip_low=0.0, clip_high=1.0)
        return cls(method="percentile")

    def fit(self, volume: np.ndarray, mask: np.ndarray | None = None) -> Normalizer:
        """Set ``low``/``high`` for this scan (a no-op for the CT window). Returns ``self``."""
        if self.method == "ct-window":
            self.low, self.high = map(float, self.window)
            return self
        if self.method != "percentile":
            raise ValueError(f"unknown normalisation method {self.method!r}")
        step = max(1, volume.shape[0] // 32)
        vals = np.asarray(volume[::step], dtype=np.float32)
        if mask is not None:
            vals = vals[np.asarray(mask[::step])]
        vals = vals.ravel()
        if vals.size == 0:
            vals = np.asarray(volume, dtype=np.float32).ravel()
        lo, hi = np.percentile(vals, self.percentiles)
        if hi <= lo:
            hi = lo + 1.0
        self.low, self.high = float(lo), float(hi)
        return self

    def __call__(self, x: np.ndarray) -> np.ndarray:
        """Normalise (float32)."""
        y = (np.asarray(x, dtype=np.float32) - self.low) / (self.high - self.low)
        return np.clip(y, self.clip_low, self.clip_high, out=y)

    def out_of_range(self, x: np.ndarray) -> np.ndarray:
        """What clipping removes from ``x``, in the input's units (0 inside the range).

        Adding it to a reconstruction brings back the intensities the network never sees
        (bright vessels, fat, metal), so a reconstruction matches the scan where it is normal.
        """
        x = np.asarray(x, dtype=np.float32)
        return x - self.inverse(self(x))

    def inverse(self, y: np.ndarray) -> np.ndarray:
        """Back to the input's intensity units (float32)."""
        return np.asarray(y, dtype=np.float32) * (self.high - self.low) + self.low

    def to_dict(self) -> dict:
        """JSON-friendly representation."""
        d = asdict(self)
        d["window"] = list(self.window)
        d["percentiles"] = list(self.percentiles)
        return d

    @classmethod
    def from_dict(cls, d: dict) -> Normalizer:
        """Inverse of :meth:`to_dict`."""
        d = dict(d)
        d["window"] = tuple(d.get("window", _CT_WINDOW))
        d["percentiles"] = tuple(d.get("percentiles", _MR_PERCENTILES))
        return cls(**d)
