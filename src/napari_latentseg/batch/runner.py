"""Scheduling a cohort's scans on dask.distributed (or in this process) and the summary table.

:func:`run_batch_iter` submits one :func:`~.worker.process_scan` task per scan:

- by default to a ``LocalCluster`` of ``workers`` processes, one thread each (one scan at a time
  per worker) and ``cores // workers`` torch threads each; with CUDA, one worker per GPU, each
  holding the worker resource ``GPU=1`` and using its own GPU;
- with ``scheduler="tcp://host:8786"`` to an existing scheduler (dask-jobqueue, dask-gateway, a
  Kubernetes deployment...): the workers must be able to import napari-latentseg and read the
  scans, the model and the output folder (a shared file system). With ``device="cuda"`` each
  task asks for the worker resource ``GPU=1``: start GPU workers with ``--resources GPU=1``;
- with ``workers=0`` the scans run one after the other in this process, without dask (for
  debugging, or where dask is not installed).

It yields a progress dict per finished scan and returns a :class:`BatchSummary`. The summary
table ``OUTDIR/summary.csv`` is rewritten atomically as scans finish (at most every few
seconds) and at the end, also when the run is interrupted: scans that did not run are listed
as ``not run``, and a rerun of the same command resumes (finished scans are skipped).
"""

from __future__ import annotations

import csv
import io
import logging
import os
import signal
import threading
import time
import uuid
from collections.abc import Callable, Generator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..runtime.errors import UserError
from ..runtime.files import atomic_write
from .manifest import ScanJob
from .worker import BatchOptions, file_hash, process_scan

__all__ = [
    "SUMMARY_NAME",
    "BatchError",
    "BatchSummary",
    "default_workers",
    "run_batch_iter",
    "run_batch",
    "write_summary",
]

SUMMARY_NAME = "summary.csv"
BASE_COLUMNS = ["id", "status", "seconds", "error", "image", "annotations", "device", "worker"]
TASK_COLUMNS = {
    "reconstruct": ["mean_error", "anomaly_candidates", "anomalous_volume_ml"],
    "cluster": [],
    "segment": ["mean_uncertainty"],
}
WORKER_DIED = ("the worker died while processing this scan (out of memory or a crash in a "
               "library); see the worker's log")


class BatchError(UserError):
    """A batch run cannot start (dask missing, scheduler unreachable...): one line for users."""


@dataclass
class BatchSummary:
    """The outcome of a batch run.

    Attributes
    ----------
    rows : list of dict
        One row per scan, in manifest order (see :func:`~.worker.process_scan`).
    path : Path
        The summary table (CSV).
    seconds : float
        Wall time of the run, cluster start included.
    workers : int
        Worker processes (0: in this process).
    dashboard : str or None
        The Dask dashboard address, when there was one.
    interrupted : bool
        The run was stopped before every scan finished.
    """

    rows: list[dict]
    path: Path
    seconds: float
    workers: int
    dashboard: str | None = None
    interrupted: bool = False
    timings: dict[str, float] = field(default_factory=dict)

    def counts(self) -> dict[str, int]:
        """Number of scans per status."""
        out: dict[str, int] = {}
        for r in self.rows:
            out[r["status"]] = out.get(r["status"], 0) + 1
        return out


def _columns(rows: Sequence[dict], task: str) -> list[str]:
    cols = BASE_COLUMNS + TASK_COLUMNS.get(task, [])
    vols = sorted({k for r in rows for k in r if k.startswith("volume_ml_")},
                  key=lambda k: int(k.rsplit("_", 1)[1]))
    extra = sorted({k for r in rows for k in r} - set(cols) - set(vols))
    return cols + vols + extra


def write_summary(path: str | os.PathLike[str], rows: Sequence[dict], task: str) -> Path:
    """Write the summary table atomically (temporary file, then rename); returns its path."""
    path = Path(path)
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=_columns(rows, task), restval="",
                            extrasaction="ignore", lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    with atomic_write(path) as fh:
        fh.write(buf.getvalue())
    return path


def _cuda_available() -> bool:
    try:
        import torch
    except ImportError:  # pragma: no cover - torch is a dependency
        return False
    return bool(torch.cuda.is_available())


def _gpu_mode(options: BatchOptions) -> bool:
    dev = options.device.lower()
    return dev == "cuda" or (dev == "auto" and _cuda_available())


