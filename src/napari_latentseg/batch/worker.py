"""The per-scan work of a batch run, and the stamps that make reruns skip finished scans.

:func:`process_scan` is a pure function of its arguments (plus the files they name): a dask
worker, a process pool or a plain loop can run it. It never raises for a problem of the scan
(unreadable file, wrong annotations, out of memory): it returns a ``failed`` row with a
one-line message, so one bad scan never stops a cohort.

Outputs go to ``OUTDIR/<id>/`` in the scan's own geometry, each written atomically by
:func:`~napari_latentseg.io.save_volume` (temporary file, then rename). A stamp ``done.json``
is written last, also atomically; it records the content hashes of the inputs (scan, and
annotations for ``segment``), of the model file and of the task options, and the size and
hash of every output. A rerun skips a scan only if its stamp matches and every output it lists
is present with that size (and hash with ``verify``); anything else (no stamp, another model,
changed options or input, a missing or truncated output) is redone. The old stamp is removed
before a scan is redone, so an interrupted redo never looks finished. While an input's size and
modification time are those recorded in the stamp, its recorded hash is reused, so a rerun
does not read finished scans again (``verify`` hashes everything anew).
"""

from __future__ import annotations

import hashlib
import json
import os
import threading
import time
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

import numpy as np

from ..runtime.files import atomic_write
from .manifest import ScanJob

__all__ = ["CANDIDATES_NAME", "STAMP_NAME", "TASKS", "BatchOptions", "file_hash", "path_hash",
           "path_signature", "process_scan", "read_stamp", "stamp_is_complete", "task_outputs"]

TASKS = ("reconstruct", "cluster", "segment")
OUTPUT_FORMATS = ("nii.gz", "nii", "nrrd", "mha")
STAMP_NAME = "done.json"
STAMP_FORMAT = "napari-latentseg-batch-stamp"
_CHUNK = 1 << 20


