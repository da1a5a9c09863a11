"""Anomaly maps against intensity baselines, on real and implanted lesions.

Cases (downsampled so a run takes minutes on one thread; sizes are printed):

- ``brain1-tumour``, ``brain2-tumour``: the pyradiomics tumour masks, in-plane / 2
  (25 x 128 x 128 at 1.56 mm);
- ``brainN-syn-{tissue,dark,bright}``: three spheres (radius 4, 8, 13 mm; soft edge) implanted
  in the brain interior, at the brain's median intensity or -/+ 0.35 of its 5-95 % range,
  carrying the scan's own noise (MAD of the median-filter residual); slices with the real
  tumour are left out of the scoring;
- ``brainN-wm-{tissue,dark,bright}`` (session 26): the same spheres centred in the
  cerebrum's white matter (``white_matter``: brain1's ``syn`` implants sit in its skull
  base), anywhere in the cerebrum's slices, scored over the head but the real tumour grown by
  10 mm;
- ``brainN-mid-{dark,bright}`` (session 27): the same spheres centred within 3 mm of the
  head's fitted mid-sagittal plane in the cerebrum's slices, scored like the ``wm`` cases
  (midline lesions, which the denoiser's lowering of mirrored findings must leave alone);
- ``lungN-nodule-{solid,ggo,calcified}``: three nodules (radius 3, 6, 10 mm) in lung
  parenchyma at 40, -450 and 400 HU with the scan's noise; 24 slices around the tumour,
  in-plane / 4 (128 x 128 at ~2.4 mm), the real tumour counted as a lesion too;
- ``phantom``: the shipped phantom's three lesions (label 7);
- false positives: flagged volume in the slices at least 3 slices away from every lesion (real
  or implanted) of ``brain1-tumour``, ``brain2-tumour`` and ``lung1-nodule-solid``, % of head;
  on every case the flagged share of the head more than 20 mm from every lesion, the real
  tumour included (``away_from_lesions``, session 37: "FP % >20 mm"); also, on every case,
  the flagged share of the whole head (what the calibration controls),
  and FP / Dice at the rates in ``SWEEP``; and (full runs) the default's false positives on
  the whole lung1 and lung2 CTs, with the bone, metal and air rules and without
  (``ct_whole_scan_fp``);
- held-out nodules (full runs): the same three kinds implanted with other seeds in both CTs,
  nodules only, scored by the contrast density with and without its blob column
  (``_nodules.heldout_nodules``: the data that chose the column);

Methods: the engine's ``default`` (what users get: the denoiser ``dae`` on MR, ``contrast``
on CT; shown as ``default (dae)``), ``intensity``, ``contrast``, ``error`` (today's
reconstruction error) and ``median`` (|x - median 5x5|) in self mode, ``intensity`` and
``contrast`` in normative mode, and ``features``
(VAE encoder-feature density) in both modes on two cases; ``contrast-noblob`` (the
contrast density without its blob column) with ``--extra-self`` / ``--norm-methods``
(``knn`` and ``ssim`` were measured in exploratory runs only, see
docs/anomaly_benchmarks.md). Normative statistics come from
the other scan of the pair (brain1 <-> brain2, lung1 <-> lung2, phantom seed 0 <- seeds
1, 2); ``oracle-window`` is the best intensity window chosen with the labels (an upper bound
of thresholding). Best Dice over thresholds and AUPRC
inside the head; Dice and false positives at the unsupervised threshold (fpr 1e-3).

One VAE per modality (MR: brain1 + brain2, also used for the phantom; CT: lung1 + lung2), fitted
with ``--steps`` (cached under ``benchmarks/.cache``). Also: reconstruction PSNR on brain1
(full size) with out-of-range intensities restored vs clipped, and the time of a self-mode
anomaly map of full-size brain1.

Usage: ``LATENTSEG_NUM_THREADS=1 python benchmarks/bench_anomaly.py [--quick] [--no-vae]``
(``--no-vae``: the model-free methods only, no VAE fit, ~2 min); writes
``benchmarks/results/anomaly{-quick}{--tag}.json`` and ``.md``.
"""

