"""The ``latentseg`` command line.

Sub-commands are a contract users script against: options are added, never renamed. Errors in
the user's input end with a non-zero exit status and one line on stderr (``--debug`` shows the
traceback); progress bars go to stderr, results are named on stdout.
"""

from __future__ import annotations

import argparse
import os
import sys
import threading
from collections.abc import Callable
from pathlib import Path

__all__ = ["main", "build_parser"]

EXIT_USAGE = 2
# Few-shot (forest + connectivity rule) is the default: seconds per round. A 60-step
# fine-tuning round (checked on held-out annotations) raised mean Dice over the 13 benchmark
# rows from 0.51 to 0.59, but almost all of it on one scan (lung2), with large swings between
# annotation counts, two rows below few-shot, 3-10x the time and a new model file per round
# (benchmarks/bench_segment.py, docs/benchmarks.md): opt-in (--finetune-steps).
DEFAULT_FINETUNE_STEPS = 0
EXIT_INTERRUPTED = 130


class CLIError(Exception):
    """An error explained to the user in one line."""


# --------------------------------------------------------------------------- helpers
def _read(path: str):
    from .io import read_volume

    p = Path(path)
    if not p.exists():
        raise CLIError(f"{path}: no such file or folder")
    return read_volume(p)


def _save(path: str, data, volume, kind: str, overwrite: bool) -> Path:
    from .io import save_volume

    return save_volume(path, data, volume.metadata.get("latentseg_geometry") or volume.geometry(),
                       kind=kind, overwrite=overwrite)


def _check_outputs(paths: list[str | None], overwrite: bool) -> None:
    """Fail before any work if an output exists (nothing of the user's is replaced)."""
    for p in paths:
        if p and Path(p).exists() and not overwrite:
            raise CLIError(f"{p} already exists; choose another name or pass --overwrite")


class _Progress:
    """tqdm bars keyed by stage, fed by the core's progress dicts."""

    def __init__(self, quiet: bool = False) -> None:
        self.quiet = quiet
        self.bars: dict[str, object] = {}

    def __call__(self, ev: dict) -> None:
        if self.quiet:
            return
        from tqdm.auto import tqdm

        stage = ev.get("stage", "work")
        total = ev.get("total")
        done = ev.get("step", ev.get("done", 0))
        bar = self.bars.get(stage)
        if bar is None:
            bar = tqdm(total=total, desc=stage, unit="step" if stage == "fit" else "it",
                       file=sys.stderr, leave=True, dynamic_ncols=True)
            self.bars[stage] = bar
        if total and bar.total != total:
            bar.total = total
        bar.n = done
        post = {}
        for key in ("loss", "val", "best_val"):
            if key in ev and ev[key] is not None:
                post[key] = f"{ev[key]:.4f}"
        if "message" in ev:
            post["msg"] = ev["message"]
        if post:
            bar.set_postfix(post, refresh=False)
        bar.refresh()

    def close(self) -> None:
        for bar in self.bars.values():
            bar.close()
        self.bars.clear()


def _drive_interruptible(gen, progress: Callable, stop: threading.Event):
    """Drive a core generator; the first Ctrl-C sets ``stop`` (a clean stop), the second aborts."""
    interrupted = False
    while True:
        try:
            ev = next(gen)
        except StopIteration as done:
            return done.value
        except KeyboardInterrupt:
            raise
        try:
            progress(ev)
        except KeyboardInterrupt:
            if interrupted:
                raise
            interrupted = True
            stop.set()
            print("\nstopping at the next step (Ctrl-C again to abort)...", file=sys.stderr)


def _run_core(make_gen: Callable[[threading.Event], object], quiet: bool):
    """Run the core generator ``make_gen(stop_event)`` with progress bars and clean Ctrl-C."""
    stop = threading.Event()
    progress = _Progress(quiet)
    try:
        return _drive_interruptible(make_gen(stop), progress, stop)
    finally:
        progress.close()