@dataclass(frozen=True)
class BatchOptions:
    """What to do with every scan of a cohort.

    Parameters
    ----------
    task : {"reconstruct", "cluster", "segment"}
        ``reconstruct``: reconstruction, error map and anomaly candidates; ``cluster``:
        unsupervised labels (``k``, ``method``); ``segment``: few-shot segmentation from each
        scan's annotations, with its uncertainty map.
    k : int
        Clusters (task ``cluster``).
    method : {"kmeans", "gmm"}
        Clustering method.
    seed : int
        Seed of clustering / the segmentation head.
    tile : int
        Largest in-plane tile of reconstruction.
    output_format : {"nii.gz", "nii", "nrrd", "mha"}
        File format of the outputs.
    device : str
        ``auto``, ``cpu``, ``cuda``, ``cuda:N``, ``mps``.
    gpu_per_worker : bool
        With ``device`` ``cuda``: worker ``N`` of a LocalCluster (named ``0``, ``1``...) uses
        GPU ``N`` modulo the GPU count. On clusters that give each worker its own GPU
        (``CUDA_VISIBLE_DEVICES``), leave it False.
    threads : int or None
        torch threads per worker process (``None``: the process's default, see
        :func:`~napari_latentseg.runtime.device.configure_threads`).
    verify : bool
        On a rerun, hash every input and output again; without it, inputs whose size and
        modification time are unchanged keep their recorded hash and outputs are checked by
        size.
    anomaly_method : str
        Task ``reconstruct``: anomaly scoring method (``default`` or one of
        :data:`~napari_latentseg.engine.anomaly.METHODS`), as ``latentseg reconstruct``.
    fpr : float
        Task ``reconstruct``: false-positive rate of the candidate threshold.
    with_self : bool
        Task ``reconstruct``, with the model's normative statistics: also score each scan
        against itself, voxels ranked by the mean of the two scores.
    lower_symmetric : bool
        Task ``reconstruct``: lower the denoiser's findings mirrored on both sides of the head.
    lower_surface : bool
        Task ``reconstruct``: fade the denoiser's findings near the head's surface (MR).
    anomaly_map : bool
        Task ``reconstruct``: also write the continuous anomaly score (``anomaly_map.<ext>``).
    object_class : int or None
        Task ``segment``: ``SegmentOptions.object_class``, as ``latentseg segment``.
    """

    task: str = "reconstruct"
    k: int = 4
    method: str = "kmeans"
    seed: int = 0
    tile: int = 512
    output_format: str = "nii.gz"
    device: str = "auto"
    gpu_per_worker: bool = False
    threads: int | None = None
    verify: bool = False
    anomaly_method: str = "default"
    fpr: float = 1e-3
    with_self: bool = False
    lower_symmetric: bool = True
    anomaly_map: bool = False
    lower_surface: bool = True
    object_class: int | None = None

    def __post_init__(self) -> None:
        if self.task not in TASKS:
            raise ValueError(f"task must be one of {', '.join(TASKS)}, got {self.task!r}")
        if self.output_format not in OUTPUT_FORMATS:
            raise ValueError(f"output format must be one of {', '.join(OUTPUT_FORMATS)}")
        from ..engine.segment.cluster import check_cluster_args

        check_cluster_args(self.k if self.task == "cluster" else None, self.method)
        from ..engine.segment.options import SegmentOptions

        SegmentOptions(object_class=self.object_class)  # refuses a bad class id
        if self.tile < 16:
            raise ValueError(f"tile must be at least 16, got {self.tile}")
        if not 0.0 < self.fpr < 1.0:
            raise ValueError(f"fpr must be between 0 and 1, got {self.fpr}")
        from ..engine.anomaly import METHODS

        if self.anomaly_method not in ("default", *METHODS):
            raise ValueError(f"unknown anomaly method {self.anomaly_method!r}; choose default "
                             f"or one of {', '.join(METHODS)}")

    def result_key(self) -> dict[str, Any]:
        """The options that change a scan's outputs (what a stamp must match)."""
        key: dict[str, Any] = {"task": self.task, "format": self.output_format}
        if self.task == "reconstruct":
            key["tile"] = self.tile
            # Only what differs from the defaults: a rerun of an older run keeps its outputs.
            key.update({f.name: getattr(self, f.name) for f in fields(self)
                        if f.name in _ANOMALY_OPTIONS and getattr(self, f.name) != f.default})
        elif self.task == "cluster":
            key.update(k=self.k, method=self.method, seed=self.seed)
        else:
            key["seed"] = self.seed
            if self.object_class is not None:  # unset: an older run's stamp still matches
                key["object_class"] = self.object_class
        return key


# File name stem -> the pipeline job's output role, per task (file names are a contract).
_FILES = {
    "reconstruct": {"reconstruction": "reconstruction", "error": "error",
                    "anomalies": "anomalies"},
    "cluster": {"labels": "clusters"},
    "segment": {"labels": "labels", "uncertainty": "uncertainty"},
}
_KINDS = {"reconstruction": "image", "error": "image", "anomalies": "labels",
          "anomaly_map": "image",
          "clusters": "labels", "labels": "labels", "uncertainty": "image"}


_ANOMALY_OPTIONS = ("anomaly_method", "fpr", "with_self", "lower_symmetric", "anomaly_map",
                    "lower_surface")
CANDIDATES_NAME = "candidates.csv"


def _task_files(options: BatchOptions) -> dict[str, str]:
    files = dict(_FILES[options.task])
    if options.task == "reconstruct" and options.anomaly_map:
        files["anomaly_map"] = "anomaly_map"
    return files


def task_outputs(options: BatchOptions) -> dict[str, str]:
    """Output volumes of the task (file name -> kind, ``image`` or ``labels``); task
    ``reconstruct`` also writes :data:`CANDIDATES_NAME`, a table of the anomaly candidates."""
    ext = options.output_format
    return {f"{stem}.{ext}": _KINDS[role] for stem, role in _task_files(options).items()}


# --------------------------------------------------------------------------- hashing
def file_hash(path: str | os.PathLike[str]) -> str:
    """BLAKE2b (128-bit) of a file's bytes, as hex."""
    h = hashlib.blake2b(digest_size=16)
    with open(path, "rb") as fh:
        while chunk := fh.read(_CHUNK):
            h.update(chunk)
    return h.hexdigest()


