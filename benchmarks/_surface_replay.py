"""Probe: the denoiser's findings faded at the head's surface, replayed on saved maps (session
37, issue #14; docs/anomaly_benchmarks.md, "Findings at the surface").

The maps come from earlier runs, so every variant scores the same fits:

- ``self``: ``results/self-calibration/<case>_<seed>.npz`` (``_self_calibration.py --save``:
  the raw map and the fit scores, re-calibrated here with the self-mode rule,
  ``anomaly.SELF_BODY``);
- ``normative``: ``results/dae-normative/<case>_<tag>_<seed>.npz`` (``_dae_normative.py
  --save``: the calibrated map and its threshold).

Each map is faded over ``(inner, outer)`` mm inside the head (``anomaly_masks.surface_fade``:
0 within ``inner``, 1 from ``outer``) after calibration, so the threshold is the same, and
scored: Dice of the candidates at the threshold (components of at least 0.05 mL), best
Dice over all thresholds, and the flags more than 20 mm from every lesion, the real tumour
too (``bench_anomaly.away_from_lesions``), % of that head. ``pre`` variants fade the raw map
towards the head's median before calibration instead (the threshold then moves).

Usage::

    python benchmarks/_surface_replay.py self
    python benchmarks/_surface_replay.py normative bench healthy3
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
FADES = (None, (5.0, 15.0), (10.0, 20.0), (15.0, 25.0), (20.0, 30.0))
PRE = ((10.0, 20.0), (15.0, 25.0))  # self mode: the fade before calibration


def main(argv: list[str] | None = None) -> None:
    sys.path.insert(0, str(HERE))
    import _dae_normative as N
    import bench_anomaly as B
    from _self_calibration import replay

    from napari_latentseg.engine.anomaly import SELF_BODY, components, head_mask
    from napari_latentseg.engine.anomaly_masks import surface_fade

    ap = argparse.ArgumentParser()
    ap.add_argument("mode", choices=("self", "normative"))
    ap.add_argument("tags", nargs="*", default=["bench", "healthy3", "self"],
                    help="normative: the saved maps' tags")
    ap.add_argument("--seed", type=int, default=0)
    a = ap.parse_args(argv)
    d = HERE / "results" / ("self-calibration" if a.mode == "self" else "dae-normative")
    files = sorted(d.glob(f"*_{a.seed}.npz"))
    if a.mode == "normative":
        files = [f for f in files if f.stem.split("_", 1)[1].rsplit("_", 1)[0] in a.tags]
    files = [f for f in files if not f.stem.startswith("lung")]  # MR only
    if not files:
        raise SystemExit(f"no saved maps in {d}")
    cases = {c["name"]: c for c in N.cases(B, sorted({f.stem.split("_")[0] for f in files}))[0]}
    table: dict = {}
    for f in files:
        z, c = np.load(f), cases[f.stem.split("_")[0]]
        tag = "self" if a.mode == "self" else f.stem.split("_", 1)[1].rsplit("_", 1)[0]
        mask = z["res_mask"] if "res_mask" in z.files else head_mask(c["v"], c["mod"])
        _, smask, _ = B.case_masks(c)
        away = B.away_from_lesions(c, mask)
        if a.mode == "self":
            base = replay(z["raw"], z["fit"], SELF_BODY, mask.shape, ~z["scored"])
            thr = 3.0
        else:
            base, thr = z["score"], float(z["threshold"])
        variants = [(str(v), base if v is None else base * surface_fade(mask, c["sp"], *v))
                    for v in FADES]
        if a.mode == "self":
            raw, med = z["raw"].astype(np.float64), float(np.median(z["raw"][mask]))
            for v in PRE:
                w = surface_fade(mask, c["sp"], *v)
                r = (med + (raw - med) * w).astype(np.float32)
                s = replay(r, r[mask], SELF_BODY, mask.shape, ~z["scored"])
                variants.append((f"pre{v}", s))
        cells = []
        for name, s in variants:
            lab, _ = components((s > thr) & mask, s, c["sp"], 0.05)
            t = c["truth"] & smask
            dt = float(B.dice((lab > 0) & smask, t)) if t.any() else None
            bd = B.curve_metrics(s, c["truth"], smask)[0] if t.any() else None
            fp = float(100 * (lab[away] > 0).mean())
            table.setdefault((tag, name), []).append((c["name"], dt, bd, fp))
            cells.append(f"{name}: {_f(dt)}/{_f(bd)}/{fp:.3f}")
        print(f"{c['name']:18s} {tag:9s}", " | ".join(cells), flush=True)
    print("\nmeans (Dice at the threshold / best Dice / FP % >20 mm, brains and healthy heads):")
    for (tag, name), rows in table.items():
        dt = [r[1] for r in rows if r[1] is not None]
        bd = [r[2] for r in rows if r[2] is not None]
        fb = [r[3] for r in rows if r[0].startswith("brain")]
        fh = [r[3] for r in rows if r[0].startswith("phantom-h")]
        print(f"{tag:9s} {name:14s} n={len(rows):2d} Dice@thr {np.mean(dt):.3f} best "
              f"{np.mean(bd):.3f}" + (f" FP brains {np.mean(fb):.3f} (max {np.max(fb):.3f})"
                                      if fb else "")
              + (f" healthy {np.mean(fh):.3f} (max {np.max(fh):.3f})" if fh else ""))


def _f(x) -> str:
    return "-" if x is None else f"{x:.3f}"


if __name__ == "__main__":
    main()
