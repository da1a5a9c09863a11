"""Volume-level jobs: a scan and a model in, named outputs in the scan's geometry out.

Written once and used alike by the command line, ``latentseg batch``, the demo and the dock:

- :class:`Scan`: an image array with the geometry its outputs are written in and its modality,
  built from a file (:func:`load_scan`), a :class:`~napari_latentseg.io.Volume` or a layer's
  data and metadata (the dock).
- :func:`reconstruct_job`, :func:`cluster_job`, :func:`segment_job`: generators that yield the
  engine's progress dicts, stop on a ``threading.Event`` and return a :class:`JobResult`
  (outputs by role, metrics, notes, the engine's own result).
- :func:`save_outputs`: writes chosen roles to files in the scan's geometry (atomically, never
  over an existing file unless asked).

Nothing here imports torch, napari or Qt at import time.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Generator, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    from .engine.segment import FeatureCache
    from .io import Volume
    from .models.checkpoint import VAEModel

__all__ = [
    "Scan",
    "Output",
    "JobResult",
    "load_scan",
    "load_annotations",
    "label_volumes",
    "anomaly_metrics",
    "check_outputs_free",
    "reconstruct_job",
    "cluster_job",
    "segment_job",
    "keep_locked",
    "save_outputs",
]


@dataclass
class Scan:
    """An image and what its jobs need to know about it.

    Attributes
    ----------
    data : np.ndarray
        The voxels, (z, y, x) or (y, x), in the scan's own units.
    geometry : dict
        Spacing, origin, direction and shape as :func:`~napari_latentseg.io.save_volume`
        takes them: outputs are written on this grid.
    modality : str or None
        ``"CT"``, ``"MR"``... (picks the intensity normalisation); None when unknown.
    name : str
        For messages and output names.
    source : str or None
        The file it was read from.
    volume : Volume or None
        The volume it was read as (for grid checks of other files against it).
    """

    data: np.ndarray
    geometry: dict[str, Any]
    modality: str | None = None
    name: str = "scan"
    source: str | None = None
    volume: Volume | None = field(default=None, repr=False)

    @classmethod
    def from_volume(cls, volume: Volume, name: str | None = None) -> Scan:
        """A scan from a :class:`~napari_latentseg.io.Volume` (its exact file geometry when
        the reader recorded one, else the volume's own)."""
        meta = volume.metadata or {}
        geometry = meta.get("latentseg_geometry") or volume.geometry()
        source = meta.get("source_path")
        return cls(volume.data, geometry, meta.get("modality"),
                   name or str(meta.get("name") or (Path(source).name if source else "scan")),
                   str(source) if source else None, volume)

    @property
    def spacing(self) -> tuple[float, ...]:
        """Voxel size in mm along each array axis (1 mm where the geometry has none)."""
        sp = self.geometry.get("spacing") if self.geometry else None
        return tuple(float(s) for s in sp) if sp else (1.0,) * self.data.ndim

    @property
    def voxel_ml(self) -> float:
        """Volume of one voxel in millilitres."""
        return float(np.prod(self.spacing)) / 1000.0


@dataclass
class Output:
    """One output volume: ``kind`` is ``"image"`` or ``"labels"`` (how it is written)."""

    data: np.ndarray
    kind: str


@dataclass
class JobResult:
    """What a job produced.

    Attributes
    ----------
    outputs : dict
        Role (``reconstruction``, ``error``, ``anomalies``, ``clusters``, ``labels``,
        ``uncertainty``) -> :class:`Output`.
    metrics : dict
        Plain numbers for summaries (volumes in mL per label, mean error, ...).
    notes : list of str
        What the user should know about the result.
    result : object
        The engine's own result (``ReconstructionResult``, ``ClusterResult``,
        ``SegmentationResult``), for details the outputs do not carry.
    anomaly : AnomalyResult or None
        The anomaly scoring of a reconstruction job (candidates with volume and peak score).
    """

    outputs: dict[str, Output]
    metrics: dict[str, Any] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    result: Any = None
    anomaly: Any = None


def load_scan(path: str | os.PathLike[str]) -> Scan:
    """Read a scan (file or DICOM folder).

    Raises
    ------
    FileNotFoundError
        If ``path`` does not exist.
    napari_latentseg.io.VolumeIOError
        If it cannot be read.
    """
    from .io import read_volume

    p = Path(path)
    if not p.exists():
        raise FileNotFoundError(f"{path}: no such file or folder")
    scan = Scan.from_volume(read_volume(p))
    scan.source = scan.source or str(p)
    return scan


def load_annotations(scan: Scan, path: str | os.PathLike[str],
                     what: str = "annotations", *, with_classes: bool = False):
    """Read a label volume that must lie on ``scan``'s grid (shape, spacing, origin, direction).

    Returns the label array, or with ``with_classes`` the array and the classes (dicts with
    ``value``, ``name``...) its sidecar or header names, None when it names none.

    Raises
    ------
    FileNotFoundError
        If ``path`` does not exist.
    ValueError
        If it is not on the scan's grid (one line saying what differs).
    """
    from .io import check_same_grid, read_volume

    p = Path(path)
    if not p.exists():
        raise FileNotFoundError(f"{path}: no such file or folder")
    other = read_volume(p)
    if scan.volume is not None:
        check_same_grid(scan.volume, other, what)
    elif other.data.shape != scan.data.shape:
        raise ValueError(f"{what} have shape {other.data.shape} but the image has "
                         f"{scan.data.shape}; they must be on the image's grid")
    if with_classes:
        return other.data, other.metadata.get("label_classes")
    return other.data


def _note_modality(model: VAEModel | None, scan: Scan, notes: list, metrics: dict) -> None:
    """Note (and put in the summary's metrics) a model fitted on another modality."""
    from .engine.normalize import fitted_modalities, modality_note

    note = modality_note(fitted_modalities(model.info) if model is not None else [],
                         scan.data, scan.modality)
    if note:
        notes.append(note)
        metrics["note"] = note


def check_outputs_free(paths: list[str | os.PathLike[str] | None], overwrite: bool) -> None:
    """Refuse, before any work, outputs that exist (nothing of the user's is replaced)."""
    for p in paths:
        if p and Path(p).exists() and not overwrite:
            raise FileExistsError(f"{p} already exists; choose another name or pass --overwrite")


def _to_device(model: VAEModel, device: str | None) -> None:
    """Every job honours the chosen device the same way: the model moves there first."""
    if device is not None:
        from .runtime.device import resolve_device

        model.to(resolve_device(device))


def label_volumes(labels: np.ndarray, voxel_ml: float) -> dict[str, float]:
    """Volume in mL of each non-zero label: ``{"volume_ml_<id>": mL}``."""
    counts = np.bincount(np.asarray(labels).ravel().astype(np.int64))
    return {f"volume_ml_{i}": round(float(n) * voxel_ml, 4)
            for i, n in enumerate(counts) if i > 0 and n > 0}


def reconstruct_job(
    model: VAEModel | None,
    scan: Scan,
    *,
    anomalies: bool = True,
    anomaly_map: bool = False,
    anomaly_method: str = "default",
    fpr: float = 1e-3,
    tile: int = 512,
    device: str | None = None,
    lower_symmetric: bool = True,
    with_self: bool = False,
    lower_surface: bool = True,
    reconstruction: bool = True,
    stop_event: threading.Event | None = None,
) -> Generator[dict, None, JobResult]:
    """Reconstruction, error map and (``anomalies`` / ``anomaly_map``) anomaly scoring.

    With ``device``, every job first moves the model there (``auto``, ``cpu``, ``cuda``...).
    Roles: ``reconstruction`` (scan units), ``error`` (plain reconstruction error, normalised
    units), and with anomaly scoring (:mod:`~napari_latentseg.engine.anomaly`, its default
    method, calibrated without labels: ``-log10`` of the fraction of normal voxels scoring
    higher) ``anomaly_map`` (the score) and ``anomalies`` (candidate components 1..n, largest
    peak first). The model's normative statistics are used when it holds them
    (``model.anomaly["normative"]``), else the scan is its own reference.
    ``lower_symmetric=False`` keeps the denoiser's findings mirrored on both sides of the head;
    ``lower_surface=False`` its findings near the head's surface (on MR).
    ``with_self``: with normative statistics, also score the scan against itself and rank
    voxels by the mean of the two scores (no effect without them: the scan is then its
    own reference).
    ``model=None``: the anomaly score alone, of a method that needs no model (the defaults:
    the denoiser on MR, the contrast density on CT), on ``device``; the result is None.
    ``reconstruction=False``: the anomaly score alone with a model too (its normative
    statistics still serve), e.g. the dock's score made in the background for Segment.
    With a model and anomaly scoring, the reconstruction's outputs come first in a progress
    dict's ``partial`` (a :class:`JobResult` without the anomaly), for display meanwhile.
    """
    from .engine.infer import reconstruct_iter

    outputs: dict[str, Output] = {}
    metrics: dict[str, Any] = {}
    job = JobResult(outputs, metrics, [], None)
    if model is None or not reconstruction:
        if not (anomalies or anomaly_map):
            raise ValueError("without a model only the anomaly score can be computed: ask "
                             "for it, or give a fitted model" if model is None else
                             "nothing to compute: no reconstruction and no anomaly score")
        from .runtime.device import resolve_device

        if model is not None:
            _to_device(model, device)
        metrics["device"] = str(resolve_device(device or "auto") if model is None
                                else model.device)
    else:
        _to_device(model, device)
        res = yield from reconstruct_iter(model, scan.data, modality=scan.modality,
                                          anomalies=False, tile=tile, stop_event=stop_event)
        outputs.update(reconstruction=Output(res.reconstruction, "image"),
                       error=Output(res.error, "image"))
        metrics.update(device=str(res.info.get("device", model.device)),
                       mean_error=round(float(res.error.mean()), 6))
        job.result = res
        _note_modality(model, scan, job.notes, metrics)
        if anomalies or anomaly_map:  # to look at while the score computes (minutes on MR)
            yield {"stage": "reconstruct", "message": "reconstruction ready; scoring anomalies",
                   "partial": JobResult(dict(outputs), dict(metrics), list(job.notes), res)}
    if anomalies or anomaly_map:
        from .engine.anomaly import anomaly_iter

        # The model's normative statistics serve the method they were fitted for; any other
        # method (the dock's choice, --anomaly-method) scores the scan against itself.
        normative = (model.anomaly or {}).get("normative") if model is not None else None
        reference = ("model" if normative and anomaly_method in ("default", normative["method"])
                     else None)
        an = yield from anomaly_iter(model, scan.data, modality=scan.modality,
                                     method=anomaly_method, reference=reference, fpr=fpr,
                                     spacing=scan.spacing, error_map=False,
                                     lower_symmetric=lower_symmetric,
                                     with_self=with_self and reference is not None,
                                     lower_surface=lower_surface, stop_event=stop_event,
                                     device=metrics["device"] if model is None else None)
        outputs["anomaly_map"] = Output(an.score, "image")
        outputs["anomalies"] = Output(an.labels, "labels")
        job.anomaly = an
        metrics.update(anomaly_metrics(an.candidates))
        metrics["anomaly_method"] = f"{an.method} ({an.mode})"
    return job


def normative_job(
    model: VAEModel,
    volumes: Sequence[np.ndarray],
    spacings: Sequence[Sequence[float]],
    *,
    modalities: Sequence[str | None] | None = None,
    method: str = "default",
    seed: int = 0,
    stop_event: threading.Event | None = None,
) -> Generator[dict, None, dict]:
    """Normative anomaly statistics of reference scans (healthy ones), stored in
    ``model.anomaly["normative"]``; returns them. ``volumes`` may be a lazy sequence (each
    scan is read twice, one at a time). :func:`reconstruct_job` then scores a new scan
    against them."""
    from .engine.anomaly import fit_normative_iter

    stats = yield from fit_normative_iter(model, volumes, modalities=modalities, method=method,
                                          spacing=spacings, seed=seed,
                                          stop_event=stop_event)
    model.anomaly = {**(model.anomaly or {}), "normative": stats}
    return stats


def anomaly_metrics(candidates: list[dict], top: int = 3) -> dict[str, Any]:
    """Summary numbers of anomaly candidates: count, total mL, peak score, the top few."""
    return {
        "anomaly_candidates": len(candidates),
        "anomalous_volume_ml": round(float(sum(c["volume_ml"] for c in candidates)), 4),
        "anomaly_peak_score": round(float(max((c["peak_score"] for c in candidates),
                                              default=0.0)), 3),
        "anomaly_top": "; ".join(
            f"{c['volume_ml']:.2f} mL peak {c['peak_score']:.1f} at "
            f"{tuple(int(v) for v in c['centroid'])}" for c in candidates[:top]),
    }


def cluster_job(
    model: VAEModel,
    scan: Scan,
    *,
    k: int = 4,
    method: str = "kmeans",
    seed: int = 0,
    device: str | None = None,
    stop_event: threading.Event | None = None,
) -> Generator[dict, None, JobResult]:
    """Unsupervised clusters of the VAE features (role ``clusters``, ids by mean intensity)."""
    from .engine.segment import cluster_iter

    _to_device(model, device)
    res = yield from cluster_iter(model, scan.data, k, method=method, seed=seed,
                                  modality=scan.modality, stop_event=stop_event)
    metrics = {"device": str(model.device), **label_volumes(res.labels, scan.voxel_ml)}
    notes: list[str] = []
    _note_modality(model, scan, notes, metrics)
    return JobResult({"clusters": Output(res.labels, "labels")}, metrics, notes, res)


def segment_job(
    model: VAEModel | None,
    scan: Scan,
    annotations: np.ndarray,
    *,
    cache: FeatureCache | None = None,
    device: str | None = None,
    stop_event: threading.Event | None = None,
    locked: Iterable[int] | None = None,
    previous: np.ndarray | None = None,
    last_round: Any = None,
    **options: Any,
) -> Generator[dict, None, JobResult]:
    """Few-shot segmentation of ``scan`` from ``annotations`` (0 = not annotated, 1..N).

    ``options`` are :func:`~napari_latentseg.engine.segment.segment_iter`'s (fine-tuning
    steps, classifier, connectivity rule, seed...). Roles: ``labels``, ``uncertainty``. The
    result's ``model`` is a new model (a copy holding the head); the input model is unchanged.

    ``locked`` classes (finished structures) keep exactly their voxels of ``previous`` (the
    last segmentation, with the user's edits): see :func:`keep_locked`. A ``ValueError`` is
    raised when classes are locked without a ``previous`` on the scan's grid.

    ``last_round`` (the last round's result on this scan, for a round that only adds strokes
    to it: anything with its ``probabilities`` and ``classes``, such as a
    :class:`SegmentationResult`) is averaged in where the object shrinks (the engine's
    momentum: ``SegmentOptions.momentum``).
    """
    from .engine.segment import segment_iter

    ann = np.asarray(annotations)
    if ann.shape != scan.data.shape:
        raise ValueError(f"annotations have shape {ann.shape}, the scan {scan.data.shape}: "
                         "they must be on the scan's grid")
    locked = sorted({int(c) for c in locked or ()})
    if locked:
        if previous is None or np.shape(previous) != ann.shape:
            raise ValueError("locked classes need the previous segmentation on the scan's grid "
                             f"(got {None if previous is None else np.shape(previous)})")
        # The caller passes a copy taken where the layer cannot change (the dock: GUI thread).
        previous = np.asarray(previous)
    if model is not None:  # None: the forest on the ilastik features alone, no fit needed
        _to_device(model, device)
    res = yield from segment_iter(model, scan.data, ann, modality=scan.modality, cache=cache,
                                  stop_event=stop_event, spacing=scan.spacing,
                                  previous=last_round, **options)
    if locked:
        res.labels, res.uncertainty = keep_locked(res.labels, res.probabilities, res.classes,
                                                  previous, locked, res.uncertainty)
        res.notes.append(f"Locked classes {', '.join(map(str, locked))} kept their voxels.")
    metrics = {"device": str(res.model.device), **label_volumes(res.labels, scan.voxel_ml),
               "mean_uncertainty": round(float(res.uncertainty.mean()), 6)}
    # Only where the VAE served: its columns in the forest, or a fine-tuned head.
    if any(h.get("vae") or h.get("stage") in ("finetune", "head") for h in res.history):
        _note_modality(model, scan, res.notes, metrics)
    outputs = {"labels": Output(res.labels, "labels"),
               "uncertainty": Output(res.uncertainty, "image")}
    return JobResult(outputs, metrics, list(res.notes), res)


def keep_locked(
    labels: np.ndarray,
    probabilities: np.ndarray,
    classes: list[int],
    previous: np.ndarray,
    locked: Iterable[int],
    uncertainty: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray | None]:
    """Restore the voxels of ``locked`` classes from ``previous`` and keep the others out.

    A voxel that was a locked class in ``previous`` gets that class back (uncertainty 0); a
    voxel the new round gave a locked class but that was not that class before gets the most
    probable class that is not locked (0 when every predicted class is locked).

    Parameters
    ----------
    labels : np.ndarray
        The new round's labels.
    probabilities : np.ndarray
        ``(len(classes), *labels.shape)`` class probabilities of the round.
    classes : list of int
        The label value of each row of ``probabilities``.
    previous : np.ndarray
        The previous segmentation, on the same grid.
    locked : iterable of int
        Label values whose voxels must not change.
    uncertainty : np.ndarray, optional
        The round's uncertainty, set to 0 on the restored voxels.

    Returns
    -------
    tuple
        ``(labels, uncertainty)``, new arrays.
    """
    locked_set = {int(c) for c in locked}
    labels = np.array(labels, copy=True)
    previous = np.asarray(previous)
    if previous.shape != labels.shape:
        raise ValueError(f"previous segmentation has shape {previous.shape}, the new one "
                         f"{labels.shape}")
    keep = np.isin(previous, sorted(locked_set))
    intruders = np.isin(labels, sorted(locked_set)) & ~keep
    if intruders.any():
        free = [i for i, c in enumerate(classes) if int(c) not in locked_set]
        if free:
            # intruding voxels first: never a copy of the whole probability volume
            probs = np.asarray(probabilities)[(slice(None),) + np.nonzero(intruders)][free]
            best = np.asarray([classes[i] for i in free])[np.argmax(probs, axis=0)]
            labels[intruders] = best.astype(labels.dtype)
        else:
            labels[intruders] = 0
    labels[keep] = previous[keep].astype(labels.dtype)
    if uncertainty is not None:
        uncertainty = np.array(uncertainty, copy=True)
        uncertainty[keep] = 0.0
    return labels, uncertainty


def save_outputs(result: JobResult, paths: Mapping[str, str | os.PathLike[str] | None],
                 scan: Scan, *, overwrite: bool = False) -> dict[str, Path]:
    """Write the outputs named in ``paths`` (role -> file; None = not wanted) on the scan's
    grid; returns role -> written path. Each file is written atomically."""
    from .io import save_volume

    written = {}
    for role, path in paths.items():
        if not path:
            continue
        if role not in result.outputs:
            raise ValueError(f"this job has no {role!r} output "
                             f"(it has {', '.join(result.outputs)})")
        out = result.outputs[role]
        written[role] = save_volume(path, out.data, scan.geometry, kind=out.kind,
                                    overwrite=overwrite)
    return written