from __future__ import annotations

import argparse
import fnmatch
import json
import platform
import time
from pathlib import Path

import numpy as np
from _lesions import implant, midline, noise_sigma, white_matter  # noqa: F401 (other scripts)
from _nodules import heldout_markdown, heldout_nodules, method_and_blob

HERE = Path(__file__).resolve().parent
DATA = Path("/work/shared/data/pyradiomics")
CACHE = HERE / ".cache"


def _down(v: np.ndarray, f: int) -> np.ndarray:
    z, y, x = v.shape
    v = v[:, : y - y % f, : x - x % f].astype(np.float32)
    return v.reshape(z, y // f, f, x // f, f).mean((2, 4))


def load(name: str, f: int, z_window: int | None = None):
    from napari_latentseg.io import read_volume

    img = read_volume(DATA / f"{name}_image.nrrd")
    lab = read_volume(DATA / f"{name}_label.nrrd").data > 0
    v = img.data.astype(np.float32)
    if z_window:
        zs = np.nonzero(lab.any((1, 2)))[0]
        c = int(zs.mean())
        lo = max(0, min(v.shape[0] - z_window, c - z_window // 2))
        v, lab = v[lo : lo + z_window], lab[lo : lo + z_window]
    sp = (img.spacing[0], img.spacing[1] * f, img.spacing[2] * f)
    return _down(v, f), _down(lab.astype(np.float32), f) >= 0.5, sp


def lung_region(v: np.ndarray, lab: np.ndarray):
    """(body, lung away from the real tumour, noise sigma of soft tissue) of a CT in HU: where
    nodules are implanted, and the noise they are given."""
    from scipy import ndimage

    from napari_latentseg.engine.anomaly import head_mask

    body = head_mask(v, "CT")
    lung = body & (v < -500) & ~ndimage.binary_dilation(lab, iterations=4)
    return body, lung, noise_sigma(v, body & (v > -200) & (v < 200))


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


def fit_vae(name, vols, steps, config="cpu-2d", decoder_steps=None):
    from napari_latentseg.engine.train import FitOptions, fit
    from napari_latentseg.models.checkpoint import load_model, save_model

    opts = FitOptions(steps=steps, eval_every=max(10, steps // 4), device="cpu", patience=0,
                      decoder_steps=decoder_steps)
    # cpu-2d, the preset of the stored figures, keeps its cache names; others are suffixed,
    # and so is a decoder phase (session 16: the VAEs cached before had none).
    suffix = "" if config == "cpu-2d" else f"-{config}"
    if opts.planned_decoder_steps:
        suffix += f"-dec{opts.planned_decoder_steps}"
    path = CACHE / f"anomaly-{name}-{steps}{suffix}.pt"
    if path.exists():
        return load_model(path), 0.0
    CACHE.mkdir(exist_ok=True)
    t = time.perf_counter()
    res = fit(vols, config, opts)
    save_model(res.model, path)
    return res.model, time.perf_counter() - t


def build_cases(quick: bool):
    from napari_latentseg.data.phantom import make_phantom
    from napari_latentseg.engine.anomaly import head_mask

    cases, refs, wm_cases, mid_cases = [], {}, [], []  # apart: the others keep their seeds
    kinds_mr = ["tissue"] if quick else ["tissue", "dark", "bright"]
    for name in ("brain1", "brain2"):
        v, lab, sp = load(name, 2)
        refs[name] = v
        cases.append(dict(name=f"{name}-tumour", group="mr", v=v, truth=lab, sp=sp,
                          ref=name, fp=True, mod="MR"))
        head = head_mask(v, "MR")
        from scipy import ndimage

        # Brain parenchyma, roughly: > 15 mm inside the head (past scalp and skull).
        brain = ndimage.distance_transform_edt(head, sampling=sp) > 15.0
        lo, med, hi = np.percentile(v[brain], [5, 50, 95])
        sig = noise_sigma(v, brain)
        levels = {"tissue": med, "dark": med - 0.35 * (hi - lo), "bright": med + 0.35 * (hi - lo)}
        for kind in kinds_mr:
            level = levels[kind]
            # Implants stay out of the slices scored away (the real tumour's, +-1).
            tz = ndimage.binary_dilation(lab.any((1, 2)), iterations=1)
            tumour_z = np.broadcast_to(tz[:, None, None], v.shape)
            vv, tr = implant(v, brain, sp, level, (4, 8, 13), sig, seed=len(cases),
                             avoid=tumour_z, margin_mm=5.0)
            score_mask = ~lab.any((1, 2))  # leave the real tumour's slices out
            cases.append(dict(name=f"{name}-syn-{kind}", group="mr", v=vv, truth=tr, sp=sp,
                              ref=name, fp=False, mod="MR", zmask=score_mask, real=lab))
        # Session 26: the same kinds in the cerebrum's white matter, where the issue's
        # lesions are (the implants above sit in brain1's skull base).
        cerebrum, wm, keep = white_matter(v, head, lab, sp)
        for kind in kinds_mr:
            vv, tr = implant(v, cerebrum, sp, levels[kind], (4, 8, 13), sig,
                             seed=100 + len(wm_cases), margin_mm=0.0, centres=wm)
            wm_cases.append(dict(name=f"{name}-wm-{kind}", group="mr", v=vv, truth=tr, sp=sp,
                              ref=name, fp=False, mod="MR", keep=keep, real=lab))
        # Session 27: dark and bright spheres centred on the midline (within 3 mm of the fitted
        # plane), which the lowering of findings on both sides must not hide.
        mid = midline(v, head, sp)
        for kind in kinds_mr[1:]:
            vv, tr = implant(v, cerebrum, sp, levels[kind], (4, 8, 13), sig,
                             seed=200 + len(mid_cases), margin_mm=0.0, centres=mid)
            mid_cases.append(dict(name=f"{name}-mid-{kind}", group="mr", v=vv, truth=tr,
                                  sp=sp, ref=name, fp=False, mod="MR", keep=keep, real=lab))
    n_mr = len(cases)
    f = 4  # 128 x 128 in-plane (the CT VAE was fitted on in-plane / 2 crops)
    kinds_ct = ["solid"] if quick else ["solid", "ggo", "calcified"]
    for name in ("lung1", "lung2"):
        v, lab, sp = load(name, f, z_window=24)
        refs[name] = v
        _, lung, sig = lung_region(v, lab)
        for kind in kinds_ct if name == "lung1" else kinds_ct[:1]:
            level = {"solid": 40.0, "ggo": -450.0, "calcified": 400.0}[kind]
            vv, tr = implant(v, lung, sp, level, (3, 6, 10), sig, seed=len(cases))
            cases.append(dict(name=f"{name}-nodule-{kind}", group="ct", v=vv, truth=tr | lab,
                              sp=sp, ref=name, fp=kind == "solid" and name == "lung1",
                              mod="CT"))
    shape = (20, 64, 64) if quick else (40, 128, 128)
    sp_ph = (4.0, 1.6 * 128 / shape[1], 1.6 * 128 / shape[2])
    ph = make_phantom(shape, sp_ph, seed=0)
    cases.append(dict(name="phantom", group="mr", v=ph.image.astype(np.float32),
                      truth=ph.labels == 7, sp=ph.spacing, ref="phantom", fp=False, mod="MR"))
    refs["phantom"] = [make_phantom(shape, sp_ph, seed=s).image.astype(np.float32)
                       for s in (1, 2)]
    return cases[:n_mr] + wm_cases + mid_cases + cases[n_mr:], refs


def case_masks(c: dict):
    """(head mask, scored voxels, lesion-free slices' head) of a case from build_cases: the
    real tumour's slices are not scored in the synthetic brain cases, and false positives are
    counted at least 3 slices away from every lesion."""
    from scipy import ndimage

    from napari_latentseg.engine.anomaly import head_mask

    v, truth = c["v"], c["truth"]
    mask = head_mask(v, c["mod"])
    smask = mask & c["zmask"][:, None, None] if "zmask" in c else mask
    if "keep" in c:
        smask = smask & c["keep"]
    lesion_z = np.nonzero(ndimage.binary_dilation(truth.any((1, 2)), iterations=3))[0]
    far = np.ones(v.shape[0], bool)
    far[lesion_z] = False
    return mask, smask, mask & far[:, None, None]


def away_from_lesions(c: dict, mask: np.ndarray, mm: float = 20.0) -> np.ndarray:
    """The head more than ``mm`` from every lesion, the scan's real tumour included (session
    37: brain2's flags in the eyes and nose lay in its tumour's slices, which the lesion-free
    slices of :func:`case_masks` leave out)."""
    from scipy import ndimage

    les = c["truth"] | c["real"] if "real" in c else c["truth"]
    if not les.any():
        return mask
    return mask & (ndimage.distance_transform_edt(~les, sampling=c["sp"]) > mm)


OTHER = {"brain1": "brain2", "brain2": "brain1", "lung1": "lung2", "lung2": "lung1"}


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


def run(quick: bool, steps: int, out: Path, no_vae: bool = False, tag: str = "",
        extra_self: tuple = ("default",), config: str = "cpu-2d",
        norm_methods: tuple = ("intensity", "contrast", "default"), feature_cases: tuple = (),
        decoder_steps: int | None = None, only: tuple = ()) -> dict:
    from napari_latentseg.engine.anomaly import anomaly_map, fit_normative

    t_all = time.perf_counter()
    cases, refs = build_cases(quick)
    if only:  # a subset of the cases; the whole-scan extras are left out then
        cases = [c for c in cases if any(fnmatch.fnmatch(c["name"], p) for p in only)]
    models, fit_s = {}, {}
    mr = [refs["brain1"], refs["brain2"]]
    ct = [refs["lung1"], refs["lung2"]]
    if no_vae:  # the model-free methods only (intensity, median): no VAE fit
        models = {"mr": None, "ct": None}
    else:
        models["mr"], fit_s["mr"] = fit_vae("mr-quick" if quick else "mr", mr, steps, config,
                                            decoder_steps)
        models["ct"], fit_s["ct"] = fit_vae("ct-quick" if quick else "ct", ct, steps, config,
                                            decoder_steps)
    print(f"VAE fits: {fit_s} s ({steps} steps; 0 = cached)", flush=True)
    # The VAE-feature density costs 2-3 min a case here (under load): on two cases only.
    # "default": what users get (session 4: the denoiser on MR, intensity on CT).
    self_methods = ["intensity", "contrast", "median"] + ([] if no_vae else ["error"]) \
        + list(extra_self)
    norm_methods = list(norm_methods)
    feature_cases = set(feature_cases) or {"phantom", "brain1-syn-tissue"}
    norm_cache: dict = {}
    rows = []
    for c in cases:
        model = models[c["group"]]
        v, truth = c["v"], c["truth"]
        mask, smask, fmask = case_masks(c)
        away = away_from_lesions(c, mask)
        base = {"case": c["name"], "shape": list(v.shape), "lesion_ml":
                float(truth.sum() * np.prod(c["sp"]) / 1000)}
        rows.append({**base, "method": "oracle-window", "mode": "labels",
                     "best_dice": oracle_window(v, truth, smask)})
        runs = [(m, "self") for m in self_methods] + [(m, "normative") for m in norm_methods]
        if ("all" in feature_cases or c["name"] in feature_cases) and not quick \
                and not no_vae:
            runs += [("features", "self"), ("features", "normative")]
        for method, mode in runs:
            ref = None
            if mode == "normative":
                key = (c["ref"], method)
                if key not in norm_cache:
                    other = refs["phantom"] if c["ref"] == "phantom" else [refs[OTHER[c["ref"]]]]
                    t = time.perf_counter()
                    engine_method, switch = method_and_blob(method)
                    with switch:
                        norm_cache[key] = (fit_normative(model, other, method=engine_method,
                                                         spacing=c["sp"],
                                                         modalities=[c["mod"]] * len(other)),
                                           time.perf_counter() - t)
                ref = norm_cache[key][0]
            t = time.perf_counter()
            engine_method, switch = method_and_blob(method)
            with switch:
                res = anomaly_map(model, v, modality=c["mod"], method=engine_method,
                                  reference=ref, spacing=c["sp"], error_map=False)
            secs = time.perf_counter() - t
            bd, ap = curve_metrics(res.score, truth, smask)
            shown = method if method == res.method else f"{method} ({res.method})"
            row = {**base, "method": shown, "mode": mode, "best_dice": bd, "auprc": ap,
                   "dice_at_threshold": dice(res.labels > 0, truth & smask),
                   "threshold": res.threshold, "n_candidates": len(res.candidates),
                   "seconds": round(secs, 2)}
            if c["fp"] and fmask.any():
                row["fp_pct_head"] = float(100 * (res.labels[fmask] > 0).mean())
            if away.any():
                row["fp_pct_far"] = float(100 * (res.labels[away] > 0).mean())
            # What the calibration controls: the flagged share of the whole head (all slices,
            # lesions included), before and after the component size filter.
            row["flagged_pct_head"] = [float(100 * (res.score[mask] > res.threshold).mean()),
                                       float(100 * (res.labels[mask] > 0).mean())]
            row["sweep"] = sweep(res, truth, smask, fmask if c["fp"] else None, c["sp"])
            rows.append(row)
            print(json.dumps(row), flush=True)
    extra = {} if only else psnr_and_timing(models["mr"], quick)
    if not quick and not only:
        extra["ct_whole_scan_fp"] = ct_whole_scan_fp()
        extra["heldout_nodules"] = heldout_nodules()
    result = {"rows": rows, "fit_seconds": fit_s, "steps": steps, "config": config,
              "quick": quick,
              "no_vae": no_vae,
              "machine": f"{platform.processor() or platform.machine()}, 1 thread",
              "total_seconds": round(time.perf_counter() - t_all, 1), **extra}
    out.mkdir(parents=True, exist_ok=True)
    name = ("anomaly-quick" if quick else "anomaly") + tag
    (out / f"{name}.json").write_text(json.dumps(result, indent=1))
    (out / f"{name}.md").write_text(markdown(result))
    print(markdown(result))
    return result


def psnr_and_timing(model, quick: bool) -> dict:
    """PSNR of brain1 (full size) reconstructions, restored vs clipped; full-size map time."""
    from napari_latentseg.engine.anomaly import anomaly_map, head_mask
    from napari_latentseg.engine.infer import normalizer_for, reconstruct
    from napari_latentseg.io import read_volume

    v = read_volume(DATA / "brain1_image.nrrd").data.astype(np.float32)
    out: dict = {}
    if model is not None:
        rec = reconstruct(model, v, modality="MR", anomalies=False)
        norm, _ = normalizer_for(model, v, "MR")
        clipped = rec.reconstruction - norm.out_of_range(v)
        head = head_mask(v, "MR")
        rng_lo, rng_hi = np.percentile(v[v > np.median(v)], [0.5, 99.5])

        def psnr(r):
            mse = float(np.mean((r[head] - v[head]) ** 2))
            return float(20 * np.log10((rng_hi - rng_lo) / np.sqrt(mse)))

        out = {"psnr_brain1_restored_db": psnr(rec.reconstruction),
               "psnr_brain1_clipped_db": psnr(clipped),
               "psnr_note": "VAE fitted on in-plane/2 brains, applied to full-size brain1"}
    if not quick:
        t = time.perf_counter()
        res = anomaly_map(model, v, modality="MR", spacing=(6.5, 0.78, 0.78))
        out["full_brain1_anomaly_seconds"] = round(time.perf_counter() - t, 1)
        out["full_brain1_candidates"] = len(res.candidates)
    print(json.dumps(out), flush=True)
    return out


def ct_whole_scan_fp() -> list[dict]:
    """The default's false positives on each whole lung CT (every slice, in-plane / 4), in the
    body's slices at least 3 slices from the real tumour: the bone, metal and air rules were found
    on lung1, this checks them on lung2 too (with them and without)."""
    from scipy import ndimage

    import napari_latentseg.engine.anomaly as anomaly

    rows, saved = [], (anomaly.CT_SKIP_BONE, anomaly.CT_SKIP_AIR)
    try:
        for name in ("lung1", "lung2"):
            v, lab, sp = load(name, 4)
            body = anomaly.head_mask(v, "CT")
            far = ~ndimage.binary_dilation(lab.any((1, 2)), iterations=3)
            fmask = body & far[:, None, None]
            for skip in (True, False):
                anomaly.CT_SKIP_BONE = anomaly.CT_SKIP_AIR = skip
                res = anomaly.anomaly_map(None, v, modality="CT", spacing=sp)
                flagged = res.labels > 0
                rows.append({"scan": name, "shape": list(v.shape), "bone_metal_rules": skip,
                             "fp_pct_body": float(100 * flagged[fmask].mean()),
                             "tumour_flagged_pct": float(100 * flagged[lab].mean())})
                print(json.dumps(rows[-1]), flush=True)
    finally:
        anomaly.CT_SKIP_BONE, anomaly.CT_SKIP_AIR = saved
    return rows


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


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--quick", action="store_true", help="fewer cases and methods, smaller CT")
    p.add_argument("--steps", type=int, default=None, help="VAE fit steps (150; quick 60)")
    p.add_argument("--out", type=Path, default=HERE / "results")
    p.add_argument("--no-vae", action="store_true",
                   help="model-free methods only (intensity, median): no VAE fit")
    p.add_argument("--tag", default="", help="suffix of the result file names")
    p.add_argument("--extra-self", nargs="*", default=["default"],
                   help="more self-mode methods (default: 'default', the denoiser on MR)")
    p.add_argument("--config", default="cpu-2d",
                   help="VAE preset (cpu-2d: the stored figures; the product's default is "
                        "cpu-2d-fine)")
    p.add_argument("--norm-methods", nargs="*", default=["intensity", "contrast", "default"],
                   help="normative-mode methods ('default': what users get, the denoiser "
                        "fitted on the reference on MR since session 34)")
    p.add_argument("--feature-cases", nargs="*", default=[],
                   help="cases that also run 'features' in both modes ('all'; default: "
                        "phantom and brain1-syn-tissue)")
    p.add_argument("--decoder-steps", type=int, default=None,
                   help="the VAE fits' decoder phase (default: as many as --steps; 0: none, "
                        "as the VAEs cached before session 16)")
    p.add_argument("--cases", nargs="*", default=[],
                   help="only the cases matching these patterns (e.g. 'brain*-wm-*'); the "
                        "PSNR, full-size timing and whole-CT extras are then skipped")
    p.add_argument("--slice-norm", action="store_true",
                   help="density scores centred and scaled per slice (session 12 probe)")
    a = p.parse_args()
    if a.slice_norm:
        import napari_latentseg.engine.anomaly as anomaly

        anomaly.SLICE_NORMALISE_DENSITY = True
    run(a.quick, a.steps or (60 if a.quick else 150), a.out, a.no_vae, a.tag,
        tuple(a.extra_self), a.config, tuple(a.norm_methods), tuple(a.feature_cases),
        a.decoder_steps, tuple(a.cases))


if __name__ == "__main__":
    main()
