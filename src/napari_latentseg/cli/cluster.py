"""``latentseg cluster``: unsupervised clusters of the VAE features."""

from __future__ import annotations

import argparse
import sys

from ._common import add_common, load_scan, run_core


def add_parser(sub) -> None:
    c = sub.add_parser("cluster", help="unsupervised clusters of the VAE features")
    c.add_argument("image", metavar="IMAGE")
    c.add_argument("-m", "--model", required=True, metavar="MODEL")
    c.add_argument("-k", type=int, default=4, help="number of clusters (default 4)")
    c.add_argument("-o", "--output", required=True, metavar="LABELS")
    c.add_argument("--method", choices=["kmeans", "gmm"], default="kmeans")
    c.add_argument("--seed", type=int, default=0)
    c.add_argument("--overwrite", action="store_true", help="replace an existing output file")
    add_common(c)
    c.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from ..models.checkpoint import load_model
    from ..pipeline import check_outputs_free, cluster_job, save_outputs

    check_outputs_free([args.output], args.overwrite)
    scan = load_scan(args.image)
    model = load_model(args.model, device=args.device)
    job = run_core(lambda stop: cluster_job(model, scan, k=args.k, method=args.method,
                                            seed=args.seed, stop_event=stop), args.quiet)
    for note in job.notes:
        print(f"note: {note}", file=sys.stderr)
    written = save_outputs(job, {"clusters": args.output}, scan, overwrite=args.overwrite)
    res = job.result
    print(f"wrote {written['clusters']} ({res.k} clusters by {res.method}, ids ordered by mean "
          f"intensity, {res.seconds:.1f} s)")
    return 0