# --------------------------------------------------------------------------- commands
def cmd_fit(args: argparse.Namespace) -> int:
    from .engine import distributed as dist

    if args.max_volumes_in_memory < 1:
        raise CLIError("--max-volumes-in-memory must be at least 1")
    if args.distributed and "WORLD_SIZE" not in os.environ:
        raise CLIError("--distributed runs under torchrun: torchrun --nproc_per_node=N -m "
                       "napari_latentseg.cli fit ...")
    distributed = dist.launched_by_torchrun()
    world, rank = dist.world_info()[:2] if distributed else (1, 0)
    device = str(dist.init_distributed(args.device)) if distributed else args.device
    try:
        return _fit(args, device, world, rank)
    finally:
        if distributed:
            dist.shutdown_distributed()


def _fit(args: argparse.Namespace, device: str, world: int, rank: int) -> int:
    """The fit itself; under torchrun every rank runs it, only rank 0 saves and reports."""
    from .engine.distributed import state_checksum
    from .engine.stream import VolumeSource
    from .engine.train import FitOptions, fit_iter
    from .models.checkpoint import next_version_path, save_model

    opts = FitOptions(
        steps=args.steps, minutes=args.minutes, device=device, seed=args.seed,
        lr=args.lr, kl_weight=args.kl_weight, adversarial=args.adversarial,
    )
    stream = len(args.images) > args.max_volumes_in_memory
    if stream:
        # More scans than may be held: read them from disk on demand during the fit.
        for path in args.images:
            if not Path(path).exists():
                raise CLIError(f"{path}: no such file or folder")
        volumes = VolumeSource([str(p) for p in args.images],
                               max_in_memory=args.max_volumes_in_memory,
                               holdout_every=opts.holdout_every, seed=opts.seed)
        modalities = None
    else:
        volumes, modalities = [], []
        for path in args.images:
            vol = _read(path)
            volumes.append(vol.data)
            modalities.append(vol.metadata.get("modality"))
    out = Path(args.output)
    if rank == 0:
        out = next_version_path(args.output)
        if out != Path(args.output):
            print(f"{args.output} exists and models are never overwritten: saving as {out}",
                  file=sys.stderr)
        if stream:
            print(f"streaming {len(args.images)} scans from disk, at most "
                  f"{args.max_volumes_in_memory} in memory", file=sys.stderr)
    sources = [str(Path(p).resolve()) for p in args.images]
    result = _run_core(lambda stop: fit_iter(volumes, args.config, opts, modalities=modalities,
                                             sources=sources, stop_event=stop),
                       args.quiet or rank != 0)
    if world > 1:
        # One line per rank: each rank's own crops give it its own loss, yet equal checksums
        # show that the ranks ended with the same weights.
        last = next((h["loss"] for h in reversed(result.history) if "loss" in h), float("nan"))
        print(f"rank {rank}/{world}: {result.steps} steps, last loss {last:.6f}, parameter "
              f"checksum {state_checksum(result.model.net)}", file=sys.stderr, flush=True)
    if rank != 0:
        return 0
    path = save_model(result.model, out)
    extra = ""
    if stream:
        extra = (f"; {volumes.loads} scan reads, at most {volumes.peak_resident} scans in "
                 "memory")
    if world > 1:
        extra += f"; {world} processes (DistributedDataParallel)"
    print(f"saved {path} ({result.model.describe()}; stopped by {result.reason} after "
          f"{result.steps} steps, {result.seconds:.0f} s; best validation L1 "
          f"{result.best_val:.4f}{extra})")
    return 0


def cmd_reconstruct(args: argparse.Namespace) -> int:
    from .engine.infer import reconstruct_iter
    from .models.checkpoint import load_model

    _check_outputs([args.output, args.error, args.anomalies], args.overwrite)
    vol = _read(args.image)
    model = load_model(args.model, device=args.device)
    res = _run_core(lambda stop: reconstruct_iter(
        model, vol.data, modality=vol.metadata.get("modality"),
        anomalies=args.anomalies is not None, tile=args.tile, stop_event=stop), args.quiet)
    written = [_save(args.output, res.reconstruction, vol, "image", args.overwrite)]
    if args.error:
        written.append(_save(args.error, res.error, vol, "image", args.overwrite))
    if args.anomalies is not None:
        written.append(_save(args.anomalies, res.anomalies, vol, "labels", args.overwrite))
    for p in written:
        print(f"wrote {p}")
    extra = f", {res.n_candidates} anomaly candidates" if args.anomalies is not None else ""
    print(f"reconstructed {vol.data.size / 1e6:.1f} Mvoxels in {res.seconds:.1f} s "
          f"on {res.info['device']}{extra}")
    return 0


