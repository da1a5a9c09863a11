"""Probe: which of the denoiser's cycle snapshots, and with what weight (sessions 30-33).

``run GRIDS SEEDS CASES``: score the benchmark's cases (``bench_anomaly.build_cases``) with the
engine's default ``anomaly_map``, ``anomaly_dae.DAE_NOISE_RES`` patched to ``GRIDS`` (one
one-cycle run of 300 steps per entry), and save each cycle's own score
(:func:`~napari_latentseg.engine.anomaly_dae.snapshot_score`) to
``results/dae-snap/<case>-s<seed>.npz``, with the engine's best Dice of the full ensemble
(runs already saved are skipped). ~135 s a case for four cycles on one thread.

``eval [--cases=PAT,...] COMBO [COMBO ...]``: replay the engine on every saved run with the
snapshots' scores combined as each ``COMBO`` says, the rest of the pipeline (symmetry,
calibration, back to the scan's grid) run for real; prints best Dice per case (mean over
seeds), the mean of the cases and how many reach twice the oracle window, then what the
calibrated threshold flags: Dice, runs whose candidates touch a lesion, voxels of the largest
lesion among them (what the dock shows). A combo names one
weight per cycle, ``_`` for a snapshot left out: ``1,1`` is the first two cycles' mean (the
default's ensemble when GRIDS starts with the default's grids and the seeds match), ``1,2``
weighs the second twice, ``1,_,1`` the first and third. ``--cases`` replays only those cases
(``eval-PAT.json``), so two processes can share the replays; a replay takes a few seconds a
run.
With ``LATENTSEG_DAE_STEPS`` set (steps a cycle), both read and write
``results/dae-snap-steps<N>/`` instead.

Usage (one thread, two processes at most on the 2-core machine)::

    LATENTSEG_NUM_THREADS=1 python benchmarks/_dae_snapshots.py run 8,4,8,4 0,1,2 'brain*' phantom
    LATENTSEG_NUM_THREADS=1 python benchmarks/_dae_snapshots.py eval 1,1 1,2 1,1,1 1,1,1,1
    LATENTSEG_NUM_THREADS=1 python benchmarks/_dae_snapshots.py run 8,4,8,4 3,4,5,6,7,8 phantom
    LATENTSEG_NUM_THREADS=1 python benchmarks/_dae_snapshots.py eval --cases=phantom 1,1 1,1,1
"""

from __future__ import annotations

import fnmatch
import json
import os
import sys
from collections import defaultdict
from pathlib import Path

import numpy as np
from scipy import ndimage

HERE = Path(__file__).resolve().parent
# Runs with fewer or more steps a cycle ($LATENTSEG_DAE_STEPS) keep their own folder.
_STEPS = os.environ.get("LATENTSEG_DAE_STEPS")
OUT = HERE / "results" / ("dae-snap" + (f"-steps{_STEPS}" if _STEPS else ""))


def _cases(patterns):
    sys.path.insert(0, str(HERE))
    import bench_anomaly as B

    return B, [c for c in B.build_cases(False)[0]
               if any(fnmatch.fnmatch(c["name"], p) for p in patterns)]


def run(grids: tuple, seeds: list[int], patterns: list[str]) -> None:
    import napari_latentseg.engine.anomaly_dae as D

    B, cases = _cases(patterns)
    from _dae_grids import score_case

    D.DAE_NOISE_RES = grids
    real = D.residual_score
    kept: list = []

    def recording(x, outs, mask):
        kept[:] = [D.snapshot_score(x, o, mask) for o in outs]
        return real(x, outs, mask)

    D.residual_score = recording
    OUT.mkdir(parents=True, exist_ok=True)
    for seed in seeds:
        for c in cases:
            path = OUT / f"{c['name']}-s{seed}.npz"
            if path.exists():
                continue
            row = score_case(B, c, seed, grids)
            np.savez_compressed(path, snaps=np.stack(kept), meta=json.dumps(row))
            print(json.dumps(row), flush=True)


def _weights(combo: str) -> list[float | None]:
    return [None if w == "_" else float(w) for w in combo.split(",")]