def path_hash(path: str | os.PathLike[str]) -> str:
    """Content hash of a file, or of a folder (every file's relative name and bytes).

    Raises
    ------
    FileNotFoundError
        If ``path`` does not exist.
    """
    p = Path(path)
    if p.is_file():
        return file_hash(p)
    if not p.is_dir():
        raise FileNotFoundError(f"{p}: no such file or folder")
    h = hashlib.blake2b(digest_size=16)
    for root, dirs, files in os.walk(p):
        dirs.sort()
        for name in sorted(files):
            f = Path(root) / name
            h.update(str(f.relative_to(p)).encode())
            h.update(file_hash(f).encode())
    return h.hexdigest()


def path_signature(path: str | os.PathLike[str]) -> str:
    """Cheap fingerprint of a file or folder: names, sizes and modification times.

    A rerun reuses the content hash recorded in a stamp while the signature is unchanged
    (as rsync and make do), so skipping a finished scan does not read it again.
    """
    p = Path(path)
    h = hashlib.blake2b(digest_size=16)
    files = [p] if p.is_file() else sorted(f for f in p.rglob("*") if f.is_file())
    for f in files:
        st = f.stat()
        h.update(f"{f.relative_to(p) if f != p else ''}|{st.st_size}|{st.st_mtime_ns};".encode())
    return h.hexdigest()


def _options_hash(options: BatchOptions) -> str:
    text = json.dumps(options.result_key(), sort_keys=True)
    return hashlib.blake2b(text.encode(), digest_size=8).hexdigest()


# --------------------------------------------------------------------------- stamps
def read_stamp(scan_dir: str | os.PathLike[str]) -> dict | None:
    """The stamp of a scan's output folder, or None (missing or unreadable)."""
    try:
        stamp = json.loads((Path(scan_dir) / STAMP_NAME).read_text())
    except (OSError, ValueError):
        return None
    return stamp if isinstance(stamp, dict) and stamp.get("format") == STAMP_FORMAT else None


def stamp_is_complete(scan_dir: str | os.PathLike[str], stamp: dict | None,
                      expected: dict[str, str], verify: bool = False) -> bool:
    """True if ``stamp`` matches ``expected`` hashes and every output it lists is intact.

    Parameters
    ----------
    scan_dir : path-like
        The scan's output folder.
    stamp : dict or None
        As read by :func:`read_stamp`.
    expected : dict
        ``input_hash``, ``model_hash`` and ``options_hash`` the outputs must come from.
    verify : bool
        Compare each output's content hash too (default: its size only).
    """
    if not stamp or any(stamp.get(k) != v for k, v in expected.items()):
        return False
    outputs = stamp.get("outputs")
    if not isinstance(outputs, dict) or not outputs:
        return False
    for name, meta in outputs.items():
        f = Path(scan_dir) / name
        try:
            if f.stat().st_size != meta.get("bytes"):
                return False
        except OSError:
            return False
        if verify and file_hash(f) != meta.get("blake2b"):
            return False
    return True


def _write_json_atomic(path: Path, obj: dict) -> None:
    with atomic_write(path) as fh:
        json.dump(obj, fh, indent=1, sort_keys=True)
        fh.write("\n")


# --------------------------------------------------------------------------- model cache
# One model per worker process, kept between scans (keyed by file, content and device).
_MODELS: dict[tuple[str, str, str], Any] = {}
# Scans run one at a time per process: inference switches the network's memory format.
_RUN_LOCK = threading.Lock()


def _worker_name() -> str:
    try:
        from distributed import get_worker

        return str(get_worker().name)
    except (ImportError, ValueError):
        return f"local-{os.getpid()}"


def _device_for(options: BatchOptions) -> str:
    if options.gpu_per_worker and options.device == "cuda":
        import torch

        try:
            from distributed import get_worker

            index = int(get_worker().name)
        except (ImportError, ValueError, TypeError):
            index = 0
        n = torch.cuda.device_count()
        return f"cuda:{index % n}" if n else "cuda"
    return options.device