def _same_grid(image, other, what: str) -> None:
    """Refuse annotations that are not on the image's grid (shape and geometry)."""
    from .io import check_same_grid

    try:
        check_same_grid(image, other, what)
    except ValueError as exc:
        raise CLIError(str(exc)) from None


def cmd_cluster(args: argparse.Namespace) -> int:
    from .engine.segment import cluster_iter
    from .models.checkpoint import load_model

    _check_outputs([args.output], args.overwrite)
    vol = _read(args.image)
    model = load_model(args.model, device=args.device)
    res = _run_core(lambda stop: cluster_iter(
        model, vol.data, args.k, method=args.method, seed=args.seed,
        modality=vol.metadata.get("modality"), stop_event=stop), args.quiet)
    print(f"wrote {_save(args.output, res.labels, vol, 'labels', args.overwrite)} "
          f"({res.k} clusters by {res.method}, ids ordered by mean intensity, "
          f"{res.seconds:.1f} s)")
    return 0


def cmd_segment(args: argparse.Namespace) -> int:
    from .engine.segment import segment_iter
    from .models.checkpoint import load_model, next_version_path, save_model

    _check_outputs([args.output, args.uncertainty], args.overwrite)
    if args.save_model and Path(args.save_model).exists():
        raise CLIError(f"{args.save_model} already exists; models are never overwritten")
    vol = _read(args.image)
    ann = _read(args.annotations)
    _same_grid(vol, ann, "annotations")
    model = load_model(args.model, device=args.device)
    res = _run_core(lambda stop: segment_iter(
        model, vol.data, ann.data, modality=vol.metadata.get("modality"),
        finetune_steps=args.finetune_steps, classifier=args.classifier,
        keep_connected_regions=not args.all_regions, seed=args.seed, stop_event=stop),
        args.quiet)
    for note in res.notes:
        print(f"note: {note}", file=sys.stderr)
    print(f"wrote {_save(args.output, res.labels, vol, 'labels', args.overwrite)} "
          f"(classes {res.classes}, {res.seconds:.1f} s)")
    if args.uncertainty:
        print(f"wrote {_save(args.uncertainty, res.uncertainty, vol, 'image', args.overwrite)}")
    # The head (and a fine-tuned encoder) is a new model: never the file we started from.
    if args.save_model or args.finetune_steps > 0:
        target = Path(args.save_model) if args.save_model else next_version_path(args.model)
        saved = save_model(res.model, target)
        if res.model.head:
            print(f"saved {saved} (round {res.model.head['rounds']}; start the next round "
                  "from it)")
        else:
            print(f"saved {saved} (no segmentation head: few-shot rounds retrain the forest "
                  "from the annotations; --finetune-steps N trains one)")
    if args.suggest:
        sgt = res.suggestion
        if sgt["index"] is None:
            print("suggestion: every slice already holds annotations")
        else:
            print(f"suggestion: annotate slice {sgt['index']} along axis {sgt['axis']} "
                  f"(mean foreground uncertainty {sgt['score']:.3f})")
            for p in sgt["per_axis"]:
                if p["index"] is not None:
                    print(f"  axis {p['axis']}: slice {p['index']} ({p['score']:.3f})")
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    from .demo import run_demo

    stop = threading.Event()
    progress = _Progress(args.quiet)

    def report(ev: dict) -> None:
        try:
            progress(ev)
        except KeyboardInterrupt:
            stop.set()
            print("\nstopping at the next step...", file=sys.stderr)

    try:
        metrics = run_demo(args.output, input_path=args.input, annotations=args.annotations,
                           config=args.config, steps=args.steps, device=args.device,
                           finetune_steps=args.finetune_steps,
                           seed=args.seed, overwrite=args.overwrite, progress=report,
                           stop_event=stop)
    finally:
        progress.close()
    rec = metrics["reconstruction"]
    print(f"demo results in {args.output}: PSNR {rec['psnr_db']} dB, "
          f"{rec['anomaly_candidates']} anomaly candidates, on {metrics['device']}; "
          f"times {metrics['times_s']}")
    dice = metrics["segmentation"].get("dice_finetuned")
    if dice:
        print("Dice per class (slices without annotations): "
              + ", ".join(f"{k} {v:.3f}" for k, v in dice.items()))
    for name in metrics["outputs"]:
        print(f"  {Path(args.output) / name}")
    return 0


