"""The CT anomaly score at full resolution, as a user scores a chest CT (in `make bench`).

`bench_anomaly.py` scores the CTs at in-plane / 4 (2.3-2.5 mm pixels) for speed; a user opens
the full-size scan (0.57-0.63 mm). This scores whole full-size lung1 and lung2 with the default
(no model) and reports, per docs/anomaly_benchmarks.md ("Smoothing the CT score in mm, on a
2.4 mm grid"): best Dice and Dice at the default threshold of implanted solid, ground-glass and
calcified nodules (radius 3, 6, 10 mm; seed 7; the real tumour not scored); nodules with a
candidate on them by radius, and false candidates a scan, over eight more cases (seeds 11 and
13, solid and calcified); false positives in the tumour-free slices of the whole scans without
implants; and the time and peak memory of a whole scan. Skipped when the data are missing.
"""

from __future__ import annotations

import argparse
import json
import platform
import resource
import time
from pathlib import Path

import numpy as np
from bench_anomaly import DATA, curve_metrics, dice, implant, load, lung_region

HERE = Path(__file__).resolve().parent
KINDS = {"solid": 40.0, "ggo": -450.0, "calcified": 400.0}
RADII = (3, 6, 10)


def _score(v, sp):
    from napari_latentseg.engine.anomaly import anomaly_map

    return anomaly_map(None, v, modality="CT", spacing=sp, error_map=False)


def run(out: Path, tag: str = "") -> dict:
    from scipy import ndimage

    res: dict = {"machine": f"{platform.machine()}, {platform.processor() or 'cpu'}",
                 "dice": {}, "whole": {}}
    hits, false_c = {r: 0 for r in RADII}, []
    t_all = time.perf_counter()
    for name in ("lung1", "lung2"):
        v0, lab, sp = load(name, 1)
        body, lung, sig = lung_region(v0, lab)
        smask = body & ~ndimage.binary_dilation(lab, iterations=2)
        for kind, seed in [(k, 7) for k in KINDS] + [(k, s) for s in (11, 13)
                                                     for k in ("solid", "calcified")]:
            vv, tr = implant(v0, lung, sp, KINDS[kind], RADII, sig, seed=seed)
            r = _score(vv, sp)
            flagged = r.labels > 0
            if seed == 7:
                res["dice"][f"{name}-{kind}"] = {
                    "best_dice": curve_metrics(r.score, tr, smask)[0],
                    "dice_at_threshold": dice(flagged & smask, tr & smask)}
                continue
            nl, n = ndimage.label(tr)
            for i in range(1, n + 1):
                m = nl == i
                rad = (m.sum() * np.prod(sp) * 3 / (4 * np.pi)) ** (1 / 3)
                hits[min(RADII, key=lambda k: abs(k - rad))] += bool(flagged[m].any())
            near = ndimage.binary_dilation(tr | lab, iterations=2)
            cl, nc = ndimage.label(flagged)
            false_c.append(sum(1 for j in range(1, nc + 1) if not near[cl == j].any()))
            print(f"{name} {kind} seed {seed}: {time.perf_counter() - t_all:.0f} s", flush=True)
        t0 = time.perf_counter()
        r = _score(v0, sp)
        far = ~ndimage.binary_dilation(lab.any((1, 2)), iterations=3)
        f = r.labels > 0
        res["whole"][name] = {"shape": list(v0.shape), "seconds": time.perf_counter() - t0,
                              "fp_pct_body": float(100 * f[body & far[:, None, None]].mean()),
                              "tumour_flagged_pct": float(100 * f[lab].mean()),
                              "candidates": len(r.candidates)}
    res["nodules_found_by_radius_mm"] = {str(k): v for k, v in hits.items()}
    res["nodule_cases"] = len(false_c)
    res["false_candidates_per_scan"] = float(np.mean(false_c))
    res["process_peak_rss_gb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e6
    res["total_seconds"] = time.perf_counter() - t_all
    out.mkdir(parents=True, exist_ok=True)
    (out / f"ct_fullres{tag}.json").write_text(json.dumps(res, indent=1))
    print(json.dumps(res, indent=1))
    return res


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--out", type=Path, default=HERE / "results")
    p.add_argument("--tag", default="", help="suffix of the result file name")
    a = p.parse_args()
    if not (DATA / "lung1_image.nrrd").exists():
        print(f"bench_ct_fullres: skipped ({DATA} has no lung CTs)")
        return
    run(a.out, a.tag)


if __name__ == "__main__":
    main()
