"""Interactive correction loop: simulated strokes and suggested slices, Dice per round.

Protocols (the annotator is benchmarks/_interactive.py):

- ``strokes``: one disk stroke (radius 4 voxels) per class, then each round one corrective
  stroke at the most interior voxel of the largest 3D error component, with the true label;
- ``slices``: one fully annotated axial slice (the largest object area; the phantom's middle),
  then each round the slice the method suggests (engine: ``SegmentationResult.suggestion``;
  other methods: the engine's ``suggest_slices`` on their own probabilities).

Cases: the phantom's tissue classes, tumour vs background in brain1, brain2, lung1, lung2,
breast1 (/work/shared/data/pyradiomics; skipped when missing) and ``brain1-unequal`` /
``phantom-unequal`` (the background stroke has radius 1: 5 voxels against 49), and
``<case>-3class`` (a tumour case as three classes, the air, the tumour and the rest of the
body, scored on the tumour: a multi-class round on a real scan), and ``phantomiso<seed>`` /
``phantomthick<seed>`` (a synthetic head's three lesions as the object, on 1.6 mm voxels /
6.4 mm slices; not in the default cases), and ``phantomlesions`` (the shipped phantom's
three lesions as the object: the sample data a new user tries first; not in the defaults).
Dice is over all voxels: the tumour (pyradiomics), the lesions (the lesion heads) or the mean
over the phantom's tissues.

Methods: see benchmarks/_loop_methods.py and benchmarks/_semisup.py. VAEs are fitted once per
scan (the product default, 450 steps; ``LATENTSEG_BENCH_FIT_MINUTES`` caps it) and cached in
benchmarks/.cache/interactive (``LATENTSEG_BENCH_CACHE``).

Usage: ``python benchmarks/bench_interactive.py [--cases ...] [--methods ...] [--rounds 10]
[--protocols strokes slices] [--quick] [--seeds N]``; writes
``benchmarks/results/interactive.json`` and ``interactive.md``. ``--quick`` crops around the
object and runs 6 stroke rounds and 3 slice rounds (fine-tuning: 20 steps, 2 and 1 rounds).
``--seeds N`` repeats every run with seeds 0..N-1 and adds a mean ± sd table (one seed
moves a case's AUC by up to 0.15).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
import _interactive as ia  # noqa: E402
import _loop_methods as lm  # noqa: E402
import _semisup as ss  # noqa: E402
from _loop_methods import LoopOptions as LO  # noqa: E402
from _methods import (  # noqa: E402  (the tables, re-exported for the probes)
    BASE,
    CASES,
    ENGINE,
    FINETUNE_STEPS,
    LOOPS,
    SEMISUP,
)

# ``objfirst-<engine method>``: that method with ``SegmentOptions.object_class`` set to the
# case's rarest class (session 56: a multi-class round's object from a two-class round).
OBJECT_FIRST = "objfirst-"


def build(method: str, env: dict, quick: bool, seed: int = 0):
    """A fresh method (state such as a fine-tuned model starts over) for one case."""
    if method.startswith(OBJECT_FIRST):  # the engine's object_class, the rarest class
        m = build(method.removeprefix(OBJECT_FIRST), env, quick, seed)
        if not isinstance(m, lm.VAEDefault):
            raise ValueError(f"{method}: {OBJECT_FIRST}<method> takes an engine method")
        m.options["object_class"] = ia.object_class(env["truth"])
        return m
    if method in ("skimage-rf", "skimage-rf-connected"):
        m = lm.SkimageRF(env["image"], env["modality"], env["spacing"],
                         connected=method.endswith("connected"), opts=LO(seed=seed))
        return m
    if method in ENGINE:
        from napari_latentseg.engine.segment import FeatureCache

        ft = (20 if quick else FINETUNE_STEPS) if method == "vae-finetune" else 0
        opts = dict(ENGINE[method])  # the default background="auto": class 1 of tumour cases
        model, setup = env["model"], env["fit_s"]
        if opts.pop("no_model", False):
            model, setup = None, 0.0
        if opts.get("extra"):
            opts["extra"], extra_s = extra_columns(env, opts["extra"], None)
            setup += extra_s
        return lm.VAEDefault(model, env["image"], env["modality"], setup, FeatureCache(), ft,
                             seed, env["spacing"], **opts)
    if method in SEMISUP:
        opts = dataclasses.replace(SEMISUP[method], seed=seed)
        return ss.SemiSup(env["model"], env["image"], env["modality"], env["spacing"],
                          env["fit_s"], opts)
    if method in LOOPS:
        opts = dataclasses.replace(LOOPS[method], seed=seed)
        feats, feat_s, ms_s = env_features(env)
        setup = env["fit_s"] + feat_s if opts.vae else ms_s
        extra, extra_s = extra_columns(env, opts.extra, feats)
        return lm.ForestLoop(feats, env["spacing"], opts, setup + extra_s, extra)
    raise ValueError(f"unknown method {method!r}")


def env_features(env: dict):
    """The engine's forest features of the case (computed once, timed) and the time of the
    ilastik columns alone."""
    if "feats" not in env:
        import torch

        from napari_latentseg.engine.features import multiscale_features
        from napari_latentseg.engine.infer import normalizer_for
        from napari_latentseg.engine.segment import FeatureCache

        t0 = time.perf_counter()
        cache = FeatureCache()
        env["feats"] = lm.engine_forest_features(env["model"], env["image"], env["modality"],
                                                 cache, env["first_ann"])
        env["feat_s"] = time.perf_counter() - t0  # a whole first round: an upper bound
        t0 = time.perf_counter()
        norm = normalizer_for(env["model"], env["image"], env["modality"])[0]
        x = torch.from_numpy(np.ascontiguousarray(norm(env["image"])[:, None], np.float32))
        with torch.inference_mode():
            for i in range(0, len(x), 8):
                multiscale_features(x[i : i + 8])
        env["ms_s"] = time.perf_counter() - t0
    return env["feats"], env["feat_s"], env["ms_s"]


def extra_columns(env: dict, names, feats) -> tuple[np.ndarray | None, float]:
    """Extra forest columns (z, y, x, k) of a case and their seconds: ``dae``, the denoising
    autoencoder's anomaly score fitted on the whole scan (then cropped); ``anomaly``, the
    engine's default anomaly score of the scan (self mode); ``vaesigma``, the VAE
    posterior's log sigma (nearest-upsampled to voxels); ``vaectx``, the VAE
    columns averaged over a wider neighbourhood (Gaussian, 1 slice x 6 voxels); ``daemid`` /
    ``daeup``, the denoiser's inner features (``_dae_columns.py``)."""
    if not names:
        return None, 0.0
    cols, secs = [], 0.0
    for name in names:
        if name not in env.setdefault("extra", {}):
            t0 = time.perf_counter()
            if name in ("dae", "anomaly"):
                from napari_latentseg.engine.anomaly import anomaly_map

                kw = {"method": "dae"} if name == "dae" else {}  # anomaly: the default
                # The denoiser where the benchmark's VAEs run (the GPU in bench_gpu_quality).
                res = anomaly_map(None, env["full_image"], modality=env["modality"],
                                  spacing=env["spacing"], error_map=False, device=ia.DEVICE,
                                  **kw)
                col = res.score[env["box"]][..., None]
            elif name in ("daemid", "daeup"):
                from _dae_columns import dae_columns

                col = dae_columns(env["full_image"], env["modality"], env["spacing"],
                                  name[3:])[env["box"]]
            elif name == "vaesigma":
                from napari_latentseg.engine.infer import encode

                lat = encode(env["model"], env["full_image"], modality=env["modality"])
                ls = np.log(np.maximum(lat.sigma, 1e-6)).astype(np.float32)
                shape, f = env["full_image"].shape, int(lat.scale[-1])  # latent cell: f voxels
                ls = ls.repeat(f, axis=-2).repeat(f, axis=-1)[..., : shape[-2], : shape[-1]]
                col = np.moveaxis(ls, 0, -1)[env["box"]]
            elif name == "vaecoarse":
                # The encoder's latent mean of the scan at half the in-plane resolution (each
                # latent cell sees twice the context), bilinearly back to voxels.
                from scipy import ndimage

                from napari_latentseg.engine.infer import encode

                img = env["full_image"].astype(np.float32)
                half = ndimage.zoom(img, (1, 0.5, 0.5), order=1)
                mu = encode(env["model"], half, modality=env["modality"]).mu
                shape = img.shape
                up = [ndimage.zoom(m, (1, shape[1] / m.shape[1], shape[2] / m.shape[2]),
                                   order=1)[:, : shape[1], : shape[2]] for m in mu]
                col = np.stack(up, -1)[env["box"]]
            elif name == "dog":
                # Centre-surround contrasts of the normalised image in-plane (sigma 1-8
                # voxels against twice as wide): what the anomaly score on CT gained by.
                from scipy import ndimage

                from napari_latentseg.engine.infer import normalizer_for

                norm = normalizer_for(env["model"], env["image"], env["modality"])[0]
                x = norm(env["image"]).astype(np.float32)
                col = np.stack([ndimage.gaussian_filter(x, (0, s_, s_))
                                - ndimage.gaussian_filter(x, (0, 2 * s_, 2 * s_))
                                for s_ in (1.0, 2.0, 4.0, 8.0)], -1)
            elif name == "vaectx":
                from scipy import ndimage

                v = feats[..., lm.N_MULTISCALE:].astype(np.float32)
                col = np.stack([ndimage.gaussian_filter(v[..., k], (1, 6, 6))
                                for k in range(v.shape[-1])], -1)
            else:
                raise ValueError(f"unknown extra column {name!r}")
            env["extra"][name] = (col.astype(np.float32), time.perf_counter() - t0)
        cols.append(env["extra"][name][0])
        secs += env["extra"][name][1]
    return np.concatenate(cols, -1), secs