def default_workers(options: BatchOptions) -> int:
    """Workers of a LocalCluster when none are asked for: one per GPU, else half the cores."""
    from ..runtime.device import usable_cores

    if _gpu_mode(options):
        import torch

        return max(1, torch.cuda.device_count())
    return max(1, usable_cores() // 2)


def _start_dask(scheduler: str | None, n_workers: int, gpu: bool, dashboard: str | None):
    try:
        import dask
        from distributed import Client, LocalCluster
    except ImportError:
        raise BatchError(
            "dask.distributed is not installed: pip install 'napari-latentseg[batch]' (or pass "
            "--workers 0 to process the scans in this process)") from None
    if scheduler:
        try:
            return Client(scheduler, timeout="30s"), None
        except (OSError, TimeoutError, ValueError) as exc:
            raise BatchError(f"cannot connect to the dask scheduler at {scheduler}: "
                             f"{str(exc).splitlines()[0] if str(exc) else exc!r}") from None
    kwargs: dict[str, Any] = {
        "n_workers": n_workers, "threads_per_worker": 1, "processes": True,
        "dashboard_address": dashboard, "silence_logs": logging.ERROR,
    }
    if gpu:
        kwargs["resources"] = {"GPU": 1}
    # Workers inherit an ignored SIGINT: Ctrl-C in a terminal reaches the whole process group,
    # and this process alone should answer it (cancel, close the cluster, write the summary)
    # rather than every worker printing a KeyboardInterrupt traceback.
    previous = None
    if threading.current_thread() is threading.main_thread():
        previous = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        # A scan that kills its worker (out of memory) fails at once instead of killing 3 more.
        with dask.config.set({"distributed.scheduler.allowed-failures": 0}):
            cluster = LocalCluster(**kwargs)
    finally:
        if previous is not None:
            signal.signal(signal.SIGINT, previous)
    try:
        return Client(cluster), cluster
    except BaseException:
        cluster.close()
        raise


def _dashboard(client, local: bool) -> str | None:
    """The dashboard's address; for a LocalCluster only when bokeh can serve it."""
    if local:
        import importlib.util

        if importlib.util.find_spec("bokeh") is None:
            return None  # the scheduler's HTTP port answers, but without the dashboard
    try:
        link = client.dashboard_link
    except (KeyError, AttributeError, OSError):
        return None
    return link or None


def _failed_row(job: ScanJob, message: str) -> dict[str, Any]:
    return {"id": job.id, "image": job.image, "annotations": job.annotations or "",
            "status": "failed", "error": message, "seconds": "", "device": "", "worker": ""}


def _future_error(exc: BaseException) -> str:
    name = type(exc).__name__
    if name == "KilledWorker":
        return WORKER_DIED
    if name == "CancelledError":
        return "cancelled (the scheduler or its workers went away)"
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
    return f"{name}: {text}"[:500] if text else name


def run_batch_iter(
    jobs: Sequence[ScanJob],
    model_path: str | os.PathLike[str],
    options: BatchOptions,
    outdir: str | os.PathLike[str],
    *,
    workers: int | None = None,
    scheduler: str | None = None,
    dashboard: str | None = ":8787",
    stop_event: threading.Event | None = None,
    summary_every: float = 5.0,
    fn: Callable[..., dict] = process_scan,
) -> Generator[dict, None, BatchSummary]:
    """Process every scan; yields progress dicts, returns a :class:`BatchSummary`.

    Parameters
    ----------
    jobs : sequence of ScanJob
        The cohort (see :func:`~.manifest.read_manifest`).
    model_path : path-like
        Model file (workers load it themselves: it must be readable where they run).
    options : BatchOptions
        Task and task options.
    outdir : path-like
        Output folder (created): ``<id>/`` per scan and ``summary.csv``.
    workers : int, optional
        LocalCluster worker processes (default :func:`default_workers`); 0 runs the scans in
        this process without dask. Ignored with ``scheduler``.
    scheduler : str, optional
        Address of an existing dask scheduler (``tcp://host:8786``) instead of a LocalCluster.
    dashboard : str or None
        LocalCluster dashboard address (``":8787"``; ``None`` for none). The dashboard needs
        bokeh (``pip install 'napari-latentseg[batch]'``).
    stop_event : threading.Event, optional
        Set to stop: pending scans are cancelled, finished outputs kept.
    summary_every : float
        Rewrite the summary table at most this often (seconds) while scans finish.
    fn : callable
        The per-scan function, :func:`~.worker.process_scan` or a wrapper taking and passing
        on the same arguments (it must be importable where the workers run).

    Yields
    ------
    dict
        First ``{"stage": "start", "total", "workers", "dashboard", "scheduler"}``, then per
        finished scan ``{"stage": "scans", "done", "total", "row"}``.
    """
    t0 = time.perf_counter()
    jobs = list(jobs)
    out = Path(outdir).expanduser()
    out.mkdir(parents=True, exist_ok=True)
    summary_path = out / SUMMARY_NAME
    model_path = str(Path(model_path).expanduser().resolve())
    model_hash = file_hash(model_path)
    rows: dict[str, dict] = {}
    last_write = [0.0]

    def ordered(final: bool) -> list[dict]:
        return [rows.get(j.id) or {**_failed_row(j, ""), "status": "not run" if final
                                   else "pending"} for j in jobs]

    def save(force: bool = False, final: bool = False) -> None:
        now = time.perf_counter()
        if force or now - last_write[0] >= summary_every:
            write_summary(summary_path, ordered(final), options.task)
            last_write[0] = now

    interrupted = True
    started = False
    timings: dict[str, float] = {}
    client = cluster = None
    n_workers = 0
    link = None
    futures: dict = {}
    try:
        if workers == 0 and not scheduler:
            started = True
            yield {"stage": "start", "total": len(jobs), "workers": 0, "dashboard": None,
                   "scheduler": None}
            timings["start_s"] = time.perf_counter() - t0
            for i, job in enumerate(jobs):
                if stop_event is not None and stop_event.is_set():
                    break
                rows[job.id] = fn(job, model_path, options, str(out), model_hash)
                save()
                yield {"stage": "scans", "done": i + 1, "total": len(jobs), "row": rows[job.id]}
            else:
                interrupted = False
        else:
            gpu = _gpu_mode(options)
            if scheduler:
                resources = {"GPU": 1} if options.device.lower().startswith("cuda") else None
            else:
                n_workers = workers if workers is not None else default_workers(options)
                if n_workers < 0:
                    raise BatchError(f"workers must be >= 0, got {n_workers}")
                from ..runtime.device import usable_cores

                cores = usable_cores()
                options = BatchOptions(**{
                    **options.__dict__,
                    "device": "cuda" if gpu and options.device.lower() == "auto"
                    else options.device,
                    "gpu_per_worker": gpu and options.device.lower() in ("auto", "cuda"),
                    "threads": options.threads or max(1, cores // n_workers),
                })
                resources = {"GPU": 1} if gpu else None
            client, cluster = _start_dask(scheduler, n_workers, gpu and not scheduler, dashboard)
            if scheduler:
                n_workers = len(client.scheduler_info().get("workers", {}))
            link = _dashboard(client, local=cluster is not None) if (
                scheduler or dashboard) else None
            started = True
            timings["start_s"] = time.perf_counter() - t0
            yield {"stage": "start", "total": len(jobs), "workers": n_workers, "dashboard": link,
                   "scheduler": scheduler or client.scheduler.address}
            from distributed import as_completed

            run = uuid.uuid4().hex[:8]
            for job in jobs:
                fut = client.submit(fn, job, model_path, options, str(out), model_hash,
                                    key=f"latentseg-{job.id}-{run}", pure=False,
                                    resources=resources)
                futures[fut] = job
            done = 0
            for fut in as_completed(list(futures)):
                job = futures.pop(fut)
                try:
                    row = fut.result()
                except Exception as exc:  # the worker died, or the cluster went away
                    row = _failed_row(job, _future_error(exc))
                rows[job.id] = row
                done += 1
                save()
                yield {"stage": "scans", "done": done, "total": len(jobs), "row": row}
                if stop_event is not None and stop_event.is_set():
                    break
            else:
                interrupted = False
    finally:
        if futures and client is not None:
            try:
                client.cancel(list(futures), force=True)
            except Exception:  # shutting down anyway
                pass
        if client is not None:
            try:
                client.close(timeout=10)
            finally:
                if cluster is not None:
                    cluster.close(timeout=10)
        if started:
            save(force=True, final=True)
    timings["total_s"] = time.perf_counter() - t0
    return BatchSummary(ordered(True), summary_path, timings["total_s"], n_workers, link,
                        interrupted, timings)


def run_batch(jobs: Sequence[ScanJob], model_path: str | os.PathLike[str],
              options: BatchOptions, outdir: str | os.PathLike[str], *, progress=None,
              **kwargs) -> BatchSummary:
    """Blocking version of :func:`run_batch_iter` with an optional ``progress`` callback."""
    from ..runtime.progress import drive

    return drive(run_batch_iter(jobs, model_path, options, outdir, **kwargs), progress)
