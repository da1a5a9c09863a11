"""Probe: the denoiser fitted on other scans (a normative cohort) against fitted on the scan
itself (session 34, issue #14's normative mode).

The engine's denoiser (``anomaly_dae.fit_dae_iter`` / ``dae_score_iter``) is fitted on the
slices of reference scans instead of the scored one, and scores a bench case; calibrated on
the references' own scores, as ``fit_normative(method="dae")`` does. (Session 34's rows with
a single reference, the brains', were measured before the engine had these functions, with
a fit that drew each batch's scan at random even from one scan: the same recipe, another
random draw.)
References:

* ``healthy``: lesion-free phantoms (``make_phantom(n_lesions=0)``, seeds 11..10+K), the
  cohort a normative model is meant for;
* ``bench``: the bench's normative references (phantom seeds 1, 2, with their lesions; the
  other brain for a brain case), what ``bench_anomaly`` gives the density methods;
* ``self``: the scan itself (the engine's default, for a paired figure).

Cases: the bench's (patterns), ``phantom-sN`` (the bench's phantom drawn with seed N) and
``phantom-hN`` (a healthy one: what is flagged there is false positives).

One JSON line per (case, reference, seed) in ``results/dae-normative.jsonl``; runs already
there are skipped. ~2-4 min a run on one thread (three cycles of 300 steps).

Usage::

    LATENTSEG_NUM_THREADS=1 python benchmarks/_dae_normative.py 0,1,2 healthy,self phantom
    LATENTSEG_NUM_THREADS=1 python benchmarks/_dae_normative.py 0 healthy phantom-s3 --k 4
"""

from __future__ import annotations

import argparse
import fnmatch
import json
import sys
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent


def fit_nets(scans: list[tuple[np.ndarray, np.ndarray]], seed: int, spacing) -> list:
    """The engine's denoiser snapshots fitted on every (normalised volume, head mask)."""
    from napari_latentseg.engine.anomaly_dae import fit_dae_iter
    from napari_latentseg.runtime.progress import drive

    return drive(fit_dae_iter([(x, m, spacing) for x, m in scans], seed=seed))


def raw_score(nets, x: np.ndarray, mask: np.ndarray, spacing) -> np.ndarray:
    """The engine's score of ``x`` with fitted snapshots ``nets``."""
    from napari_latentseg.engine.anomaly_dae import dae_score_iter
    from napari_latentseg.runtime.progress import drive

    return drive(dae_score_iter(nets, x, mask, spacing=spacing))


def cases(B, names: list[str]) -> tuple[list[dict], dict]:
    """The bench's cases matching ``names``, plus ``phantom-sN``: the bench's phantom drawn
    with seed N (its own lesions)."""
    from napari_latentseg.data.phantom import make_phantom

    want = [n for n in names if not n.startswith(("phantom-s", "phantom-h"))]
    out, refs = [], {}
    if want:
        allc, refs = B.build_cases(False)
        out = [c for c in allc if any(fnmatch.fnmatch(c["name"], p) for p in want)]
    for n in names:
        if n.startswith(("phantom-s", "phantom-h")):  # h: a healthy head (false positives)
            shape, sp = (40, 128, 128), (4.0, 1.6, 1.6)
            ph = make_phantom(shape, sp, seed=int(n[9:]), n_lesions=0 if n[8] == "h" else 3)
            out.append(dict(name=n, group="mr", v=ph.image.astype(np.float32),
                            truth=ph.labels == 7, sp=ph.spacing, ref="phantom", mod="MR"))
            refs.setdefault("phantom", [make_phantom(shape, sp, seed=s).image.astype(np.float32)
                                        for s in (1, 2)])
    return out, refs


def ensemble(B, names: list[str], tag: str, seeds: list[int]) -> None:
    """Best Dice of the mean of the saved runs' scores over ``seeds`` (a normative model is
    fitted once, so it can afford several fits), calibrated on the references' mean."""
    from napari_latentseg.engine.anomaly import _prepare
    from napari_latentseg.engine.anomaly_calibration import _calibrated, calibrate

    snap = HERE / "results" / "dae-normative"
    for c in cases(B, names)[0]:
        _, smask, _ = B.case_masks(c)
        _, m = _prepare(None, c["v"], c["mod"], c["sp"])
        runs = [np.load(snap / f"{c['name']}-{tag}-s{s}.npz") for s in seeds]
        raw = np.mean([r["raw"].astype(np.float32) for r in runs], 0)
        fit_raw = np.mean([r["fit_raw"].astype(np.float32) for r in runs], 0)
        score = np.where(m, _calibrated(raw, calibrate(fit_raw)), 0).astype(np.float32)
        best, auprc = B.curve_metrics(score, c["truth"], smask)
        flag = (score > 3.0) & smask
        dice = 2 * (flag & c["truth"]).sum() / max(flag.sum() + c["truth"][smask].sum(), 1)
        print(json.dumps({"case": c["name"], "ref": tag, "ensemble": seeds, "best_dice": best,
                          "auprc": auprc, "dice_thr": float(dice),
                          "flagged_pct": float(100 * flag.sum() / max(smask.sum(), 1))}))