def case_env(case: str, data: Path, quick: bool, config: str | None = None,
             **fit_kw) -> dict:
    """The case's scan, truth and VAE (``config``: a preset other than the default;
    ``fit_kw``: fit options other than the default, as ``_interactive.get_model`` takes them)."""
    base = case.split("-")[0]
    image, truth, modality, spacing = ia.load_case(base, data)
    # Segmentation reads the encoder only: VAEs cached before the decoder phase still serve.
    model, fit_s = ia.get_model(base, image, modality, config=config, encoder_only=True,
                                **fit_kw)
    full, box = image, tuple(slice(0, s) for s in image.shape)
    if quick:
        box = ia.crop_box(base, truth)
        image, truth = np.ascontiguousarray(image[box]), np.ascontiguousarray(truth[box])
    evaluate = ia.eval_classes(base, truth)
    if case.endswith("-3class"):  # tumour cases as three classes: air, the tumour, the body
        from napari_latentseg.engine.normalize import foreground_mask

        body = foreground_mask(image, modality)
        truth = np.where(truth == 2, 2, np.where(body, 3, 1)).astype(np.int64)
        evaluate = [2]  # scored on the tumour alone
    classes = sorted(int(c) for c in np.unique(truth))
    radii = {1: 1} if case.endswith("-unequal") else None
    env = {"image": image, "truth": truth, "modality": modality, "spacing": spacing,
           "full_image": full, "box": box,
           "model": model, "fit_s": fit_s, "classes": classes, "radii": radii,
           "eval": evaluate, "first_ann": ia.first_strokes(truth, classes, radii)}
    return env


