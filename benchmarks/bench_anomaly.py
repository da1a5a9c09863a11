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
- ``phantom1mm-tissue`` (full runs, session 40): the issue's tissue-intensity case on the
  phantom at 1.2 mm, eight white-matter spheres of grey-matter intensity, 3-7 mm
  (``_anomaly_cases.thin_phantom_case``; normative: two healthy phantoms of that size);
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
(``--no-vae``: the model-free methods only, no VAE fit; ``--device cuda``: the VAE fits and
the denoiser on a GPU, ``make bench-gpu-anomaly``); writes
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

# The cases and metrics live in two modules (session 40); their names stay importable from
# here, as the probes (``import bench_anomaly as B``) use them.
from _anomaly_cases import (  # noqa: F401
    DATA,
    OTHER,
    away_from_lesions,
    build_cases,
    case_masks,
    implant,
    load,
    lung_region,
    midline,
    noise_sigma,
    white_matter,
)
from _anomaly_metrics import SWEEP, curve_metrics, dice, markdown, oracle_window, sweep  # noqa: F401
from _nodules import heldout_nodules, method_and_blob

HERE = Path(__file__).resolve().parent
CACHE = HERE / ".cache"


def fit_vae(name, vols, steps, config="cpu-2d", decoder_steps=None, device="cpu"):
    from napari_latentseg.engine.train import FitOptions, fit
    from napari_latentseg.models.checkpoint import load_model, save_model

    opts = FitOptions(steps=steps, eval_every=max(10, steps // 4), device=device, patience=0,
                      decoder_steps=decoder_steps)
    # cpu-2d, the preset of the stored figures, keeps its cache names; others are suffixed,
    # and so is a decoder phase (session 16: the VAEs cached before had none).
    suffix = "" if config == "cpu-2d" else f"-{config}"
    if opts.planned_decoder_steps:
        suffix += f"-dec{opts.planned_decoder_steps}"
    if device != "cpu":  # a GPU fit is another model: cached apart
        suffix += f"-{device.split(':')[0]}"
    path = CACHE / f"anomaly-{name}-{steps}{suffix}.pt"
    if path.exists():
        return load_model(path, device=device), 0.0
    CACHE.mkdir(exist_ok=True)
    t = time.perf_counter()
    res = fit(vols, config, opts)
    save_model(res.model, path)
    return res.model, time.perf_counter() - t


def run(quick: bool, steps: int, out: Path, no_vae: bool = False, tag: str = "",
        extra_self: tuple = ("default",), config: str = "cpu-2d",
        norm_methods: tuple = ("intensity", "contrast", "default"), feature_cases: tuple = (),
        decoder_steps: int | None = None, only: tuple = (), device: str = "cpu",
        seed: int = 0) -> dict:
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
                                            decoder_steps, device)
        models["ct"], fit_s["ct"] = fit_vae("ct-quick" if quick else "ct", ct, steps, config,
                                            decoder_steps, device)
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
                    other = refs[c["ref"]] if c["ref"].startswith("phantom") \
                        else [refs[OTHER[c["ref"]]]]
                    t = time.perf_counter()
                    engine_method, switch = method_and_blob(method)
                    with switch:
                        norm_cache[key] = (fit_normative(model, other, method=engine_method,
                                                         spacing=c["sp"],
                                                         modalities=[c["mod"]] * len(other),
                                                         device=device, seed=seed),
                                           time.perf_counter() - t)
                ref = norm_cache[key][0]
            t = time.perf_counter()
            engine_method, switch = method_and_blob(method)
            with switch:
                res = anomaly_map(model, v, modality=c["mod"], method=engine_method,
                                  reference=ref, spacing=c["sp"], error_map=False,
                                  device=device, seed=seed)
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
    extra = {} if only else psnr_and_timing(models["mr"], quick, device)
    if not quick and not only:
        extra["ct_whole_scan_fp"] = ct_whole_scan_fp(device)
        extra["heldout_nodules"] = heldout_nodules()
    result = {"rows": rows, "fit_seconds": fit_s, "steps": steps, "config": config,
              "quick": quick,
              "no_vae": no_vae, "seed": seed,
              "machine": _machine(device), "device": device,
              "total_seconds": round(time.perf_counter() - t_all, 1), **extra}
    out.mkdir(parents=True, exist_ok=True)
    name = ("anomaly-quick" if quick else "anomaly") + tag
    (out / f"{name}.json").write_text(json.dumps(result, indent=1))
    (out / f"{name}.md").write_text(markdown(result))
    print(markdown(result))
    return result


def psnr_and_timing(model, quick: bool, device: str = "cpu") -> dict:
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
        res = anomaly_map(model, v, modality="MR", spacing=(6.5, 0.78, 0.78), device=device)
        out["full_brain1_anomaly_seconds"] = round(time.perf_counter() - t, 1)
        out["full_brain1_candidates"] = len(res.candidates)
    print(json.dumps(out), flush=True)
    return out


def ct_whole_scan_fp(device: str = "cpu") -> list[dict]:
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
                res = anomaly.anomaly_map(None, v, modality="CT", spacing=sp, device=device)
                flagged = res.labels > 0
                rows.append({"scan": name, "shape": list(v.shape), "bone_metal_rules": skip,
                             "fp_pct_body": float(100 * flagged[fmask].mean()),
                             "tumour_flagged_pct": float(100 * flagged[lab].mean())})
                print(json.dumps(rows[-1]), flush=True)
    finally:
        anomaly.CT_SKIP_BONE, anomaly.CT_SKIP_AIR = saved
    return rows


def _resolved(device: str) -> str:
    """``--device`` as a torch device string (the engine's ``resolve_device``); a clear exit
    for a device this machine does not have."""
    from napari_latentseg.runtime.device import resolve_device

    try:
        return str(resolve_device(device))
    except ValueError as exc:
        raise SystemExit(f"--device {device}: {exc}") from None


def _machine(device: str) -> str:
    """The processor and threads, and the GPU's name where the run used one."""
    import torch

    from napari_latentseg.runtime.device import thread_count

    cpu = f"{platform.processor() or platform.machine()}, {thread_count()} thread(s)"
    if device.startswith("cuda") and torch.cuda.is_available():
        return f"{cpu}, {torch.cuda.get_device_name(0)}"
    return cpu


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
    p.add_argument("--device", default="cpu",
                   help="where the VAEs are fitted and the networks of the scores run: cpu "
                        "(the stored figures), cuda, or auto (a GPU when there is one)")
    p.add_argument("--seed", type=int, default=0,
                   help="the anomaly scores' fit seed (the denoiser's fits and the density "
                        "draws; 0: the stored figures)")
    a = p.parse_args()
    device = _resolved(a.device)
    if a.slice_norm:
        import napari_latentseg.engine.anomaly as anomaly

        anomaly.SLICE_NORMALISE_DENSITY = True
    run(a.quick, a.steps or (60 if a.quick else 150), a.out, a.no_vae, a.tag,
        tuple(a.extra_self), a.config, tuple(a.norm_methods), tuple(a.feature_cases),
        a.decoder_steps, tuple(a.cases), device, a.seed)


if __name__ == "__main__":
    main()
