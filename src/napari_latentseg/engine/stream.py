"""Fitting on more scans than fit in memory: scans read from disk on demand.

:class:`VolumeSource` stands for a list of scans (files, or loader functions) of which at most
``max_in_memory`` are held at once, normalised and indexed (:class:`PreparedVolume`), in an
LRU cache. :class:`StreamingCropSampler` draws training crops from a *resident* subset of that
size and, every ``rotate_every`` batches, swaps the longest-resident scan for another (chosen
with probability proportional to its training slices, as the in-memory sampler weights its
draws). Peak memory is therefore bounded by ``max_in_memory`` prepared scans whatever the
cohort's size, at the cost of reading each scan several times over a long fit.

Before training, :meth:`StreamingCropSampler.prepare_iter` reads every scan once: a corrupt
file fails the fit before any step, and the pass records each scan's shape, modality,
normalisation and training slices and takes the fixed validation crops (spread over the
cohort, from held-out slices as in memory). Normalisation is fitted per scan, as in memory.
"""

from __future__ import annotations

import os
from collections import OrderedDict
from collections.abc import Callable, Generator, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..models.config import ModelConfig
from .sampling import CropSampler, PreparedVolume, prepare_volume

__all__ = ["ScanInfo", "StreamingCropSampler", "VolumeSource"]

#: A loader returns a scan's array (z, y, x) and its modality (or None).
Loader = Callable[[], tuple[np.ndarray, str | None]]


@dataclass
class ScanInfo:
    """What the first read of a scan tells about it."""

    name: str
    shape: tuple[int, ...]
    modality: str
    n_train: int
    normalization: dict


class VolumeSource:
    """Scans read on demand, at most ``max_in_memory`` of them prepared at once.

    Parameters
    ----------
    items : sequence of path-like or callables
        Scan files / DICOM folders (read with :func:`~napari_latentseg.io.read_volume`), or
        functions returning ``(array, modality)``.
    max_in_memory : int
        Most prepared scans held at once (least recently used ones are dropped first).
    holdout_every : int
        Held-out slices for validation, as :func:`~.sampling.prepare_volume`.
    seed : int
        Seed of foreground subsampling.
    modalities : sequence of str, optional
        Modality per scan, overriding the file headers.
    rotate_every : int
        Training batches between two rotations of the resident scans
        (:class:`StreamingCropSampler`).

    Attributes
    ----------
    loads, evictions, peak_resident : int
        How many times a scan was read and prepared, dropped, and the most held at once.
    info : list of ScanInfo or None
        Filled as scans are first read.
    """

    def __init__(
        self,
        items: Sequence[str | os.PathLike[str] | Loader],
        *,
        max_in_memory: int = 2,
        holdout_every: int = 8,
        seed: int = 0,
        modalities: Sequence[str | None] | None = None,
        rotate_every: int = 8,
    ) -> None:
        if max_in_memory < 1:
            raise ValueError(f"max_in_memory must be at least 1, got {max_in_memory}")
        self.items = list(items)
        if not self.items:
            raise ValueError("no scan to read")
        if modalities is not None and len(modalities) != len(self.items):
            raise ValueError("one modality per scan is needed")
        self.max_in_memory = int(max_in_memory)
        self.holdout_every = holdout_every
        self.seed = seed
        self.modalities = list(modalities) if modalities is not None else None
        self.rotate_every = max(1, int(rotate_every))
        self.info: list[ScanInfo | None] = [None] * len(self.items)
        self._cache: OrderedDict[int, PreparedVolume] = OrderedDict()
        self.loads = 0
        self.evictions = 0
        self.peak_resident = 0

    def __len__(self) -> int:
        return len(self.items)

    def name(self, i: int) -> str:
        """A name for scan ``i`` (its path, or ``volume i``)."""
        item = self.items[i]
        return f"volume {i}" if callable(item) else str(item)

    @property
    def resident(self) -> list[int]:
        """Scans held now, least recently used first."""
        return list(self._cache)

    def _load(self, i: int) -> PreparedVolume:
        item = self.items[i]
        if callable(item):
            arr, mod = item()
        else:
            from ..io import read_volume

            vol = read_volume(item)
            arr, mod = vol.data, vol.metadata.get("modality")
        if self.modalities is not None and self.modalities[i]:
            mod = self.modalities[i]
        arr = np.asarray(arr)
        prepared = prepare_volume(arr, mod, holdout_every=self.holdout_every, seed=self.seed)
        self.loads += 1
        if self.info[i] is None:
            self.info[i] = ScanInfo(
                name=Path(self.name(i)).name, shape=tuple(int(s) for s in arr.shape),
                modality=prepared.modality, n_train=len(prepared.train_slices),
                normalization=prepared.normalizer.to_dict())
        return prepared

    def get(self, i: int) -> PreparedVolume:
        """Scan ``i`` prepared, from the cache or read now (dropping the LRU scan first)."""
        if i in self._cache:
            self._cache.move_to_end(i)
            return self._cache[i]
        while len(self._cache) >= self.max_in_memory:
            self._cache.popitem(last=False)
            self.evictions += 1
        prepared = self._load(i)
        self._cache[i] = prepared
        self.peak_resident = max(self.peak_resident, len(self._cache))
        return prepared

    def release(self, i: int) -> None:
        """Drop scan ``i`` from memory (no-op if it is not held)."""
        if self._cache.pop(i, None) is not None:
            self.evictions += 1

    def __iter__(self) -> Iterator[PreparedVolume]:
        for i in range(len(self)):
            yield self.get(i)

    def subset(self, n: int) -> Iterator[PreparedVolume]:
        """At most ``n`` scans spread evenly over the cohort, one held at a time by the caller."""
        idx = np.unique(np.linspace(0, len(self) - 1, min(n, len(self))).round().astype(int))
        for i in idx:
            yield self.get(int(i))