def run_strokes(method, env: dict, rounds: int) -> dict:
    truth = env["truth"]
    ann = env["first_ann"].copy()
    sr = (ann > 0).astype(np.int64)
    n_strokes = len(env["classes"])
    dices, strokes, secs, where = [], [], [], []
    for r in range(rounds):
        t0 = time.perf_counter()
        res = method(ann, sr)
        secs.append(time.perf_counter() - t0)
        dices.append(ia.dice(res.labels, truth, env["eval"]))
        strokes.append(n_strokes)
        if r == rounds - 1:
            break
        corr = ia.corrective_stroke(res.labels, truth)
        if corr is None:
            break
        ann[corr.stroke] = corr.label
        sr[corr.stroke] = r + 2
        n_strokes += 1
        where.append([corr.z, corr.y, corr.x, corr.label, corr.component_voxels])
    return {"dice": [round(d, 4) for d in dices], "strokes": strokes,
            "seconds": [round(s, 2) for s in secs], "corrections": where,
            **ia.summarise(dices, strokes, secs, method.setup_s + secs[0])}


def run_slices(method, env: dict, rounds: int) -> dict:
    truth = env["truth"]
    ann = np.zeros_like(truth)
    if env["eval"] == [2]:
        z0 = int(np.argmax((truth == 2).reshape(truth.shape[0], -1).sum(1)))
    else:
        z0 = truth.shape[0] // 2
    ia.annotate_slice(ann, truth, 0, z0)
    sr = (ann > 0).astype(np.int64)
    dices, secs, slices = [], [], [[0, z0]]
    for r in range(rounds):
        t0 = time.perf_counter()
        res = method(ann, sr)
        secs.append(time.perf_counter() - t0)
        dices.append(ia.dice(res.labels, truth, env["eval"]))
        if r == rounds - 1:
            break
        sug = res.suggestion or lm.suggest(res.probs, res.classes, ann)
        if sug.get("index") is None:
            break
        ia.annotate_slice(ann, truth, sug["axis"], sug["index"])
        sr[ann > 0] = np.maximum(sr[ann > 0], 1)
        sr[(ann > 0) & (sr == 0)] = r + 2
        slices.append([sug["axis"], sug["index"]])
    n = list(range(1, len(dices) + 1))
    return {"dice": [round(d, 4) for d in dices], "slices": slices,
            "seconds": [round(s, 2) for s in secs],
            **ia.summarise(dices, n, secs, method.setup_s + secs[0])}


