"""``latentseg reconstruct``: reconstruction, error map and anomaly candidates."""

from __future__ import annotations

import argparse

from ._common import add_common, load_scan, run_core


def add_parser(sub) -> None:
    r = sub.add_parser("reconstruct", help="reconstruction, error map and anomaly candidates")
    r.add_argument("image", metavar="IMAGE")
    r.add_argument("-m", "--model", required=True, metavar="MODEL")
    r.add_argument("-o", "--output", required=True, metavar="RECON",
                   help="reconstruction (input's units and geometry)")
    r.add_argument("--error", metavar="ERRMAP", help="per-voxel absolute error (normalised units)")
    r.add_argument("--anomalies", metavar="LABELS", help="anomaly candidates as a label volume")
    r.add_argument("--tile", type=int, default=512, help="largest in-plane tile (default 512)")
    r.add_argument("--overwrite", action="store_true", help="replace existing output files")
    add_common(r)
    r.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from ..models.checkpoint import load_model
    from ..pipeline import check_outputs_free, reconstruct_job, save_outputs

    paths = {"reconstruction": args.output, "error": args.error, "anomalies": args.anomalies}
    check_outputs_free(list(paths.values()), args.overwrite)
    scan = load_scan(args.image)
    model = load_model(args.model, device=args.device)
    job = run_core(lambda stop: reconstruct_job(
        model, scan, anomalies=args.anomalies is not None, tile=args.tile, stop_event=stop),
        args.quiet)
    for p in save_outputs(job, paths, scan, overwrite=args.overwrite).values():
        print(f"wrote {p}")
    res = job.result
    extra = f", {res.n_candidates} anomaly candidates" if args.anomalies is not None else ""
    print(f"reconstructed {scan.data.size / 1e6:.1f} Mvoxels in {res.seconds:.1f} s "
          f"on {job.metrics['device']}{extra}")
    return 0
