"""Cohort processing: one model applied to every scan of a folder or CSV manifest.

- :mod:`.manifest`: which scans a run processes, and the id (output folder) of each.
- :mod:`.worker`: :func:`~.worker.process_scan`, the pure per-scan function a worker runs
  (load the model once per process, run the task, write outputs atomically, stamp them).
- :mod:`.runner`: :func:`~.runner.run_batch_iter`, which schedules the scans on
  dask.distributed (a LocalCluster or an existing scheduler) or in this process, and keeps
  the summary table.

Nothing here imports napari or Qt; torch and dask are imported when a run needs them.
"""

__all__: list[str] = []
