"""Cohort benchmark: scans per minute of `latentseg batch` with 1 and 2 LocalCluster workers.

A cohort of generated head phantoms (40x128x128, a different seed each, written as NIfTI) and
the default ``cpu-2d`` configuration fitted briefly on one of them (throughput depends on the
network, not on how well it was fitted). Each case is a fresh ``latentseg batch`` process into
a fresh output folder, so cluster start-up, worker imports and model loading are counted;
"processing" figures leave out the cluster start (time until the workers are up). Also: the
same cohort in one process without dask (``--workers 0``) and a rerun that skips every scan.

Results go to ``benchmarks/results/batch.json`` and ``batch.md``.

Usage: ``python benchmarks/bench_batch.py [--scans 10] [--tasks reconstruct cluster]
[--workers 1 2] [--device cpu]``
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from bench_engine import machine  # noqa: E402

SHAPE = (40, 128, 128)


def make_cohort(folder: Path, n: int) -> list[Path]:
    from napari_latentseg.data.phantom import make_phantom
    from napari_latentseg.io import save_volume

    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i in range(n):
        ph = make_phantom(SHAPE, seed=100 + i)
        paths.append(save_volume(folder / f"scan{i:02d}.nii.gz", ph.image, spacing=ph.spacing,
                                 origin=ph.origin, overwrite=True))
    return paths


def run_case(cohort: Path, model: Path, out: Path, task: str, workers: int, device: str) -> dict:
    exe = Path(sys.executable).with_name("latentseg")
    cmd = [str(exe), "batch", str(cohort), "-m", str(model), "--task", task, "-o", str(out),
           "--workers", str(workers), "--device", device, "--dashboard", "none", "-q"]
    t0 = time.perf_counter()
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=3600)
    wall = time.perf_counter() - t0
    if res.returncode != 0:
        return {"task": task, "workers": workers, "error": res.stderr.strip()[-500:]}
    with open(out / "summary.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    done = [r for r in rows if r["status"] == "done"]
    skipped = [r for r in rows if r["status"] == "skipped"]
    # The run's own time (its start-up included) is in its last line; the process adds imports.
    m = re.search(r"in ([\d.]+) s", res.stdout)
    run_s = float(m.group(1)) if m else wall
    per_scan = sorted(float(r["seconds"]) for r in done) or [0.0]
    return {
        "task": task, "workers": workers, "scans": len(rows), "done": len(done),
        "skipped": len(skipped), "wall_s": round(wall, 1), "run_s": round(run_s, 1),
        "scans_per_min": round(60 * len(rows) / wall, 1),
        "median_scan_s": round(per_scan[len(per_scan) // 2], 2),
        "slowest_scan_s": round(per_scan[-1], 2),
    }


def to_markdown(results: list[dict], info: dict, notes: list[str]) -> str:
    lines = [f"Machine: {info.get('cpu')} ({info.get('cores')} cores)"
             + (f", GPU {info['gpu']}" if "gpu" in info else "") + f", torch {info['torch']}",
             *notes, "",
             "| task | workers | scans | wall s (process) | scans/min | median s per scan | "
             "slowest scan s | load avg after |", "|---|---|---|---|---|---|---|---|"]
    for r in results:
        if "error" in r:
            lines.append(f"| {r['task']} | {r['workers']} | error: {r['error']} |||||")
            continue
        workers = "0 (no dask)" if r["workers"] == 0 else str(r["workers"])
        scans = f"{r['scans']}" + (" (all skipped)" if r["skipped"] == r["scans"] else "")
        lines.append(f"| {r['task']} | {workers} | {scans} | {r['wall_s']} | "
                     f"**{r['scans_per_min']}** | {r['median_scan_s']} | {r['slowest_scan_s']} | "
                     f"{r.get('load_avg_1min_after', '')} |")
    return "\n".join(lines) + "\n"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--scans", type=int, default=10)
    p.add_argument("--tasks", nargs="+", default=["reconstruct", "cluster"])
    p.add_argument("--workers", nargs="+", type=int, default=[1, 2])
    p.add_argument("--fit-steps", type=int, default=30)
    p.add_argument("--device", default="cpu")
    p.add_argument("--out", type=Path, default=HERE / "results")
    args, _ = p.parse_known_args()  # run_all.py passes every benchmark the same options

    args.out.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix="latentseg-bench-batch-"))
    try:
        print(f"writing {args.scans} phantoms {SHAPE} ...", flush=True)
        paths = make_cohort(tmp / "cohort", args.scans)
        model = tmp / "vae.pt"
        exe = Path(sys.executable).with_name("latentseg")
        print(f"fitting cpu-2d for {args.fit_steps} steps ...", flush=True)
        subprocess.run([str(exe), "fit", str(paths[0]), "-o", str(model), "--config", "cpu-2d",
                        "--steps", str(args.fit_steps), "--device", args.device, "-q"],
                       check=True, timeout=3600)
        results = []
        for task in args.tasks:
            for workers in [0, *args.workers]:
                out = tmp / f"out-{task}-{workers}"
                print(f"{task}, {workers} workers ...", flush=True)
                r = run_case(tmp / "cohort", model, out, task, workers, args.device)
                r["load_avg_1min_after"] = round(os.getloadavg()[0], 2)
                print(r, flush=True)
                results.append(r)
                if workers == max(args.workers):  # a rerun: every scan is skipped
                    r = run_case(tmp / "cohort", model, out, task, workers, args.device)
                    print(r, flush=True)
                    results.append(r)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    info = machine()
    notes = [
        f"Cohort: {args.scans} phantoms {SHAPE[0]}x{SHAPE[1]}x{SHAPE[2]} (NIfTI), model cpu-2d "
        f"({args.fit_steps} fit steps), device {args.device}. Wall time of the whole "
        "`latentseg batch` process: imports, LocalCluster start, model load per worker, all "
        "scans, summary.",
        "Workers get cores // workers torch threads each; workers 0 is one process without "
        "dask.",
    ]
    (args.out / "batch.json").write_text(json.dumps(
        {"machine": info, "notes": notes, "results": results}, indent=2))
    md = to_markdown(results, info, notes)
    (args.out / "batch.md").write_text(md)
    print(md)


if __name__ == "__main__":
    main()
