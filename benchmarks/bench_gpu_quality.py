"""`make bench-gpu`, second part: the quality benchmarks of issues #13 and #14 on a CUDA GPU.

The same protocols as on the CPU, with the VAE fitted and run on the GPU, and their times:

- ``interactive``: bench_interactive's stroke protocol (first strokes, then one corrective
  stroke per round at the largest error, 10 rounds) on whole volumes, scikit-image's random
  forest against the engine's default and its no-VAE ablation, one VAE per scan fitted on the
  GPU (``--fit-minutes``, default 0.5). Cases from the cheapest up; a case that no longer fits
  in the budget is skipped and listed.
- ``anomaly``: full-size brain1 and brain2 against their tumour masks: the default score
  (the denoiser, ``dae``, on MR), the intensity density and the plain reconstruction error,
  fitted on the scan itself on the GPU (the VAE, used by ``error``, is the interactive
  section's, fitted once per scan: ``fit_s``); best Dice over thresholds, AUPRC, Dice at
  the unsupervised threshold, inside the head, wall time and peak GPU memory of each map.

Usage: ``python benchmarks/bench_gpu_quality.py [--data DIR] [--out FILE.json] [--budget S]
[--device cuda|cpu] [--sections anomaly interactive]``. Writes its JSON after every item, so a
run stopped from outside keeps what it measured. Exit codes: 0 done, 1 an item raised, 2 no
CUDA GPU (with ``--device cuda``).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
CASES = ["breast1", "brain1", "brain2", "lung2", "lung1"]  # cheapest first
# The VAE's columns in every round against the ilastik set alone: on these two-class cases
# the product's default (vae-default, since session 55) reads the ilastik set alone, so it
# equals engine-novae there.
METHODS = ["skimage-rf", "vae-always", "engine-novae"]
ANOMALY = ["default", "intensity", "error"]  # default: the denoiser on these MR scans


def anomaly_section(data: Path, device: str, cases, res: dict, save, budget) -> None:
    """Self-mode anomaly maps of full-size brain1 and brain2; the VAE (for the ``error``
    map) is the interactive section's, fitted once per scan on ``device``."""
    import _interactive as ia
    from _gpu_helpers import Clock
    from bench_anomaly import curve_metrics, dice

    from napari_latentseg.engine.anomaly import anomaly_map, head_mask

    for name in cases:
        if budget() < 60:
            res["skipped"].append(f"anomaly/{name}")
            continue
        v, truth, _, sp = ia.load_case(name, data)
        truth = truth == 2
        model, fit_s = ia.get_model(name, v, "MR")
        mask = head_mask(v, "MR")
        for method in ANOMALY:
            with Clock(device == "cuda") as clock:
                out = anomaly_map(model, v, modality="MR", method=method, spacing=sp,
                                  error_map=False)
            bd, ap = curve_metrics(out.score, truth, mask)
            shown = method if method == out.method else f"{method} ({out.method})"
            row = {"case": f"{name}-tumour", "method": shown, "shape": list(v.shape),
                   "best_dice": bd, "auprc": ap,
                   "dice_at_threshold": dice(out.labels > 0, truth & mask),
                   "n_candidates": len(out.candidates), "map_s": round(clock.s, 2),
                   "peak_gpu_mb": clock.peak_mb, "fit_s": round(fit_s, 1),
                   "fit_plus_map_s": round(fit_s + clock.s, 1)}
            res["anomaly"].append(row)
            print(json.dumps(row), flush=True)
            save()


def interactive_section(data: Path, cases, rounds: int, res: dict, save, budget,
                        methods=METHODS) -> None:
    """bench_interactive's stroke protocol on whole volumes, VAEs fitted on ``device``."""
    import bench_interactive as bi

    for case in cases:
        if not (data / f"{case}_image.nrrd").exists():
            res["skipped"].append(f"interactive/{case} (no data)")
            continue
        if budget() < (150 if case.startswith("lung") else 60):
            res["skipped"].append(f"interactive/{case}")
            continue
        env = bi.case_env(case, data, False)
        for method in methods:
            m = bi.build(method, env, False, 0)
            r = bi.run_strokes(m, env, rounds)
            r.update(case=case, method=method, protocol="strokes", seed=0,
                     shape=list(env["truth"].shape), fit_s=env["fit_s"])
            res["interactive"].append(r)
            print(f"{case} {method}: AUC {r['auc']:.3f} final {r['final']:.3f} "
                  f"drop {r['max_drop']:.3f} {r['round_s']:.2f} s/round first "
                  f"{r['first_result_s']:.1f} s (fit {env['fit_s']:.1f} s) | "
                  + " ".join(f"{d:.2f}" for d in r["dice"]), flush=True)
            save()


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", type=Path, default=None)
    p.add_argument("--out", type=Path, default=HERE / "results" / "bench_gpu_quality.json")
    p.add_argument("--budget", type=float, default=300.0, help="seconds for the whole run")
    p.add_argument("--device", choices=["cuda", "cpu"], default="cuda")
    p.add_argument("--rounds", type=int, default=10)
    p.add_argument("--fit-minutes", type=float, default=0.5)
    p.add_argument("--sections", nargs="+", default=["anomaly", "interactive"])
    p.add_argument("--cases", nargs="+", default=CASES, help="interactive cases, in order")
    p.add_argument("--anomaly-cases", nargs="+", default=["brain1", "brain2"])
    p.add_argument("--methods", nargs="+", default=METHODS,
                   help="interactive methods (bench_interactive's names; e.g. vae-anomaly: "
                        "the default with the scan's anomaly score as a column)")
    a = p.parse_args()
    t0 = time.perf_counter()
    # Set before the benchmark modules read them: VAEs fitted on the device, cached apart.
    os.environ["LATENTSEG_BENCH_DEVICE"] = a.device
    os.environ["LATENTSEG_BENCH_FIT_MINUTES"] = str(a.fit_minutes)
    os.environ.setdefault("LATENTSEG_BENCH_CACHE", tempfile.mkdtemp(prefix="latentseg-gpuq-"))
    import torch
    from _gpu_helpers import default_data

    if a.device == "cuda" and not torch.cuda.is_available():
        print("no CUDA GPU")
        return 2
    data = a.data or default_data()
    res = {"machine": {"device": torch.cuda.get_device_name(0) if a.device == "cuda"
                       else platform.processor() or platform.machine(),
                       "torch": torch.__version__, "cpu_threads": torch.get_num_threads()},
           "fit_minutes": a.fit_minutes, "anomaly": [], "interactive": [], "skipped": [],
           "errors": []}
    a.out.parent.mkdir(parents=True, exist_ok=True)

    def save() -> None:
        res["total_s"] = round(time.perf_counter() - t0, 1)
        a.out.write_text(json.dumps(res, indent=1))

    def budget() -> float:
        return a.budget - (time.perf_counter() - t0)

    for section in a.sections:
        try:
            if section == "anomaly":
                anomaly_section(data, a.device, a.anomaly_cases, res, save, budget)
            else:
                interactive_section(data, a.cases, a.rounds, res, save, budget, a.methods)
        except Exception as exc:  # keep the other section's figures
            import traceback

            traceback.print_exc()
            res["errors"].append(f"{section}: {exc!r}")
        save()
    print(f"wrote {a.out} in {res['total_s']} s; skipped: {res['skipped']}")
    return 1 if res["errors"] else 0


if __name__ == "__main__":
    sys.exit(main())
