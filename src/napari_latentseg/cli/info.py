"""``latentseg info``: describe a model file, or list the configurations."""

from __future__ import annotations

import argparse


def add_parser(sub) -> None:
    i = sub.add_parser("info", help="describe a model file, or list the configurations")
    i.add_argument("model", nargs="?", metavar="MODEL")
    i.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from ..models.checkpoint import load_model
    from ..models.config import CONFIGS

    if args.model is None:
        width = max(map(len, CONFIGS))
        for name, cfg in CONFIGS.items():
            print(f"{name:{width}s}  {cfg.description}")
        return 0
    m = load_model(args.model)
    n = sum(p.numel() for p in m.net.parameters())
    print(f"{args.model}: {m.describe()}")
    print(f"  configuration {m.config.name}: {n / 1e3:.0f}k parameters, latent "
          f"{m.config.latent_channels} ch at 1/{m.config.downsampling}")
    thr, pct = m.anomaly.get("threshold"), m.anomaly.get("percentile")
    thr_text = "none" if thr is None else f"{float(thr):.4g}" + (
        f" (the fit data's {float(pct):g}th percentile)" if pct is not None else "")
    from ..engine.normalize import fitted_modalities

    mods = " and ".join(fitted_modalities(m.info))
    print(f"  fitted on {mods or 'unrecorded'} scans; normalisation "
          f"{m.normalization.get('method')}, reconstruction-error threshold {thr_text}")
    norm = (m.anomaly or {}).get("normative")
    if norm:
        extra = ""
        if norm.get("method") == "contrast":  # statistics stored before the column have none
            mm = norm.get("blob_mm") or []
            extra = (f", blob column at {', '.join(f'{b:g}' for b in mm)} mm" if mm
                     else ", no blob column")
            sm = norm.get("smoothing_mm")  # statistics stored before session 21: 1 voxel
            extra += f", score smoothed {sm:g} mm" if sm else ", score smoothed 1 voxel"
            if norm.get("grid_mm"):
                extra += f" on a {norm['grid_mm']:g} mm grid"
        if norm.get("nets"):
            extra += f", a denoiser fitted on them ({len(norm['nets'])} snapshots)"
        fits = norm.get("dae_fits") or []  # stored since session 42: the check's figures
        if fits:
            best = max(fits, key=lambda f: f["check_ap"])
            extra += (f", the best of {len(fits)} fits at finding implanted spheres (seed "
                      f"{best['seed']}, average precision {best['check_ap']:.4f})")
        if norm.get("normalization") == "scan":  # stored before session 22: the model's
            extra += ", intensities normalised per scan (not by the model)"
        print(f"  normative anomaly statistics: {norm.get('method')} of "
              f"{norm.get('n_scans')} scan(s){extra}")
    print(f"  segmentation head: {'yes' if m.head else 'no'}")
    return 0
