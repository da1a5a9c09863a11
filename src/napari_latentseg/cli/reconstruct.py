"""``latentseg reconstruct``: reconstruction, error map and anomaly candidates."""

from __future__ import annotations

import argparse
import sys

from ._common import (
    CLIError,
    add_anomaly_options,
    add_common,
    load_scan,
    note_with_self,
    run_core,
)


def add_parser(sub) -> None:
    r = sub.add_parser("reconstruct", help="reconstruction, error map and anomaly candidates")
    r.add_argument("image", metavar="IMAGE")
    r.add_argument("-m", "--model", metavar="MODEL",
                   help="fitted VAE (latentseg fit); without one, only the anomaly outputs "
                        "of a score that needs no model (the defaults: the denoiser on MR, "
                        "the contrast density on CT)")
    r.add_argument("-o", "--output", metavar="RECON",
                   help="reconstruction (input's units and geometry); needed with -m")
    r.add_argument("--error", metavar="ERRMAP", help="per-voxel absolute error (normalised units)")
    r.add_argument("--anomalies", metavar="LABELS",
                   help="anomaly candidates (connected components above the calibrated "
                        "threshold) as a label volume, 1 = highest peak")
    r.add_argument("--anomaly-map", metavar="SCORE",
                   help="continuous anomaly score in the scan's geometry (higher = more "
                        "abnormal: -log10 of the fraction of normal voxels scoring higher)")
    r.add_argument("--candidates", metavar="CSV",
                   help="table of the anomaly candidates: id (label value), volume in mL, "
                        "peak score, centre in voxels and in world LPS mm")
    add_anomaly_options(r)
    r.add_argument("--tile", type=int, default=512, help="largest in-plane tile (default 512)")
    r.add_argument("--overwrite", action="store_true", help="replace existing output files")
    add_common(r)
    r.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from ..models.checkpoint import load_model
    from ..pipeline import check_outputs_free, reconstruct_job, save_outputs

    if not 0.0 < args.fpr < 1.0:
        raise CLIError("--fpr must be between 0 and 1")
    paths = {"reconstruction": args.output, "error": args.error, "anomalies": args.anomalies,
             "anomaly_map": args.anomaly_map}
    scoring = any(p is not None for p in (args.anomalies, args.anomaly_map, args.candidates))
    if args.model and not args.output:
        raise CLIError("-o RECON is needed with a model (where the reconstruction goes)")
    if not args.model and (args.output or args.error):
        raise CLIError("-o and --error need a model (-m MODEL): without one there is only "
                       "the anomaly score (--anomaly-map, --anomalies, --candidates)")
    if not args.model and not scoring:
        raise CLIError("give a model (-m MODEL), or ask for the anomaly score alone with "
                       "--anomaly-map, --anomalies or --candidates")
    check_outputs_free([*paths.values(), args.candidates], args.overwrite)
    scan = load_scan(args.image)
    model = load_model(args.model, device=args.device) if args.model else None
    if args.with_self:
        note_with_self(model, "the scan is")
    job = run_core(lambda stop: reconstruct_job(
        model, scan, anomalies=args.anomalies is not None or args.candidates is not None,
        anomaly_map=args.anomaly_map is not None, anomaly_method=args.anomaly_method,
        fpr=args.fpr, tile=args.tile, lower_symmetric=not args.keep_symmetric,
        with_self=args.with_self, lower_surface=not args.keep_surface,
        device=None if model is not None else args.device, stop_event=stop), args.quiet)
    for note in job.notes:
        print(f"note: {note}", file=sys.stderr)
    for p in save_outputs(job, paths, scan, overwrite=args.overwrite).values():
        print(f"wrote {p}")
    if args.candidates:
        from ..io.candidates import write_candidates_csv

        p = write_candidates_csv(args.candidates, job.anomaly.candidates, scan.geometry,
                                 overwrite=args.overwrite)
        print(f"wrote {p}")
    res = job.result
    if res is not None:
        print(f"reconstructed {scan.data.size / 1e6:.1f} Mvoxels in {res.seconds:.1f} s "
              f"on {job.metrics['device']}")
    else:
        print(f"scored {scan.data.size / 1e6:.1f} Mvoxels without a model in "
              f"{job.anomaly.seconds:.1f} s on {job.metrics['device']}")
    if job.anomaly is not None:
        _print_candidates(job.anomaly)
    return 0


def _print_candidates(an, top: int = 10) -> None:
    cands = an.candidates
    print(f"anomaly scoring: {an.method} ({an.mode}), threshold {an.threshold:.2f}, "
          f"{len(cands)} candidates, {sum(c['volume_ml'] for c in cands):.2f} mL in all")
    surface = an.info.get("surface_mm")
    if surface:
        print(f"  scores fade in from {surface[0]:g} to {surface[1]:g} mm inside the head's "
              f"surface (eyes, nose, scalp); --keep-surface keeps superficial findings")
    for c in cands[:top]:
        centre = ", ".join(str(int(round(v))) for v in c["centroid"])
        print(f"  {c['id']:3d}: {c['volume_ml']:8.3f} mL, peak {c['peak_score']:.2f}, "
              f"centre voxel ({centre})")
    if len(cands) > top:
        print(f"  ... {len(cands) - top} more in the label volume")
