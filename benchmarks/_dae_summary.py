"""Seed-spread table of ``_dae.py`` runs: best Dice mean [min-max] over seeds, per variant.

Usage: ``python benchmarks/_dae_summary.py [--metric M] results/anomaly-dae-A.json [...]``
(``M``: best_dice by default, dice_at_threshold, fp_pct_head, auprc); prints a markdown
table: one row per variant, one column per case, the brain cases' mean, the relative range
over seeds ((max - min) / mean, averaged over the cases) and the seconds per fit.
"""

from __future__ import annotations

import json
import sys
from collections import defaultdict

import numpy as np

CASES = ("brain1-tumour", "brain1-syn-dark", "brain2-tumour", "brain2-syn-bright",
         "lung1-nodule-solid", "phantom")


def main() -> None:
    args = sys.argv[1:]
    metric = "best_dice"
    if args[0] == "--metric":
        metric, args = args[1], args[2:]
    by = defaultdict(lambda: defaultdict(list))
    secs = defaultdict(list)
    base = {}
    for path in args:
        for r in json.load(open(path))["rows"]:
            if r.get("mode") != "self" or r.get(metric) is None:
                continue
            if r["method"] != "dae":
                if "post" not in r:
                    base[r["case"]] = r[metric]
                    continue
                key = (r["method"], "", r["post"])
                by[key][r["case"]].append(r[metric])
                continue
            ens = r.get("ensemble", 1)
            key = (f"ens {ens}" if ens != 1 else "1 fit", r.get("weights", "last"),
                   r.get("post", "mean"))
            by[key][r["case"]].append(r[metric])
            if "fit_seconds" in r:
                secs[key].append(r["fit_seconds"])
    cases = [c for c in CASES if any(c in v for v in by.values())]
    print("| fits | weights | post | " + " | ".join(cases) + " | brain mean | rel. range "
          "| s / fit |")
    print("|" + "---|" * (len(cases) + 6))
    if base:
        print("| `intensity` | | | " + " | ".join(f"{base.get(c, float('nan')):.3f}"
                                                  for c in cases) + " | | | |")
    for key, d in by.items():
        cells, brain, ratios = [], [], []
        for c in cases:
            v = np.array(d.get(c, []))
            if not len(v):
                cells.append("")
                continue
            cells.append(f"{v.mean():.3f} [{v.min():.3f}-{v.max():.3f}]")
            if c.startswith("brain"):
                brain.append(v.mean())
            if len(v) > 1:
                ratios.append((v.max() - v.min()) / v.mean())
        s = secs.get(key)
        print(f"| {key[0]} | {key[1]} | {key[2]} | " + " | ".join(cells)
              + f" | {np.mean(brain):.3f} | "
              + (f"{np.mean(ratios):.2f}" if ratios else "") + " | "
              + (f"{np.mean(s):.0f} ({min(s):.0f}-{max(s):.0f})" if s else "") + " |")


if __name__ == "__main__":
    main()
