"""Probe: the denoiser's coarse-noise grid per cycle (session 29), paired on the bench's cases.

Each run patches ``anomaly_dae.DAE_NOISE_RES`` (cells per 64-voxel crop, one entry per
one-cycle run of 300 steps) and scores the benchmark's own cases (``bench_anomaly.
build_cases``) with the engine's default ``anomaly_map`` at the given seeds; one JSON line
per (case, seed) is appended to ``results/dae-grids-{grids}.jsonl`` and runs already there
are skipped, so a run that was stopped goes on where it ended. ~75 s a case on one thread.

Usage (one thread, two processes at most on the 2-core machine)::

    LATENTSEG_NUM_THREADS=1 python benchmarks/_dae_grids.py 8,4 0,1,2 'brain*-wm-*' phantom
"""

from __future__ import annotations

import fnmatch
import json
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent


def score_case(B, c: dict, seed: int, grids: tuple) -> dict:
    """The engine's default map of bench case ``c`` at ``seed``, scored: its JSON row.

    ``B`` is the ``bench_anomaly`` module; the row holds best Dice and AUPRC inside the case's
    scoring mask and the map's wall time (the denoiser's fits included).
    """
    from napari_latentseg.engine.anomaly import anomaly_map

    _, smask, _ = B.case_masks(c)
    t = time.perf_counter()
    res = anomaly_map(None, c["v"], modality=c["mod"], method="default",
                      spacing=c["sp"], error_map=False, seed=seed)
    best, auprc = B.curve_metrics(res.score, c["truth"], smask)
    row = {"case": c["name"], "seed": seed, "grids": list(grids), "best_dice": best,
           "auprc": auprc, "oracle": B.oracle_window(c["v"], c["truth"], smask),
           "seconds": round(time.perf_counter() - t, 1)}
    return row


def main(argv: list[str] | None = None) -> None:
    import napari_latentseg.engine.anomaly_dae as D

    sys.path.insert(0, str(HERE))
    import bench_anomaly as B

    args = sys.argv[1:] if argv is None else argv
    if len(args) < 3:
        raise SystemExit(__doc__)
    grids = tuple(int(r) for r in args[0].split(","))
    seeds = [int(s) for s in args[1].split(",")]
    D.DAE_NOISE_RES = grids  # one cycle per entry
    cases = [c for c in B.build_cases(False)[0]
             if any(fnmatch.fnmatch(c["name"], p) for p in args[2:])]
    out = HERE / "results" / f"dae-grids-{'-'.join(map(str, grids))}.jsonl"
    out.parent.mkdir(parents=True, exist_ok=True)
    done = set()
    if out.exists():
        done = {(r["case"], r["seed"]) for r in map(json.loads, out.read_text().splitlines())}
    for seed in seeds:
        for c in cases:
            if (c["name"], seed) in done:
                continue
            row = score_case(B, c, seed, grids)
            with out.open("a") as f:
                f.write(json.dumps(row) + "\n")
            print(json.dumps(row), flush=True)


if __name__ == "__main__":
    main()