def evaluate(combos: list[str], patterns: list[str] | None = None, tag: str = "") -> dict:
    import napari_latentseg.engine.anomaly_dae as D
    from napari_latentseg.engine.anomaly import anomaly_map

    files = [f for f in sorted(OUT.glob("*-s*.npz"))
             if not patterns or any(fnmatch.fnmatch(f.name, p + "-s*") for p in patterns)]
    metas = [json.loads(str(np.load(f)["meta"])) for f in files]
    B, cases = _cases(sorted({m["case"] for m in metas}))
    by_name = {c["name"]: c for c in cases}
    current: dict = {}

    def replay_fit(steps, loss_of, *, snapshots=None, cycles=1, **_):
        snapshots.extend([lambda t: t] * cycles)  # identity nets: the scores are stored
        return None
        yield

    def replay_score(x, outs, mask):
        s = current["snaps"]
        assert s.shape[1:] == x.shape, (s.shape, x.shape)
        tot = sum(w * s[i] for i, w in enumerate(current["w"]) if w is not None)
        return D.slice_normalise(tot.astype(np.float32), mask)

    D.fit_unet_iter, D.residual_score = replay_fit, replay_score
    table: dict = defaultdict(lambda: defaultdict(list))
    # At the calibrated threshold: (Dice, lesions the candidates touch, voxels of the largest).
    thresholded: dict = defaultdict(lambda: defaultdict(list))
    oracle = {}
    for f, m in zip(files, metas, strict=True):
        c = by_name[m["case"]]
        current["snaps"] = np.load(f)["snaps"]
        D.DAE_NOISE_RES = tuple(m["grids"])
        _, smask, _ = B.case_masks(c)
        lesions, _ = ndimage.label(c["truth"])
        largest = lesions == 1 + int(np.argmax(np.bincount(lesions.ravel())[1:]))
        if c["name"] not in oracle:
            oracle[c["name"]] = B.oracle_window(c["v"], c["truth"], smask)
        for combo in combos:
            current["w"] = _weights(combo)
            res = anomaly_map(None, c["v"], modality=c["mod"], method="default",
                              spacing=c["sp"], error_map=False, seed=m["seed"])
            table[combo][c["name"]].append(B.curve_metrics(res.score, c["truth"], smask)[0])
            flagged = res.labels > 0
            thresholded[combo][c["name"]].append(
                (B.dice(flagged, c["truth"] & smask),
                 int(np.count_nonzero(np.unique(lesions[flagged & c["truth"]]))),
                 int(np.count_nonzero(flagged & largest))))
        table["engine (all cycles)"][c["name"]].append(m["best_dice"])
    out = {"oracle": oracle, "rows": {k: dict(v) for k, v in table.items()},
           "thresholded": {k: dict(v) for k, v in thresholded.items()}}
    (OUT / f"eval{tag}.json").write_text(json.dumps(out, indent=1))
    names = sorted(oracle)
    print("| combo | " + " | ".join(names) + " | mean | >= 2x oracle |")
    print("|" + "---|" * (len(names) + 3))
    print("| oracle window | " + " | ".join(f"{oracle[n]:.3f}" for n in names) + " | | |")
    for combo, d in out["rows"].items():
        means = [float(np.mean(d[n])) for n in names]
        wins = sum(mu >= 2 * oracle[n] for mu, n in zip(means, names, strict=True))
        print(f"| {combo} | " + " | ".join(f"{mu:.3f}" for mu in means)
              + f" | {np.mean(means):.3f} | {wins} of {len(names)} |", flush=True)
    print("At the threshold: mean Dice / runs whose candidates touch a lesion / mean voxels of "
          "the largest lesion inside them")
    for combo, d in out["thresholded"].items():
        print(f"| {combo} | " + " | ".join(
            f"{np.mean([r[0] for r in d[n]]):.3f} / {sum(r[1] > 0 for r in d[n])} of "
            f"{len(d[n])} / {np.mean([r[2] for r in d[n]]):.0f}" for n in names) + " |")
    return out


def main(argv: list[str] | None = None) -> None:
    args = sys.argv[1:] if argv is None else argv
    if len(args) >= 4 and args[0] == "run":
        run(tuple(int(r) for r in args[1].split(",")), [int(s) for s in args[2].split(",")],
            args[3:])
    elif len(args) >= 2 and args[0] == "eval":
        pats = args[1][len("--cases="):].split(",") if args[1].startswith("--cases=") else None
        evaluate(args[1 + bool(pats):], pats, tag="-" + "-".join(pats) if pats else "")
    else:
        raise SystemExit(__doc__)


if __name__ == "__main__":
    main()