def main(argv: list[str] | None = None) -> None:
    from napari_latentseg.data.phantom import make_phantom
    from napari_latentseg.engine.anomaly import _prepare
    from napari_latentseg.engine.anomaly_calibration import _calibrated, calibrate

    sys.path.insert(0, str(HERE))
    import bench_anomaly as B

    ap = argparse.ArgumentParser()
    ap.add_argument("seeds")
    ap.add_argument("refs")
    ap.add_argument("cases", nargs="+")
    ap.add_argument("--k", type=int, default=3, help="healthy phantoms in the cohort")
    ap.add_argument("--save", action="store_true", help="keep each run's raw scores")
    ap.add_argument("--ensemble", action="store_true",
                    help="score the mean of the saved runs over the seeds (REFS: one tag)")
    a = ap.parse_args(argv)
    seeds = [int(s) for s in a.seeds.split(",")]
    if a.ensemble:
        return ensemble(B, a.cases, a.refs, seeds)
    out = HERE / "results" / "dae-normative.jsonl"
    out.parent.mkdir(parents=True, exist_ok=True)
    done = set()
    if out.exists():
        done = {(r["case"], r["ref"], r["seed"])
                for r in map(json.loads, out.read_text().splitlines())}
    cs, refs = cases(B, a.cases)
    for c in cs:
        _, smask, _ = B.case_masks(c)
        x, m = _prepare(None, c["v"], c["mod"], c["sp"])
        for ref in a.refs.split(","):
            tag = f"healthy{a.k}" if ref == "healthy" else ref
            if ref == "self":
                vols = [c["v"]]
            elif ref == "healthy":
                vols = [make_phantom(c["v"].shape, c["sp"], seed=10 + i, n_lesions=0)
                        .image.astype(np.float32) for i in range(1, a.k + 1)]
            else:
                vols = refs["phantom"] if c["ref"] == "phantom" else [refs[B.OTHER[c["ref"]]]]
            prepped = [_prepare(None, v, c["mod"], c["sp"]) for v in vols]
            for seed in seeds:
                if (c["name"], tag, seed) in done:
                    continue
                t = time.perf_counter()
                nets = fit_nets(prepped, seed, c["sp"])
                raw = raw_score(nets, x, m, c["sp"])
                fit_raw = np.concatenate([raw_score(nets, rx, rm, c["sp"])[rm]
                                          for rx, rm in prepped])
                cal = calibrate(fit_raw)
                score = np.where(m, _calibrated(raw, cal), 0).astype(np.float32)
                best, auprc = (B.curve_metrics(score, c["truth"], smask) if c["truth"].any()
                               else (float("nan"), float("nan")))
                flag = (score > 3.0) & smask  # the engine's threshold at fpr 1e-3
                inter = (flag & c["truth"]).sum()
                row = {"case": c["name"], "ref": tag, "seed": seed, "best_dice": best,
                       "auprc": auprc,
                       "dice_thr": float(2 * inter / max(flag.sum() + c["truth"][smask].sum(),
                                                         1)),
                       "flagged_pct": float(100 * flag.sum() / max(smask.sum(), 1)),
                       "oracle": (B.oracle_window(c["v"], c["truth"], smask)
                                  if c["truth"].any() else float("nan")),
                       "seconds": round(time.perf_counter() - t, 1)}
                with out.open("a") as f:
                    f.write(json.dumps(row) + "\n")
                if a.save:  # for ensembles over seeds (``ensemble``)
                    snap = out.parent / "dae-normative"
                    snap.mkdir(exist_ok=True)
                    np.savez_compressed(snap / f"{c['name']}-{tag}-s{seed}.npz",
                                        raw=raw.astype(np.float16),
                                        fit_raw=fit_raw.astype(np.float16))
                print(json.dumps(row), flush=True)


if __name__ == "__main__":
    main()
