"""Probe: the denoiser fitted on other scans (a normative cohort) against fitted on the scan
itself (session 34, issue #14's normative mode).

The engine's ``fit_normative(method="dae")`` fits the denoiser on the slices of reference
scans instead of the scored one, and ``anomaly_map(reference=...)`` scores a bench case with
it, calibrated on the references' own scores. (Session 34's rows with a single reference,
the brains', were measured with the probe's first version, whose fit drew each batch's scan
at random even from one scan: the same recipe, another random draw. Its ensemble over fit
seeds, a loser, is in git at 147fce5.)
References:

* ``healthy``: lesion-free phantoms (``make_phantom(n_lesions=0)``, seeds 11..10+K), the
  cohort a normative model is meant for;
* ``bench``: the bench's normative references (phantom seeds 1, 2, with their lesions; the
  other brain for a brain case), what ``bench_anomaly`` gives the density methods;
* ``self``: the scan itself (the engine's default, for a paired figure);
* ``both-healthy`` / ``both-bench``: a cohort's and the scan's own, together
  (``anomaly_map(with_self=True)``).

Cases: the bench's (patterns), ``phantom-sN`` (the bench's phantom drawn with seed N) and
``phantom-hN`` (a healthy one: what is flagged there is false positives).

One JSON line per (case, reference, seed) in ``results/dae-normative.jsonl``; runs already
there are skipped. ``--save`` keeps each map; refs ``mix`` then scores, from those maps, the
self and the normative map of a case mixed per voxel (session 35: their maximum is what
``anomaly_map(with_self=True)`` computes, less a constant). A cohort's denoiser fine-tuned on
the scan (session 35, lost) is in git at 4f74fa9. ~3 min a run beside another, one thread
each (three cycles of 300 steps).

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


def main(argv: list[str] | None = None) -> None:
    from napari_latentseg.data.phantom import make_phantom
    from napari_latentseg.engine.anomaly import anomaly_map, fit_normative

    sys.path.insert(0, str(HERE))
    import bench_anomaly as B

    ap = argparse.ArgumentParser()
    ap.add_argument("seeds")
    ap.add_argument("refs")
    ap.add_argument("cases", nargs="+")
    ap.add_argument("--k", type=int, default=3, help="healthy phantoms in the cohort")
    ap.add_argument("--save", action="store_true",
                    help="also keep each score map (float16) in results/dae-normative/")
    a = ap.parse_args(argv)
    seeds = [int(s) for s in a.seeds.split(",")]
    out = HERE / "results" / "dae-normative.jsonl"
    out.parent.mkdir(parents=True, exist_ok=True)
    done = set()
    if out.exists():
        done = {(r["case"], r["ref"], r["seed"])
                for r in map(json.loads, out.read_text().splitlines())}
    cs, refs = cases(B, a.cases)
    if a.refs == "mix":
        return mix(B, cs, seeds[0], out.parent / "dae-normative", a.k)
    for c in cs:
        _, smask, _ = B.case_masks(c)
        for ref in a.refs.split(","):
            both = ref.startswith("both-")  # normative + self: anomaly_map(with_self=True)
            ref = ref[5:] if both else ref
            tag = f"healthy{a.k}" if ref == "healthy" else ref
            tag = f"both-{tag}" if both else tag
            if ref == "healthy":
                vols = [make_phantom(c["v"].shape, c["sp"], seed=10 + i, n_lesions=0)
                        .image.astype(np.float32) for i in range(1, a.k + 1)]
            elif ref != "self":
                vols = refs["phantom"] if c["ref"] == "phantom" else [refs[B.OTHER[c["ref"]]]]
            for seed in seeds:
                if (c["name"], tag, seed) in done:
                    continue
                t = time.perf_counter()
                stats = None if ref == "self" else fit_normative(
                    None, vols, method="dae", modalities=[c["mod"]] * len(vols),
                    spacing=c["sp"], seed=seed)
                res = anomaly_map(None, c["v"], modality=c["mod"], method="dae",
                                  reference=stats, spacing=c["sp"], error_map=False, seed=seed,
                                  with_self=both)
                has = bool(c["truth"].any())
                best, auprc = (B.curve_metrics(res.score, c["truth"], smask) if has
                               else (float("nan"), float("nan")))
                flag = (res.score > res.threshold) & smask
                inter = (flag & c["truth"]).sum()
                row = {"case": c["name"], "ref": tag, "seed": seed, "best_dice": best,
                       "auprc": auprc,
                       "dice_thr": float(2 * inter / max(flag.sum() + c["truth"][smask].sum(),
                                                         1)),
                       "flagged_pct": float(100 * flag.sum() / max(smask.sum(), 1)),
                       "oracle": (B.oracle_window(c["v"], c["truth"], smask) if has
                                  else float("nan")),
                       "seconds": round(time.perf_counter() - t, 1)}
                if a.save:
                    d = out.parent / "dae-normative"
                    d.mkdir(exist_ok=True)
                    np.savez_compressed(d / f"{c['name']}_{tag}_{seed}.npz",
                                        score=res.score.astype(np.float16),
                                        threshold=res.threshold)
                with out.open("a") as f:
                    f.write(json.dumps(row) + "\n")
                print(json.dumps(row), flush=True)


def mix(B, cs: list[dict], seed: int, d: Path, k: int) -> None:
    """Best Dice of each case's saved self and normative maps (phantoms: the healthy cohort
    of ``k``; else the bench's reference) and of their per-voxel mixes."""
    means: dict = {}
    for c in cs:
        _, smask, _ = B.case_masks(c)
        ref = f"healthy{k}" if c["ref"] == "phantom" else "bench"
        maps = {r: np.load(d / f"{c['name']}_{r}_{seed}.npz")["score"] for r in ("self", ref)
                if (d / f"{c['name']}_{r}_{seed}.npz").exists()}
        if len(maps) < 2:
            print(c["name"], f"needs saved self and {ref} maps; has", sorted(maps))
            continue
        s, n = (maps[r].astype(np.float32) for r in ("self", ref))
        row = {key: round(B.curve_metrics(m, c["truth"], smask)[0], 3) for key, m in
               {"self": s, "normative": n, "mean": (s + n) / 2, "min": np.minimum(s, n),
                "max": np.maximum(s, n)}.items()}
        for key, v in row.items():
            means.setdefault(key, []).append(v)
        print(c["name"], ref, json.dumps(row), flush=True)
    print("mean", {k: round(float(np.mean(v)), 3) for k, v in means.items()})


if __name__ == "__main__":
    main()
