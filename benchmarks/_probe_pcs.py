"""Probe: how many principal components of the VAE encoder the forest should see.

The default's forest columns are the ilastik set (20), the VAE latent mean (4 for cpu-2d) and
the top ``forest._ENCODER_PCS`` = 4 principal components of the encoder's hypercolumn (112
channels for cpu-2d). Four components keep a small share of what the encoder computed; this
probe recomputes the engine's features with more components (patching the engine for each
feature pass) and runs the default's loop (``pu-adapt-sqrt1``, which the engine reproduces
round for round) on them, next to the ablation without VAE columns, in one run, same seeds.
``--config cpu-2.5d`` fits (once, cached beside the benchmark's VAEs) and uses a VAE of another
preset instead: the 2.5D one sees the neighbouring slices, context the in-plane filters lack.

Usage: ``LATENTSEG_NUM_THREADS=1 OMP_NUM_THREADS=1 PYTHONPATH=src python
benchmarks/_probe_pcs.py [--pcs 4 12] [--cases ...] [--seeds 2] [--rounds 10] [--quick]
[--config NAME] [--lr X] [--schedule S] [--fit-seed N] [--tag T]``; writes
``benchmarks/results/probe-pcs{T}.json`` / ``.md``.
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
import _proto  # noqa: E402
import bench_interactive as bi  # noqa: E402


def main() -> None:
    import napari_latentseg.engine.segment.forest as forest

    p = argparse.ArgumentParser()
    p.add_argument("--pcs", nargs="+", type=int, default=[4, 12])
    p.add_argument("--cases", nargs="+", default=["breast1", "brain1", "brain2",
                                                   "brain1-unequal"])
    p.add_argument("--seeds", type=int, default=2)
    p.add_argument("--first-seed", type=int, default=0,
                   help="seeds first-seed .. first-seed + seeds - 1 (more seeds for a run)")
    p.add_argument("--rounds", type=int, default=10)
    p.add_argument("--quick", action="store_true")
    p.add_argument("--tag", default="")
    p.add_argument("--config", default=None, help="VAE preset (default: the benchmark's)")
    p.add_argument("--lr", type=float, default=None,
                   help="the VAE fitted with this peak learning rate (cached per case)")
    p.add_argument("--schedule", default=None,
                   help="the VAE fitted with this learning-rate schedule (cache name)")
    p.add_argument("--fit-seed", type=int, default=None,
                   help="the VAE fitted with this seed (default: the fit's default, 0)")
    p.add_argument("--proto", nargs="*", default=[],
                   help="prototype-column variants SOURCE:METRIC on the default's pcs "
                        "(vae:euclid, vae:diag, ilastik:euclid, all:euclid; _proto.py); more "
                        "fields: ':novae' drops the VAE columns (the ablation with prototypes), "
                        "':obj' keeps the object's column alone in two-class rounds")
    p.add_argument("--no-base", action="store_true",
                   help="skip the plain pcs variants (measured in another run)")
    p.add_argument("--no-ablation", action="store_true",
                   help="skip the run without VAE columns (measured in another run)")
    p.add_argument("--out", type=Path, default=HERE / "results")
    a = p.parse_args()
    base_opts = bi.LOOPS["pu-adapt-sqrt1"]
    rows, t_all = [], time.perf_counter()
    name = a.out / f"probe-pcs{a.tag}"
    default_pcs = forest._ENCODER_PCS
    for case in a.cases:
        fit_kw = {k: v for k, v in (("lr", a.lr), ("schedule", a.schedule),
                                    ("seed", a.fit_seed)) if v is not None}
        env = bi.case_env(case, ia.DEFAULT_DATA, a.quick, config=a.config, **fit_kw)
        runs = [] if a.no_ablation else [("novae", None, None)]
        runs += [] if a.no_base else [(f"pcs{k}", k, None) for k in a.pcs]
        runs += [(f"proto-{v.replace(':', '-')}", a.pcs[0], v) for v in a.proto]
        for label, k, proto in runs:
            if env.get("feats_pcs", -1) != k:  # recompute the engine's features with k PCs
                forest._ENCODER_PCS = default_pcs if k is None else k
                env.pop("feats", None)
                feats, feat_s, _ = bi.env_features(env)
                forest._ENCODER_PCS = default_pcs
                env["feats_pcs"] = k
            for seed in range(a.first_seed, a.first_seed + a.seeds):
                flags = (proto or "").split(":")[2:]
                novae = k is None or "novae" in flags
                opts = dataclasses.replace(base_opts, seed=seed, vae=not novae)
                if proto:
                    source, metric = proto.split(":")[:2]
                    m = _proto.ProtoLoop(feats, env["spacing"], opts, feat_s, source, metric,
                                         object_only="obj" in flags)
                else:
                    m = lm.ForestLoop(feats, env["spacing"], opts, feat_s)
                r = bi.run_strokes(m, env, a.rounds)
                r.update(case=case, method=label, seed=seed, protocol="strokes",
                         n_features=int(m.feats.shape[-1]), features_s=round(feat_s, 1))
                rows.append(r)
                print(f"{case} {label} seed {seed}: AUC {r['auc']:.3f} drop "
                      f"{r['max_drop']:.3f} final {r['final']:.3f} {r['round_s']:.2f} s/round | "
                      + " ".join(f"{d:.2f}" for d in r["dice"]), flush=True)
                name.with_suffix(".json").write_text(json.dumps(
                    {"rows": rows, "seconds": round(time.perf_counter() - t_all, 1)}, indent=1))
    name.with_suffix(".md").write_text(markdown(rows))
    print(markdown(rows))


def markdown(rows: list[dict]) -> str:
    """AUC (seed mean) per case and variant, the mean over cases and the worst drop."""
    cases = list(dict.fromkeys(r["case"] for r in rows))
    labels = list(dict.fromkeys(r["method"] for r in rows))
    out = ["| columns | " + " | ".join(cases) + " | mean | worst drop | s / round |",
           "|---|" + "---|" * (len(cases) + 3)]
    for lab in labels:
        rs = [r for r in rows if r["method"] == lab]
        aucs = [np.mean([r["auc"] for r in rs if r["case"] == c]) for c in cases]
        out.append(f"| {lab} | " + " | ".join(f"{x:.3f}" for x in aucs)
                   + f" | {np.mean(aucs):.3f} | {max(r['max_drop'] for r in rs):.2f} | "
                   f"{np.median([r['round_s'] for r in rs]):.2f} |")
    return "\n".join(out) + "\n"


if __name__ == "__main__":
    main()
