"""Held-out nodule implants for the CT score's choices, and the blob column's switch.

Session 20 chose the contrast density's blob column (``CONTRAST_BLOB_MM``) on implants that the
benchmark's own cases do not contain: in each lung CT, solid, ground-glass and calcified
nodules (radius 3, 6, 10 mm) placed with other seeds, the real tumour left out of the scoring.
"""

from __future__ import annotations

import contextlib
import json

import numpy as np

HELDOUT_SEEDS = (101, 202)
KINDS = (("solid", 40.0), ("ggo", -450.0), ("calcified", 400.0))


@contextlib.contextmanager
def blob_columns(scales):
    """The contrast density with blob columns at ``scales`` (mm; () = none) inside."""
    import napari_latentseg.engine.anomaly_features as af

    saved = af.CONTRAST_BLOB_MM
    af.CONTRAST_BLOB_MM = tuple(scales)
    try:
        yield
    finally:
        af.CONTRAST_BLOB_MM = saved


def method_and_blob(method: str):
    """``contrast-noblob`` is the contrast density without the blob column (the ablation)."""
    if method == "contrast-noblob":
        return "contrast", blob_columns(())
    return method, contextlib.nullcontext()


def heldout_nodules(variants=((4.0,), ()), seeds=HELDOUT_SEEDS) -> list[dict]:
    """Best Dice of the contrast density with each blob ``variants`` on held-out nodule
    implants, with the best baseline (oracle window, |x - median 5x5|) of the same case."""
    from _anomaly_cases import case_masks, implant, load, lung_region
    from _anomaly_metrics import curve_metrics, oracle_window
    from scipy import ndimage

    from napari_latentseg.engine.anomaly import anomaly_map

    rows = []
    for name in ("lung1", "lung2"):
        v0, lab, sp = load(name, 4, z_window=24)
        _, lung, sig = lung_region(v0, lab)
        for kind, level in KINDS:
            for seed in seeds:
                vv, tr = implant(v0, lung, sp, level, (3, 6, 10), sig, seed=seed)
                _, smask, _ = case_masks(dict(v=vv, truth=tr, mod="CT"))
                smask &= ~ndimage.binary_dilation(lab, iterations=2)  # nodules only
                med = np.abs(vv - ndimage.median_filter(vv, (1, 5, 5)))
                row = {"case": f"{name}-{kind}-{seed}",
                       "oracle_window": oracle_window(vv, tr, smask),
                       "median": curve_metrics(med, tr, smask)[0]}
                for var in variants:
                    with blob_columns(var):
                        res = anomaly_map(None, vv, modality="CT", method="contrast",
                                          spacing=sp, error_map=False)
                    row[f"contrast blob {list(var)}"] = curve_metrics(res.score, tr, smask)[0]
                rows.append(row)
                print(json.dumps(row), flush=True)
    return rows


def heldout_markdown(rows: list[dict]) -> str:
    """Table of :func:`heldout_nodules` with the mean of each column."""
    if not rows:
        return ""
    cols = [k for k in rows[0] if k != "case"]
    out = ["", "### Held-out nodule implants (best Dice; chooses the CT score's blob column)",
           "", "| case | " + " | ".join(cols) + " |", "|---" * (len(cols) + 1) + "|"]
    out += ["| " + r["case"] + " | " + " | ".join(f"{r[c]:.3f}" for c in cols) + " |"
            for r in rows]
    out.append("| mean | " + " | ".join(f"{np.mean([r[c] for r in rows]):.3f}" for c in cols)
               + " |")
    return "\n".join(out) + "\n"