def cmd_batch(args: argparse.Namespace) -> int:
    from .batch.manifest import read_manifest
    from .batch.runner import BatchError, run_batch_iter
    from .batch.worker import BatchOptions
    from .models.checkpoint import load_model

    if args.workers is not None and args.workers < 0:
        raise CLIError("--workers must be 0 (this process) or more")
    if args.scheduler and args.workers is not None:
        print("note: --workers is ignored with --scheduler (the cluster has its workers)",
              file=sys.stderr)
    jobs, ignored = read_manifest(args.input, annotations_dir=args.annotations)
    if ignored and not args.quiet:
        shown = ", ".join(ignored[:5]) + (" ..." if len(ignored) > 5 else "")
        print(f"note: {len(ignored)} entries of {args.input} are not scans and are ignored: "
              f"{shown}", file=sys.stderr)
    if args.task == "segment" and not any(j.annotations for j in jobs):
        raise CLIError("--task segment needs annotations: an annotations column in the "
                       "manifest, or -a FOLDER holding <id>.nii.gz files")
    out = Path(args.output)
    if out.exists() and not out.is_dir():
        raise CLIError(f"{out} exists and is not a folder")
    load_model(args.model, device="cpu")  # a bad model file is one error here, not N failures
    if not args.scheduler:  # scans run on this machine: its devices must do
        from .runtime.device import resolve_device

        resolve_device(args.device)
    options = BatchOptions(task=args.task, k=args.k, method=args.method, seed=args.seed,
                           tile=args.tile, output_format=args.format, device=args.device,
                           verify=args.verify)
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
            if not args.quiet:
                from tqdm.auto import tqdm

                state["bar"] = tqdm(total=ev["total"], desc="scans", unit="scan",
                                    file=sys.stderr, dynamic_ncols=True)
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

    try:
        summary = _drive_interruptible(
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


def cmd_info(args: argparse.Namespace) -> int:
    from .models.checkpoint import load_model
    from .models.config import CONFIGS

    if args.model is None:
        for name, cfg in CONFIGS.items():
            print(f"{name:10s} {cfg.description}")
        return 0
    m = load_model(args.model)
    n = sum(p.numel() for p in m.net.parameters())
    print(f"{args.model}: {m.describe()}")
    print(f"  configuration {m.config.name}: {n / 1e3:.0f}k parameters, latent "
          f"{m.config.latent_channels} ch at 1/{m.config.downsampling}")
    print(f"  normalisation {m.normalization.get('method')}, anomaly threshold "
          f"{m.anomaly.get('threshold')}")
    print(f"  segmentation head: {'yes' if m.head else 'no'}")
    return 0


# --------------------------------------------------------------------------- parser
def build_parser() -> argparse.ArgumentParser:
    """The argument parser (exposed for documentation and tests)."""
    from . import __version__

    p = argparse.ArgumentParser(
        prog="latentseg",
        description="Variational autoencoders for medical volumes: fit, reconstruct, segment.",
    )
    p.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    p.add_argument("--debug", action="store_true", help="show tracebacks on errors")
    sub = p.add_subparsers(dest="command", metavar="COMMAND")

    def common(sp):
        sp.add_argument("--quiet", "-q", action="store_true", help="no progress bars")
        sp.add_argument("--device", default="auto",
                        help="auto (CUDA, then MPS, then CPU), cpu, cuda, cuda:N or mps")

    f = sub.add_parser("fit", help="fit a VAE to one or more scans (no labels needed)")
    f.add_argument("images", nargs="+", metavar="IMAGE",
                   help="NIfTI, NRRD, MetaImage file or DICOM folder")
    f.add_argument("-o", "--output", required=True, metavar="MODEL",
                   help="model file to write (an existing file is kept; a new version is written)")
    f.add_argument("--config", default="cpu-2d",
                   help="model configuration (see `latentseg info`); default cpu-2d")
    budget = f.add_mutually_exclusive_group()
    budget.add_argument("--steps", type=int, default=None, help="training steps (default 450)")
    budget.add_argument("--minutes", type=float, default=None,
                        help="time budget in minutes instead of a step count")
    f.add_argument("--seed", type=int, default=0)
    f.add_argument("--lr", type=float, default=1e-3, help="learning rate (default 1e-3)")
    f.add_argument("--kl-weight", type=float, default=1e-6, help="KL weight beta (default 1e-6)")
    f.add_argument("--adversarial", action="store_true",
                   help="VAE-GAN: add a PatchDiscriminator (sharper, slower)")
    f.add_argument("--max-volumes-in-memory", type=int, default=4, metavar="M",
                   help="with more scans than M, read them from disk during the fit, at most M "
                        "in memory at once (default 4)")
    f.add_argument("--distributed", action="store_true",
                   help="DistributedDataParallel over the processes torchrun starts (automatic "
                        "when torchrun starts more than one; see docs/cohorts.md)")
    common(f)
    f.set_defaults(func=cmd_fit)

    r = sub.add_parser("reconstruct", help="reconstruction, error map and anomaly candidates")
    r.add_argument("image", metavar="IMAGE")
    r.add_argument("-m", "--model", required=True, metavar="MODEL")
    r.add_argument("-o", "--output", required=True, metavar="RECON",
                   help="reconstruction (input's units and geometry)")
    r.add_argument("--error", metavar="ERRMAP", help="per-voxel absolute error (normalised units)")
    r.add_argument("--anomalies", metavar="LABELS", help="anomaly candidates as a label volume")
    r.add_argument("--tile", type=int, default=512, help="largest in-plane tile (default 512)")
    r.add_argument("--overwrite", action="store_true", help="replace existing output files")
    common(r)
    r.set_defaults(func=cmd_reconstruct)

    c = sub.add_parser("cluster", help="unsupervised clusters of the VAE features")
    c.add_argument("image", metavar="IMAGE")
    c.add_argument("-m", "--model", required=True, metavar="MODEL")
    c.add_argument("-k", type=int, default=4, help="number of clusters (default 4)")
    c.add_argument("-o", "--output", required=True, metavar="LABELS")
    c.add_argument("--method", choices=["kmeans", "gmm"], default="kmeans")
    c.add_argument("--seed", type=int, default=0)
    c.add_argument("--overwrite", action="store_true", help="replace an existing output file")
    common(c)
    c.set_defaults(func=cmd_cluster)

    s = sub.add_parser("segment", help="few-shot segmentation from sparse annotations")
    s.add_argument("image", metavar="IMAGE")
    s.add_argument("-m", "--model", required=True, metavar="MODEL")
    s.add_argument("-a", "--annotations", required=True, metavar="ANNOTATIONS",
                   help="label volume on the image grid: 0 = not annotated, 1..N = classes")
    s.add_argument("-o", "--output", required=True, metavar="LABELS")
    s.add_argument("--finetune-steps", type=int, default=DEFAULT_FINETUNE_STEPS,
                   help=f"fine-tuning steps of an MLP head + the encoder, which refines the "
                        f"forest's boundaries if held-out annotations say it helps (default "
                        f"{DEFAULT_FINETUNE_STEPS}; 0 = few-shot only; 60 is about a minute on "
                        f"a 2-core CPU)")
    s.add_argument("--classifier", choices=["forest", "mlp"], default="forest",
                   help="forest: random forest on multiscale + VAE features (default); mlp: "
                        "an MLP head on the VAE hypercolumn alone")
    s.add_argument("--all-regions", action="store_true",
                   help="keep regions not connected to a stroke of their class (default: "
                        "drop them, so the object is the one you painted; use this to find "
                        "lesions you did not paint)")
    s.add_argument("--save-model", metavar="MODEL2",
                   help="where to save the model with its head (default: next free version "
                        "of MODEL, e.g. model-v2.pt)")
    s.add_argument("--uncertainty", metavar="MAP", help="per-voxel uncertainty (entropy) map")
    s.add_argument("--suggest", action="store_true", help="print the next slice to annotate")
    s.add_argument("--seed", type=int, default=0)
    s.add_argument("--overwrite", action="store_true", help="replace existing output images")
    common(s)
    s.set_defaults(func=cmd_segment)

    d = sub.add_parser("demo", help="the whole job on the embedded phantom (or --input SCAN)")
    d.add_argument("--output", "-o", default="demo_output", help="output folder")
    d.add_argument("--input", metavar="SCAN", help="use this scan instead of the phantom")
    d.add_argument("--annotations", metavar="ANN", help="sparse annotations for --input")
    d.add_argument("--config", default="cpu-2d")
    d.add_argument("--steps", type=int, default=400, help="fit steps (default 400)")
    d.add_argument("--finetune-steps", type=int, default=60,
                   help="fine-tuning steps of the demo's fine-tuning round (default 60)")
    d.add_argument("--seed", type=int, default=0)
    d.add_argument("--overwrite", action="store_true", help="replace earlier demo results")
    common(d)
    d.set_defaults(func=cmd_demo)

    b = sub.add_parser("batch", help="apply a model to every scan of a folder or CSV manifest "
                                     "(dask.distributed)")
    b.add_argument("input", metavar="INPUT",
                   help="folder of scans, or CSV manifest with columns image [, annotations] "
                        "[, id]")
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
    b.add_argument("--format", default="nii.gz", choices=["nii.gz", "nii", "nrrd", "mha"],
                   help="output file format (default nii.gz)")
    b.add_argument("--tile", type=int, default=512, help="reconstruct: largest in-plane tile")
    b.add_argument("--seed", type=int, default=0)
    b.add_argument("--dashboard", default=":8787", metavar="ADDRESS",
                   help="LocalCluster dashboard address (default :8787; 'none' for none)")
    b.add_argument("--verify", action="store_true",
                   help="on a rerun, check finished outputs by content hash (default: size)")
    common(b)
    b.set_defaults(func=cmd_batch)

    i = sub.add_parser("info", help="describe a model file, or list the configurations")
    i.add_argument("model", nargs="?", metavar="MODEL")
    i.set_defaults(func=cmd_info)
    return p


def _finish_fit_args(args: argparse.Namespace) -> None:
    if args.command == "fit":
        if args.steps is None:
            # A time budget alone means "as many steps as fit"; otherwise the default count.
            args.steps = 10**9 if args.minutes is not None else 450
        if args.steps < 1:
            raise CLIError("--steps must be at least 1")


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``latentseg`` command."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "command", None):
        parser.print_help()
        return EXIT_USAGE
    from .runtime.progress import Cancelled
    from .io import VolumeIOError
    from .models.checkpoint import ModelFileError

    try:
        _finish_fit_args(args)
        return int(args.func(args) or 0)
    except KeyboardInterrupt:
        print("latentseg: interrupted; nothing was written", file=sys.stderr)
        return EXIT_INTERRUPTED
    except Cancelled as exc:
        print(f"latentseg: {exc}; nothing was written", file=sys.stderr)
        return EXIT_INTERRUPTED
    except (CLIError, VolumeIOError, ModelFileError, FileExistsError, ValueError) as exc:
        if args.debug:
            raise
        print(f"latentseg {args.command}: error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except MemoryError:
        print(f"latentseg {args.command}: error: out of memory; use a smaller --tile or a "
              "smaller configuration", file=sys.stderr)
        return 1
    except RuntimeError as exc:
        if args.debug:
            raise
        msg = str(exc).splitlines()[0]
        if "out of memory" in msg.lower():
            msg = "GPU out of memory; use a smaller --tile or --device cpu"
        print(f"latentseg {args.command}: error: {msg}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