def _model(model_path: str, model_hash: str, device: str):
    from ..models.checkpoint import load_model

    key = (str(Path(model_path).resolve()), model_hash, device)
    model = _MODELS.get(key)
    if model is None:
        _MODELS.clear()  # one model at a time: a new model replaces the old one
        model = load_model(model_path, device=device)
        _MODELS[key] = model
    return model


# --------------------------------------------------------------------------- the task
def _thread_limits(threads: int | None):
    """BLAS/OpenMP thread pools (scikit-learn, scipy, numpy) sized like torch's.

    dask starts workers with OMP/MKL/OPENBLAS threads at 1, so without this the forest and
    k-means of a task ran on one core whatever ``--threads`` said.
    """
    import contextlib

    if not threads:
        return contextlib.nullcontext()
    from threadpoolctl import threadpool_limits

    return threadpool_limits(limits=int(threads))


def _run_task(job: ScanJob, model_path: str, model_hash: str, options: BatchOptions,
              scan_dir: Path) -> tuple[dict, dict[str, np.ndarray], Any, list | None]:
    """Run the task on one scan: (metrics, outputs by file name, the scan, the anomaly
    candidates or None)."""
    from ..pipeline import cluster_job, load_annotations, load_scan, reconstruct_job, segment_job
    from ..runtime.progress import drive

    scan = load_scan(job.image)
    ann = None
    if options.task == "segment":
        if not job.annotations:
            raise ValueError("no annotations for this scan: give them in the manifest's "
                             "annotations column (or -a FOLDER with <id>.nii.gz files)")
        ann = load_annotations(scan, job.annotations)
    # The scan's anomaly score as one more forest column (docs/interactive_benchmarks.md).
    score = (load_annotations(scan, job.anomaly_map, "the anomaly map")
             if options.task == "segment" and job.anomaly_map else None)
    model = _model(model_path, model_hash, _device_for(options))
    if options.task == "reconstruct":
        result = drive(reconstruct_job(
            model, scan, anomalies=True, anomaly_map=options.anomaly_map,
            anomaly_method=options.anomaly_method, fpr=options.fpr, tile=options.tile,
            lower_symmetric=options.lower_symmetric, with_self=options.with_self,
            lower_surface=options.lower_surface))
    elif options.task == "cluster":
        result = drive(cluster_job(model, scan, k=options.k, method=options.method,
                                   seed=options.seed))
    else:
        result = drive(segment_job(model, scan, ann, seed=options.seed, extra_features=score,
                                   object_class=options.object_class))
    ext = options.output_format
    outputs = {f"{stem}.{ext}": result.outputs[role].data
               for stem, role in _task_files(options).items() if role in result.outputs}
    candidates = result.anomaly.candidates if result.anomaly is not None else None
    return dict(result.metrics), outputs, scan, candidates


def _one_line(exc: BaseException) -> str:
    from ..runtime.errors import BATCH_HINTS, explain

    return explain(exc, BATCH_HINTS).message


