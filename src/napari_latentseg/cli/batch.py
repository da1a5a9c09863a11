"""``latentseg batch``: apply a model to every scan of a folder or CSV manifest (dask)."""

from __future__ import annotations

import argparse
import sys
import threading
from pathlib import Path

from ._common import (
    EXIT_INTERRUPTED,
    CLIError,
    add_anomaly_options,
    add_common,
    class_id,
    drive_interruptible,
    is_terminal,
    note_with_self,
)


def add_parser(sub) -> None:
    b = sub.add_parser("batch", help="apply a model to every scan of a folder or CSV manifest "
                                     "(dask.distributed)")
    b.add_argument("input", metavar="INPUT",
                   help="folder of scans, or CSV manifest with columns image [, annotations] "
                        "[, anomaly_map] [, id]")
    b.add_argument("-m", "--model", required=True, metavar="MODEL")
    b.add_argument("--task", required=True, choices=["reconstruct", "cluster", "segment"])
    b.add_argument("-o", "--output", required=True, metavar="OUTDIR",
                   help="output folder: OUTDIR/<id>/ per scan and OUTDIR/summary.csv")
    b.add_argument("--scheduler", metavar="ADDRESS",
                   help="address of a running dask scheduler (tcp://host:8786) instead of a "
                        "LocalCluster on this machine")
    b.add_argument("--workers", type=int, default=None, metavar="N",
                   help="LocalCluster worker processes (default: one per GPU, else half the "
                        "cores); 0 = one scan after another in this process, without dask")
    b.add_argument("-k", "--k", dest="k", type=int, default=4,
                   help="cluster: number of clusters (default 4)")
    b.add_argument("--method", choices=["kmeans", "gmm"], default="kmeans", help="cluster method")
    b.add_argument("-a", "--annotations", metavar="FOLDER",
                   help="segment: annotations named <id>.nii.gz (or another scan extension) "
                        "for scans the manifest gives none")
    b.add_argument("--anomaly-maps", metavar="FOLDER",
                   help="segment: each scan's anomaly score as one more feature of the forest, "
                        "from FOLDER/<id>/anomaly_map.<ext> (the output folder of a `batch "
                        "--task reconstruct --anomaly-map` run) or FOLDER/<id>.<ext>, for "
                        "scans the manifest's anomaly_map column leaves empty; MR tumours: "
                        "mean Dice over a correction loop +0.05 to +0.06")
    b.add_argument("--object-class", type=class_id, default=None, metavar="ID",
                   help="segment: with three or more painted classes, this class comes from a "
                        "two-class round, it against the other painted classes (as `latentseg "
                        "segment --object-class`)")
    b.add_argument("--format", default="nii.gz", choices=["nii.gz", "nii", "nrrd", "mha"],
                   help="output file format (default nii.gz)")
    b.add_argument("--tile", type=int, default=512, help="reconstruct: largest in-plane tile")
    add_anomaly_options(b.add_argument_group("reconstruct: anomaly scoring"), "each")
    b.add_argument("--anomaly-map", action="store_true",
                   help="reconstruct: also write each scan's continuous anomaly score "
                        "(anomaly_map.<format>; higher = more abnormal)")
    b.add_argument("--seed", type=int, default=0)
    b.add_argument("--dashboard", default=":8787", metavar="ADDRESS",
                   help="LocalCluster dashboard address (default :8787; 'none' for none)")
    b.add_argument("--verify", action="store_true",
                   help="on a rerun, check finished outputs by content hash (default: size)")
    add_common(b)
    b.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from ..batch.manifest import read_manifest
    from ..batch.runner import BatchError, run_batch_iter
    from ..batch.worker import BatchOptions
    from ..models.checkpoint import load_model

    if args.workers is not None and args.workers < 0:
        raise CLIError("--workers must be 0 (this process) or more")
    if args.scheduler and args.workers is not None:
        print("note: --workers is ignored with --scheduler (the cluster has its workers)",
              file=sys.stderr)
    if args.anomaly_maps and args.task != "segment":
        raise CLIError("--anomaly-maps is an input of --task segment (reconstruct writes "
                       "them with --anomaly-map)")
    if args.object_class is not None and args.task != "segment":
        raise CLIError("--object-class is an option of --task segment")
    jobs, ignored = read_manifest(args.input, annotations_dir=args.annotations,
                                  anomaly_maps_dir=args.anomaly_maps)
    if ignored and not args.quiet:
        shown = ", ".join(ignored[:5]) + (" ..." if len(ignored) > 5 else "")
        print(f"note: {len(ignored)} entries of {args.input} are not scans and are ignored: "
              f"{shown}", file=sys.stderr)
    n_maps = sum(bool(j.anomaly_map) for j in jobs)
    if args.task == "segment" and n_maps and not args.quiet:
        print(f"note: {n_maps} of {len(jobs)} scans have an anomaly map (one more feature of "
              "the forest); the others are segmented without one", file=sys.stderr)
    if args.task == "segment" and not any(j.annotations for j in jobs):
        raise CLIError("--task segment needs annotations: an annotations column in the "
                       "manifest, or -a FOLDER holding <id>.nii.gz files")
    out = Path(args.output)
    if out.exists() and not out.is_dir():
        raise CLIError(f"{out} exists and is not a folder")
    if not args.scheduler:  # scans run on this machine: its devices must do
        from ..runtime.device import resolve_device

        resolve_device(args.device)
    model = load_model(args.model, device="cpu")  # a bad file is one error, not N failures
    if args.task == "reconstruct" and args.with_self:
        note_with_self(model, "each scan is")
    try:
        options = BatchOptions(task=args.task, k=args.k, method=args.method, seed=args.seed,
                               tile=args.tile, output_format=args.format, device=args.device,
                               verify=args.verify, anomaly_method=args.anomaly_method,
                               fpr=args.fpr, with_self=args.with_self,
                               lower_symmetric=not args.keep_symmetric,
                               anomaly_map=args.anomaly_map,
                               lower_surface=not args.keep_surface,
                               object_class=args.object_class)
    except ValueError as exc:
        raise CLIError(str(exc)) from None
    dashboard = None if args.dashboard.strip().lower() in ("", "none") else args.dashboard
    stop = threading.Event()
    state: dict = {"bar": None}

    def progress(ev: dict) -> None:
        if ev["stage"] == "start":
            where = (f"dask scheduler {ev['scheduler']} ({ev['workers']} workers now)"
                     if args.scheduler else
                     f"LocalCluster of {ev['workers']} workers" if ev["workers"] else
                     "this process (no dask)")
            print(f"{len(jobs)} scans, task {args.task}, on {where}", file=sys.stderr)
            if ev.get("dashboard"):
                print(f"Dask dashboard: {ev['dashboard']}", file=sys.stderr, flush=True)
            elif ev["workers"] and dashboard and not args.scheduler:
                print("Dask dashboard: not available (it needs bokeh: pip install "
                      "'napari-latentseg[batch]')", file=sys.stderr)
            if not args.quiet and is_terminal(sys.stderr):
                from tqdm.auto import tqdm

                state["bar"] = tqdm(total=ev["total"], desc="scans", unit="scan",
                                    file=sys.stderr, dynamic_ncols=True)
            elif not args.quiet:  # a log file or a pipe: a plain line per scan, no redraws
                state["lines"] = [0, ev["total"]]
            return
        row = ev["row"]
        bar = state["bar"]
        if row["status"] == "failed":
            msg = f"{row['id']}: failed: {row['error']}"
            if bar is not None:
                bar.write(msg, file=sys.stderr)
            else:
                print(msg, file=sys.stderr)
        if bar is not None:
            bar.update(1)
            bar.set_postfix({"last": f"{row['id']} {row['status']}"}, refresh=True)
        elif state.get("lines"):
            state["lines"][0] += 1
            print(f"scans: {state['lines'][0]}/{state['lines'][1]} {row['id']} {row['status']}",
                  file=sys.stderr, flush=True)

    try:
        summary = drive_interruptible(
            run_batch_iter(jobs, args.model, options, out, workers=args.workers,
                           scheduler=args.scheduler, dashboard=dashboard, stop_event=stop),
            progress, stop)
    except BatchError as exc:
        raise CLIError(str(exc)) from None
    except KeyboardInterrupt:
        if state["bar"] is not None:
            state["bar"].close()
            state["bar"] = None
        print(f"latentseg batch: interrupted; finished scans are kept in {out} (see "
              f"{out / 'summary.csv'}); run the same command again to resume", file=sys.stderr)
        return EXIT_INTERRUPTED
    finally:
        if state["bar"] is not None:
            state["bar"].close()
    counts = summary.counts()
    n = len(summary.rows)
    processed = counts.get("done", 0)
    rate = ""
    if processed and summary.seconds > 0:
        rate = f" ({60.0 * processed / summary.seconds:.1f} scans/min processed)"
    print(f"wrote {summary.path}: {processed} done, {counts.get('skipped', 0)} skipped, "
          f"{counts.get('failed', 0)} failed of {n} scans in {summary.seconds:.1f} s{rate}")
    if summary.interrupted:
        print(f"latentseg batch: stopped; {counts.get('not run', 0)} scans did not run; run "
              "the same command again to resume", file=sys.stderr)
        return EXIT_INTERRUPTED
    if counts.get("failed"):
        print(f"latentseg batch: {counts['failed']} scans failed (their errors are in "
              f"{summary.path})", file=sys.stderr)
        return 1
    return 0
