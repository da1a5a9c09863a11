"""Probe: the self-mode threshold when the scan holds its own lesions (session 36, issue #14).

In self mode the score is calibrated on the scan it scores, so ``--fpr 0.001`` flags the top
0.1 % of the head, lesions included: a lesion larger than that is only partly outlined
(Dice at the threshold 0.085 where the best is 0.376 on brain1's dark spheres, session 35).
``calibrate(body=rho)`` stops the empirical table at survival ``rho`` and extrapolates its
exponential tail beyond, so up to ``rho`` of the head may be abnormal without raising the
threshold.

Each case is scored once with the default (the denoiser on MR, self mode); the raw map is
recorded and re-calibrated for every ``rho``, then brought back to the scan's grid as
``anomaly_iter`` does. Per case and variant: Dice of the candidates at the threshold
(components of at least 0.05 mL), the false positives in the head's lesion-free slices
(``bench_anomaly.case_masks``, the real tumour left out too; the whole head of a healthy
phantom ``phantom-hN``) and the
flagged share of the scored head; ``fp_far_pct``: flags more than 20 mm from every lesion (the
real tumour too), % of that head (``bench_anomaly.away_from_lesions``). One JSON line per
(case, seed) in
``results/self-calibration.jsonl``; runs already there are skipped.

Usage::

    LATENTSEG_NUM_THREADS=1 python benchmarks/_self_calibration.py 0 'brain1-wm-*' phantom-s0
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
BODIES = (None, 0.01, 0.003)  # None: the default table (up to 1 - 10 / n)
FPRS = (1e-3, 1e-4)
# Session 37: with and without the fade at the head's surface (anomaly.SURFACE_MM; variants
# "body/fpr" are with it, "body/fpr/nosurface" without).
SURFACES = ("", "/nosurface")


def replay(raw: np.ndarray, fit: np.ndarray, body: float | None, shape: tuple[int, ...],
           unscored: np.ndarray) -> np.ndarray:
    """The self-mode map re-calibrated from its recorded raw map and fit scores with table end
    ``body``, as ``anomaly_iter`` makes it (before the surface's fade): on the scan's grid
    (``shape``), 0 where ``unscored``."""
    from napari_latentseg.engine.anomaly import to_fine
    from napari_latentseg.engine.anomaly_calibration import _calibrated, calibrate

    score = _calibrated(raw, calibrate(fit, body=body))
    f = int(round(shape[-1] / raw.shape[-1]))  # in-plane grid factor
    if f > 1:
        score = to_fine(score, shape, f)
    score[unscored] = 0.0
    return score


def main(argv: list[str] | None = None) -> None:
    import napari_latentseg.engine.anomaly as A

    sys.path.insert(0, str(HERE))
    import _dae_normative as N
    import bench_anomaly as B

    ap = argparse.ArgumentParser()
    ap.add_argument("seeds")
    ap.add_argument("cases", nargs="+")
    ap.add_argument("--save", action="store_true",
                    help="keep each case's raw map, fit scores and masks in "
                         "results/self-calibration/ (for other variants without a refit)")
    ap.add_argument("--tag", default="", help="suffix of the JSON lines' file")
    a = ap.parse_args(argv)
    out = HERE / "results" / f"self-calibration{a.tag}.jsonl"
    out.parent.mkdir(parents=True, exist_ok=True)
    done = set()
    if out.exists():
        done = {(r["case"], r["seed"]) for r in map(json.loads, out.read_text().splitlines())}
    rec: dict = {}
    real_cal, real_calibrated = A.calibrate, A._calibrated

    def recording_calibrate(fit, *args, **kw):
        rec["fit"] = np.array(fit, copy=True)
        return real_cal(fit, *args, **kw)

    def recording_calibrated(raw, cal):
        rec.setdefault("raw", np.array(raw, copy=True))
        return real_calibrated(raw, cal)

    # The calibration is what this probe replays: the map before session 45's guided step
    # and session 47's cap across thick slices.
    import napari_latentseg.engine.anomaly_guide as G

    guide, across = A.GUIDE, G.ACROSS_SLICES
    A.calibrate, A._calibrated, A.GUIDE = recording_calibrate, recording_calibrated, False
    G.ACROSS_SLICES = False
    try:
        _run(a, A, B, N, rec, out, done)
    finally:
        A.calibrate, A._calibrated, A.GUIDE = real_cal, real_calibrated, guide
        G.ACROSS_SLICES = across


def _run(a, A, B, N, rec, out, done) -> None:
    from napari_latentseg.engine.anomaly_masks import surface_fade

    cs, _ = N.cases(B, a.cases)
    for c in cs:
        mask, smask, far = B.case_masks(c)
        away = B.away_from_lesions(c, mask)
        if not c["truth"].any():
            far = mask  # a healthy head: every flag is a false positive
        # The brains' real tumours are lesions too, in their implant cases as well.
        if "zmask" in c:
            far = far & c["zmask"][:, None, None]
        if "keep" in c:
            far = far & c["keep"]
        for seed in (int(s) for s in a.seeds.split(",")):
            if (c["name"], seed) in done:
                continue
            rec.clear()
            t = time.perf_counter()
            res = A.anomaly_map(None, c["v"], modality=c["mod"], spacing=c["sp"],
                                error_map=False, seed=seed)
            row = {"case": c["name"], "seed": seed, "method": res.method,
                   "seconds": round(time.perf_counter() - t, 1), "variants": {}}
            raw = rec["raw"]
            f = int(round(c["v"].shape[-1] / raw.shape[-1]))  # in-plane grid factor
            surface = res.info.get("surface_mm")
            fade = surface_fade(res.mask, c["sp"], *surface) if surface else None
            # Outside the head, and bone and air on CT: 0, as in the engine's map (a normal
            # voxel scoring exactly 0 there is the fit's lowest: 0 either way); not the
            # surface's fade, which the variants without it undo.
            unscored = res.score <= 0
            if fade is not None:
                unscored &= fade > 0
            if a.save:
                d = out.parent / "self-calibration"
                d.mkdir(exist_ok=True)
                np.savez_compressed(d / f"{c['name']}_{seed}.npz", raw=raw, fit=rec["fit"],
                                    mask=mask, smask=smask, far=far, away=away,
                                    truth=c["truth"],
                                    res_mask=res.mask, spacing=np.asarray(c["sp"]),
                                    scored=~unscored, f=f)
            for body, tail in ((b, t) for b in BODIES for t in SURFACES):
                score = replay(raw, rec["fit"], body, c["v"].shape, unscored)
                if fade is not None and not tail:
                    score = score * fade
                for fpr in FPRS:
                    lab, cands = A.components((score > -np.log10(fpr)) & res.mask, score,
                                              c["sp"], 0.05)
                    flag = lab > 0
                    truth = c["truth"] & smask
                    row["variants"][f"{body}/{fpr:g}{tail}"] = {
                        "dice_thr": float(B.dice(flag & smask, truth)) if truth.any() else None,
                        "fp_pct": float(100 * flag[far].mean()) if far.any() else None,
                        "flagged_pct": float(100 * flag[smask].mean()),
                        "fp_far_pct": float(100 * flag[away].mean()) if away.any() else None,
                        "candidates": len(cands)}
                if body == A.SELF_BODY and not tail:  # the engine's own map: the bench's
                    assert np.allclose(score, res.score, rtol=1e-4, atol=1e-3), "replay differs"
                if body == A.SELF_BODY and tail and c["truth"].any():
                    row["best_dice_nosurface"] = B.curve_metrics(score, c["truth"], smask)[0]
            if c["truth"].any():
                row["best_dice"] = B.curve_metrics(res.score, c["truth"], smask)[0]
            with out.open("a") as fh:
                fh.write(json.dumps(row) + "\n")
            print(json.dumps(row), flush=True)


if __name__ == "__main__":
    main()