class StreamingCropSampler(CropSampler):
    """Training crops from a rotating subset of a :class:`VolumeSource`.

    Parameters
    ----------
    source : VolumeSource
        The scans; at most ``source.max_in_memory`` are resident.
    config : ModelConfig
        Crop geometry.
    foreground_fraction, augment, seed
        As :class:`~.sampling.CropSampler`.
    rotate_every : int
        Batches between two rotations of the resident subset.
    n_validation : int
        Fixed validation crops taken while the scans are first read.
    validation_seed : int
        Seed of the validation crops (the same on every rank of a distributed fit).
    """

    def __init__(
        self,
        source: VolumeSource,
        config: ModelConfig,
        foreground_fraction: float = 0.9,
        augment: bool = True,
        seed: int = 0,
        rotate_every: int = 8,
        n_validation: int = 16,
        validation_seed: int = 1234,
    ) -> None:
        self.source = source
        self.config = config
        self.fg_fraction = foreground_fraction
        self.augment = augment
        self.rng = np.random.default_rng(seed)
        self.rotate_every = max(1, int(rotate_every))
        self.n_validation = int(n_validation)
        self.validation_seed = validation_seed
        self.resident: list[int] = []
        self.weights = np.zeros(len(source))
        self.rotations = 0
        self._val: np.ndarray | None = None
        self._batches = 0

    def prepare_iter(self, check: Callable[[int, ScanInfo], None] | None = None
                     ) -> Generator[dict, None, None]:
        """Read every scan once (info, validation crops), then pick the first resident subset.

        Parameters
        ----------
        check : callable, optional
            Called as ``check(i, info)`` after scan ``i`` is first read; may raise.

        Yields
        ------
        dict
            ``stage`` ``"prepare"`` with ``message`` ``reading scan i/n``.
        """
        src = self.source
        n = len(src)
        nv = self.n_validation
        owner = [(i * n) // nv if n > nv else i % n for i in range(nv)]
        rng = np.random.default_rng(self.validation_seed)
        crops: dict[int, np.ndarray] = {}
        for j in range(n):
            yield {"stage": "prepare", "step": 0, "message": f"reading scan {j + 1}/{n}"}
            v = src.get(j)
            if check is not None:
                check(j, src.info[j])
            for i in (i for i in range(nv) if owner[i] == j):
                crops[i] = self.validation_crop(v, rng)
            del v
        self._val = np.stack([crops[i] for i in range(nv)]) if nv else None
        weights = np.array([info.n_train for info in src.info], dtype=float)
        if weights.sum() == 0:
            raise ValueError("every slice is held out; use more slices or holdout_every=0")
        self.weights = weights / weights.sum()
        # Start from the scans still in memory (no re-read), topped up by weighted picks.
        m = min(src.max_in_memory, int(np.count_nonzero(weights)))
        self.resident = [i for i in src.resident if weights[i] > 0][-m:]
        while len(self.resident) < m:
            self.resident.append(self._draw_new())
            src.get(self.resident[-1])

    def _draw_new(self) -> int:
        cand = np.array([i for i in range(len(self.source))
                         if i not in self.resident and self.weights[i] > 0])
        p = self.weights[cand] / self.weights[cand].sum()
        return int(cand[self.rng.choice(len(cand), p=p)])

    def _rotate(self) -> None:
        if np.count_nonzero(self.weights) <= len(self.resident):
            return  # every usable scan is already resident
        old = self.resident.pop(0)
        self.source.release(old)
        new = self._draw_new()
        self.source.get(new)
        self.resident.append(new)
        self.rotations += 1

    def _pick(self) -> PreparedVolume:
        w = self.weights[self.resident]
        i = self.resident[self.rng.choice(len(self.resident), p=w / w.sum())]
        return self.source.get(i)

    def sample(self, n: int | None = None) -> np.ndarray:
        """A batch of crops from the resident scans (rotating them every few batches)."""
        if not self.resident:
            raise RuntimeError("call prepare_iter() before sampling")
        if self._batches and self._batches % self.rotate_every == 0:
            self._rotate()
        self._batches += 1
        return super().sample(n)

    def validation_batch(self, n: int | None = None, seed: int = 1234) -> np.ndarray:
        """The validation crops taken by :meth:`prepare_iter` (``n``: at most that many)."""
        if self._val is None:
            raise RuntimeError("call prepare_iter() first")
        return self._val if n is None else self._val[:n]
