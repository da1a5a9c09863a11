"""``latentseg fit``: fit a VAE to one or more scans (no labels needed)."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from ..engine.fit_options import LR_SCHEDULES, FitOptions
from ..models.config import DEFAULT_CONFIG
from ._common import CLIError, add_common, load_scan, run_core

DEFAULT_STEPS = 450
# Methods with a normative mode (the error map needs no statistics).
_NORMATIVE_METHODS = ("default", "intensity", "contrast", "features", "knn", "dae")


def add_parser(sub) -> None:
    f = sub.add_parser("fit", help="fit a VAE to one or more scans (no labels needed)")
    f.add_argument("images", nargs="+", metavar="IMAGE",
                   help="NIfTI, NRRD, MetaImage file or DICOM folder")
    f.add_argument("-o", "--output", required=True, metavar="MODEL",
                   help="model file to write (an existing file is kept; a new version is written)")
    f.add_argument("--config", default=DEFAULT_CONFIG,
                   help=f"model configuration (see `latentseg info`); default {DEFAULT_CONFIG}")
    budget = f.add_mutually_exclusive_group()
    budget.add_argument("--steps", type=int, default=None,
                        help=f"training steps (default {DEFAULT_STEPS})")
    budget.add_argument("--minutes", type=float, default=None,
                        help="time budget in minutes instead of a step count")
    f.add_argument("--decoder-steps", type=int, default=None, metavar="N",
                   help="steps of the decoder-only phase after the fit: sharper "
                        "reconstructions, the same segmentation features (default: as many as "
                        "--steps, fewer on the larger crops of large slices, or 40 %% of "
                        "--minutes; 0: none)")
    f.add_argument("--seed", type=int, default=0)
    f.add_argument("--lr", type=float, default=FitOptions.lr,
                   help=f"peak learning rate (default {FitOptions.lr:g})")
    f.add_argument("--lr-schedule", choices=LR_SCHEDULES, default=FitOptions.lr_schedule,
                   help="cosine: decay to zero over the budget (default); constant: the "
                        "rate until the end (the recipe of earlier model files)")
    f.add_argument("--kl-weight", type=float, default=FitOptions.kl_weight,
                   help=f"KL weight beta (default {FitOptions.kl_weight:g})")
    f.add_argument("--adversarial", action="store_true",
                   help="VAE-GAN: add a PatchDiscriminator (sharper, slower)")
    f.add_argument("--max-volumes-in-memory", type=int, default=4, metavar="M",
                   help="with more scans than M, read them from disk during the fit, at most M "
                        "in memory at once (default 4)")
    f.add_argument("--normative", action="store_true",
                   help="also fit normative anomaly statistics on these scans (healthy ones: "
                        "a reference cohort) and store them in the model; `reconstruct "
                        "--anomaly-map` then scores a new scan against them")
    f.add_argument("--normative-method", default="default", metavar="METHOD",
                   help="score of the normative statistics (default: contrast on CT, "
                        "dae on MR: a denoiser fitted three times on these scans, the "
                        "best at finding implanted spheres kept, ~3-15 min on a CPU; "
                        "also features, knn, intensity)")
    f.add_argument("--distributed", action="store_true",
                   help="DistributedDataParallel over the processes torchrun starts (automatic "
                        "when torchrun starts more than one; see docs/cohorts.md)")
    add_common(f)
    f.set_defaults(func=run, finish=finish_args)


def finish_args(args: argparse.Namespace) -> None:
    """Defaults that depend on other options, checked before any work."""
    if args.steps is None:
        # A time budget alone means "as many steps as fit"; otherwise the default count.
        args.steps = 10**9 if args.minutes is not None else DEFAULT_STEPS
    if args.steps < 1:
        raise CLIError("--steps must be at least 1")
    if args.decoder_steps is not None and args.decoder_steps < 0:
        raise CLIError("--decoder-steps must be at least 0")
    if args.normative_method not in _NORMATIVE_METHODS:
        raise CLIError(f"--normative-method must be one of {', '.join(_NORMATIVE_METHODS)}")


def run(args: argparse.Namespace) -> int:
    from ..engine import distributed as dist

    if args.max_volumes_in_memory < 1:
        raise CLIError("--max-volumes-in-memory must be at least 1")
    if args.distributed and "WORLD_SIZE" not in os.environ:
        raise CLIError("--distributed runs under torchrun: torchrun --nproc_per_node=N -m "
                       "napari_latentseg.cli fit ...")
    distributed = dist.launched_by_torchrun()
    world, rank = dist.world_info()[:2] if distributed else (1, 0)
    device = str(dist.init_distributed(args.device)) if distributed else args.device
    finished = False
    try:
        code = _fit(args, device, world, rank)
        finished = True
        return code
    finally:
        if distributed:
            dist.shutdown_distributed(finished)


def _fit(args: argparse.Namespace, device: str, world: int, rank: int) -> int:
    """The fit itself; under torchrun every rank runs it, only rank 0 saves and reports."""
    from ..engine.distributed import state_checksum
    from ..engine.stream import VolumeSource
    from ..engine.train import fit_iter
    from ..models.checkpoint import next_version_path, save_model

    opts = FitOptions(
        steps=args.steps, minutes=args.minutes, device=device, seed=args.seed,
        lr=args.lr, lr_schedule=args.lr_schedule, kl_weight=args.kl_weight,
        adversarial=args.adversarial, decoder_steps=args.decoder_steps,
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
        scans = [load_scan(p) for p in args.images]
        volumes = [s.data for s in scans]
        modalities = [s.modality for s in scans]
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
    result = run_core(lambda stop: fit_iter(volumes, args.config, opts, modalities=modalities,
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
    if args.normative:
        _fit_normative(args, result.model, scans if not stream else None)
    path = save_model(result.model, out)
    extra = ""
    if stream:
        extra = (f"; {volumes.loads} scan reads, at most {volumes.peak_resident} scans in "
                 "memory")
    decoder = f" + {result.decoder_steps} decoder steps" if result.decoder_steps else ""
    if world > 1:
        extra += f"; {world} processes (DistributedDataParallel)"
    print(f"saved {path} ({result.model.describe()}; stopped by {result.reason} after "
          f"{result.steps} steps{decoder}, {result.seconds:.0f} s; best validation L1 "
          f"{result.best_val:.4f}{extra})")
    return 0


class _OnDisk:
    """One attribute (``data``, ``spacing``) of scans read on demand: ``read(i)`` keeps the
    last scan, so asking for both of scan ``i`` in turn reads it once."""

    def __init__(self, read, n: int, attr: str) -> None:
        self.read, self.n, self.attr = read, n, attr

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i: int):
        return getattr(self.read(i), self.attr)


def _fit_normative(args: argparse.Namespace, model, scans: list | None) -> None:
    """Normative anomaly statistics of the fit's scans, stored in ``model.anomaly``."""
    import functools
    import time

    from .. import pipeline
    from ..runtime.progress import Cancelled

    t0 = time.perf_counter()
    if scans is None:  # streamed: read again, one scan at a time
        read = functools.lru_cache(maxsize=1)(lambda i: load_scan(str(args.images[i])))
        n = len(args.images)
        data, spacing, modalities = _OnDisk(read, n, "data"), _OnDisk(read, n, "spacing"), None
    else:
        data = [s.data for s in scans]
        spacing = [s.spacing for s in scans]
        modalities = [s.modality for s in scans]
    try:
        stats = run_core(lambda stop: pipeline.normative_job(
            model, data, spacing, modalities=modalities, method=args.normative_method,
            seed=args.seed, stop_event=stop), args.quiet)
    except Cancelled:  # Ctrl-C here keeps the fitted model: it is saved without them
        print("normative statistics stopped: the model is saved without them",
              file=sys.stderr)
        return
    fits = stats.get("dae_fits") or []  # the denoiser's fits and the check that chose one
    kept = ""
    if fits:
        best = max(fits, key=lambda f: f["check_ap"])
        kept = "; implanted spheres found per fit (average precision): " + ", ".join(
            f"seed {f['seed']} {f['check_ap']:.4f}" + (" (kept)" if f is best else "")
            for f in fits)
    print(f"normative statistics: {stats['method']} of {stats['n_scans']} scan(s), "
          f"{time.perf_counter() - t0:.0f} s{kept}", file=sys.stderr)