def to_markdown(rows: list[dict], info: dict) -> str:
    out = [f"Machine: {info['machine']}; threads: {info['threads']}; "
           f"{'quick (cropped, see crop column)' if info['quick'] else 'full volumes'}; "
           f"{info['rounds']} rounds", ""]
    for proto in ("strokes", "slices"):
        rs = [r for r in rows if r["protocol"] == proto]
        if not rs:
            continue
        unit = "strokes" if proto == "strokes" else "slices"
        out += [f"### Protocol: {proto}", "",
                f"| case | method | AUC (mean Dice) | final | NoC@80 | NoC@90 ({unit}) | "
                "max drop | drops > 0.02 | s / round | first result s | Dice per round |",
                "|---|---|---|---|---|---|---|---|---|---|---|"]
        for r in rs:
            curve = " ".join(f"{d:.2f}" for d in r["dice"])
            name = r["method"] + (f" (seed {r['seed']})" if r.get("seed") else "")
            out.append(f"| {r['case']} | {name} | {r['auc']:.3f} | {r['final']:.3f} | "
                       f"{r['noc80'] or '-'} | {r['noc90'] or '-'} | {r['max_drop']:.3f} | "
                       f"{r['drops_over_002']} | {r['round_s']:.2f} | "
                       f"{r['first_result_s']:.1f} | {curve} |")
        out.append("")
    seeds = sorted({r.get("seed", 0) for r in rows})
    if len(seeds) > 1:
        out += [f"### AUC over seeds {seeds[0]}-{seeds[-1]} (mean ± sd; min-max)", "",
                "| protocol | case | method | AUC | range | max drop (worst seed) |",
                "|---|---|---|---|---|---|"]
        keys = list(dict.fromkeys((r["protocol"], r["case"], r["method"]) for r in rows))
        for k in keys:
            a = [r["auc"] for r in rows if (r["protocol"], r["case"], r["method"]) == k]
            dr = max(r["max_drop"] for r in rows if (r["protocol"], r["case"], r["method"]) == k)
            out.append(f"| {k[0]} | {k[1]} | {k[2]} | {np.mean(a):.3f} ± {np.std(a):.3f} | "
                       f"{min(a):.3f}-{max(a):.3f} | {dr:.3f} |")
        out.append("")
    crops = {r["case"]: r["shape"] for r in rows}
    out.append("Volumes (z, y, x): " + "; ".join(f"{k} {tuple(v)}" for k, v in crops.items()))
    return "\n".join(out) + "\n"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--cases", nargs="+", default=CASES)
    p.add_argument("--methods", nargs="+", default=BASE + ["loop"])
    p.add_argument("--protocols", nargs="+", default=["strokes", "slices"])
    p.add_argument("--rounds", type=int, default=None)
    p.add_argument("--slice-rounds", type=int, default=None)
    p.add_argument("--quick", action="store_true")
    p.add_argument("--data", type=Path, default=ia.DEFAULT_DATA)
    p.add_argument("--out", type=Path, default=HERE / "results")
    p.add_argument("--tag", default="interactive")
    p.add_argument("--seeds", type=int, default=1,
                   help="repeat each run with forest seeds 0..N-1 (curves vary a lot by seed)")
    p.add_argument("--first-seed", type=int, default=0,
                   help="seeds first-seed .. first-seed + seeds - 1 (more seeds for a run)")
    p.add_argument("--config", default=None,
                   help="the VAEs of this preset (or a _psnr_latent.py variant), fitted once "
                        "per case and cached (default: the product's preset)")
    p.add_argument("--fit-steps", type=int, default=None,
                   help="the VAEs fitted with this many steps (cached per case)")
    p.add_argument("--fit-seed", type=int, default=None,
                   help="the VAEs fitted with this seed (cached per case; default 0)")
    p.add_argument("--fit-kl-weight", type=float, default=None,
                   help="the VAEs fitted with this KL weight (cached per case; default 1e-6)")
    args = p.parse_args()
    from napari_latentseg.runtime.device import configure_threads

    configure_threads()
    import platform

    import torch

    rounds = args.rounds or (6 if args.quick else 10)
    slice_rounds = args.slice_rounds or (3 if args.quick else 5)
    info = {"machine": f"{platform.processor() or platform.machine()}",
            "threads": torch.get_num_threads(), "quick": args.quick, "rounds": rounds}
    args.out.mkdir(parents=True, exist_ok=True)
    rows: list[dict] = []
    config = args.config
    if config is not None:  # a preset's name, or one of _psnr_latent.py's variants
        from _psnr_latent import variants

        config = variants().get(config, config)
    fit_kw = {} if args.fit_seed is None else {"seed": args.fit_seed}
    if args.fit_kl_weight is not None:
        fit_kw["kl_weight"] = args.fit_kl_weight
    t_all = time.perf_counter()
    for case in args.cases:
        base = case.split("-")[0]
        if not base.startswith("phantom") and not (args.data / f"{base}_image.nrrd").exists():
            print(f"skipping {case}: {args.data / (base + '_image.nrrd')} not found")
            continue
        env = case_env(case, args.data, args.quick, config=config, steps=args.fit_steps,
                       **fit_kw)
        for proto in args.protocols:
            if proto == "slices" and case.endswith("-unequal"):
                continue
            for method, seed in [(m, s) for m in args.methods
                                 for s in range(args.first_seed,
                                                args.first_seed + args.seeds)]:
                m = build(method, env, args.quick, seed)
                fn = run_strokes if proto == "strokes" else run_slices
                n = rounds if proto == "strokes" else slice_rounds
                if method == "vae-finetune" and args.quick:
                    n = min(n, 2 if proto == "strokes" else 1)  # ~50x a forest round
                r = fn(m, env, n)
                r.update(case=case, method=method, protocol=proto, seed=seed,
                         shape=list(env["truth"].shape))
                rows.append(r)
                print(f"{case} {proto} {method} seed {seed}: AUC {r['auc']:.3f} "
                      f"final {r['final']:.3f} "
                      f"NoC80 {r['noc80']} drop {r['max_drop']:.3f} "
                      f"{r['round_s']:.2f} s/round first {r['first_result_s']:.1f} s | "
                      + " ".join(f"{d:.2f}" for d in r["dice"]), flush=True)
                (args.out / f"{args.tag}.json").write_text(json.dumps(
                    {"info": info, "results": rows}, indent=1))
                (args.out / f"{args.tag}.md").write_text(to_markdown(rows, info))
    print(f"total {time.perf_counter() - t_all:.0f} s")


if __name__ == "__main__":
    main()