def process_scan(
    job: ScanJob,
    model_path: str,
    options: BatchOptions,
    outdir: str,
    model_hash: str | None = None,
) -> dict[str, Any]:
    """Process one scan (or skip it when its outputs are complete); returns its summary row.

    Parameters
    ----------
    job : ScanJob
        The scan, its annotations (and anomaly map) and its id.
    model_path : str
        Model file, readable from where this runs (loaded once per process and kept).
    options : BatchOptions
        Task and task options.
    outdir : str
        The run's output folder; this scan's outputs go to ``outdir/<id>/``.
    model_hash : str, optional
        Content hash of the model file (computed here when not given).

    Returns
    -------
    dict
        ``id``, ``image``, ``annotations``, ``status`` (``done``, ``skipped`` or ``failed``),
        ``seconds``, ``error`` (one line, failed scans only), ``device``, ``worker`` and the
        task's metrics: ``mean_error``, ``anomaly_candidates``, ``anomalous_volume_ml``,
        ``anomaly_peak_score``, ``anomaly_top``, ``anomaly_method`` (reconstruct, which also
        writes the candidates' table :data:`CANDIDATES_NAME` next to its volumes);
        ``volume_ml_<label>`` (cluster, segment); ``mean_uncertainty`` (segment).
    """
    t0 = time.perf_counter()
    row: dict[str, Any] = {"id": job.id, "image": job.image, "annotations": job.annotations or "",
                           "status": "failed", "error": "", "device": "",
                           "worker": _worker_name()}
    try:
        if options.threads:
            from ..runtime.device import THREADS_ENV

            os.environ[THREADS_ENV] = str(int(options.threads))
        scan_dir = Path(outdir) / job.id
        if not Path(job.image).exists():
            raise FileNotFoundError(f"{job.image}: no such file or folder")
        inputs = [job.image]
        for extra in ((job.annotations, job.anomaly_map) if options.task == "segment" else ()):
            if extra and not Path(extra).exists():
                raise FileNotFoundError(f"{extra}: no such file or folder")
            inputs += [extra] if extra else []
        signature = "+".join(path_signature(p) for p in inputs)
        old = read_stamp(scan_dir)
        if old and not options.verify and old.get("input_signature") == signature:
            input_hash = old.get("input_hash")  # unchanged since it was hashed
        else:
            input_hash = "+".join(path_hash(p) for p in inputs)
        model_hash = model_hash or file_hash(model_path)
        expected = {"input_hash": input_hash, "model_hash": model_hash,
                    "options_hash": _options_hash(options)}
        if stamp_is_complete(scan_dir, old, expected, options.verify):
            row.update(old.get("metrics") or {})
            row["status"] = "skipped"
            return row
        if scan_dir.is_dir():
            (scan_dir / STAMP_NAME).unlink(missing_ok=True)  # a redo never looks finished
            for tmp in scan_dir.glob(".*.tmp-*"):  # left by a worker killed while writing
                tmp.unlink(missing_ok=True)
        with _RUN_LOCK, _thread_limits(options.threads):
            metrics, outputs, scan, candidates = _run_task(job, model_path, model_hash,
                                                           options, scan_dir)
        scan_dir.mkdir(parents=True, exist_ok=True)
        kinds = task_outputs(options)
        from ..io import save_volume

        written: dict[str, dict] = {}
        for name, data in outputs.items():
            p = save_volume(scan_dir / name, data, scan.geometry, kind=kinds[name], overwrite=True)
            written[name] = {"bytes": p.stat().st_size, "blake2b": file_hash(p)}
        if candidates is not None:
            from ..io.candidates import write_candidates_csv

            p = write_candidates_csv(scan_dir / CANDIDATES_NAME, candidates, scan.geometry,
                                     overwrite=True)
            written[CANDIDATES_NAME] = {"bytes": p.stat().st_size, "blake2b": file_hash(p)}
        # Outputs of an earlier, different run of this scan that this run did not write.
        for name in (old or {}).get("outputs") or {}:
            if name not in written and "/" not in name and not name.startswith("."):
                (scan_dir / name).unlink(missing_ok=True)
        from .. import __version__

        seconds = round(time.perf_counter() - t0, 3)
        _write_json_atomic(scan_dir / STAMP_NAME, {
            "format": STAMP_FORMAT, "format_version": 1, **expected,
            "input_signature": signature,
            "id": job.id, "image": job.image, "annotations": job.annotations,
            **({"anomaly_map": job.anomaly_map} if job.anomaly_map else {}),
            "model": str(model_path), "options": options.result_key(), "outputs": written,
            "metrics": metrics, "seconds": seconds, "package_version": __version__,
            "finished": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        })
        row.update(metrics)
        row["status"] = "done"
    except Exception as exc:  # one scan's failure (MemoryError too) is a row, not the end
        row["error"] = _one_line(exc)
    finally:
        row["seconds"] = round(time.perf_counter() - t0, 3)
    return row
