"""Metrics and the report of ``bench_anomaly.py``: best Dice over thresholds, AUPRC, the
oracle window, the threshold sweep and the markdown table (split from the script, session 40).
"""

from __future__ import annotations

import numpy as np
from _nodules import heldout_markdown


def oracle_window(v, truth, mask, bins=128):
    vals, t = v[mask], truth[mask]
    edges = np.unique(np.quantile(vals, np.linspace(0, 1, bins + 1)))
    idx = np.clip(np.searchsorted(edges, vals, side="right") - 1, 0, len(edges) - 2)
    tot = np.bincount(idx, minlength=len(edges) - 1).astype(float)
    pos = np.bincount(idx, weights=t, minlength=len(edges) - 1)
    ct, cp = np.concatenate([[0], np.cumsum(tot)]), np.concatenate([[0], np.cumsum(pos)])
    w = ct[None, :] - ct[:, None]
    tp = cp[None, :] - cp[:, None]
    dice = np.where(w > 0, 2 * tp / (w + t.sum() + 1e-9), 0)
    return float(dice.max())


def curve_metrics(score, truth, mask):
    from sklearn.metrics import average_precision_score, precision_recall_curve

    s, t = score[mask], truth[mask]
    if not t.any():
        return None, None
    p, r, _ = precision_recall_curve(t, s)
    dice = np.max(2 * p * r / np.maximum(p + r, 1e-12))
    return float(dice), float(average_precision_score(t, s))


def dice(a, b):
    return float(2 * (a & b).sum() / max(1, a.sum() + b.sum()))


SWEEP = (1e-3, 1e-4, 1e-5)  # requested false-positive rates of the threshold sweep


def sweep(res, truth, smask, fmask, spacing) -> dict:
    """FP % of the head (lesion-free slices) / Dice of the candidates at each rate in SWEEP."""
    from napari_latentseg.engine.anomaly import _threshold, components

    out = {}
    for fpr in SWEEP:
        t = _threshold(res.info["calibration"], fpr, res.mode)
        lab, _ = components((res.score > t) & res.mask, res.score, spacing, 0.05)
        fp = float(100 * (lab[fmask] > 0).mean()) if fmask is not None else None
        out[f"{fpr:g}"] = [fp, dice(lab > 0, truth & smask)]
    return out


def _f(x, nd=3):
    return "" if x is None else (f"{x:.{nd}f}" if isinstance(x, float) else str(x))


def markdown(r: dict) -> str:
    lines = [f"Machine: {r['machine']}; VAE {r.get('config', 'cpu-2d')}, steps {r['steps']}; "
             f"total {r['total_seconds']} s",
             "", "| case | method | mode | best Dice | AUPRC | Dice@thr | FP % head | "
             "FP % >20 mm | s | " + " | ".join(f"FP % / Dice @ {f:g}" for f in SWEEP) + " |",
             "|---|---|---|---|---|---|---|---|---|" + "---|" * len(SWEEP)]
    for row in r["rows"]:
        lines.append(f"| {row['case']} | {row['method']} | {row['mode']} | "
                     f"{_f(row.get('best_dice'))} | {_f(row.get('auprc'))} | "
                     f"{_f(row.get('dice_at_threshold'))} | {_f(row.get('fp_pct_head'))} | "
                     f"{_f(row.get('fp_pct_far'))} | {_f(row.get('seconds'), 1)} | "
                     + " | ".join(" / ".join(_f(x) for x in row.get("sweep", {}).get(f"{f:g}", []))
                                  for f in SWEEP) + " |")
    lines += ["", f"PSNR brain1 (head, scan units): restored "
              f"{_f(r.get('psnr_brain1_restored_db'), 1)} dB, clipped "
              f"{_f(r.get('psnr_brain1_clipped_db'), 1)} dB"]
    for row in r.get("ct_whole_scan_fp", []):
        lines.append(f"Whole {row['scan']} {tuple(row['shape'])}, bone, metal and air rules "
                     f"{'on' if row['bone_metal_rules'] else 'off'}: FP "
                     f"{row['fp_pct_body']:.3f} % of the body in tumour-free slices, tumour "
                     f"flagged {row['tumour_flagged_pct']:.1f} %")
    if "full_brain1_anomaly_seconds" in r:
        lines.append(f"Full-size brain1 self-mode anomaly map: {r['full_brain1_anomaly_seconds']}"
                     " s")
    return "\n".join(lines) + "\n" + heldout_markdown(r.get("heldout_nodules", []))
