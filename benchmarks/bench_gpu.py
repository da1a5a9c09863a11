"""`make bench-gpu`: fit speed, reconstruction, segmentation and CPU/GPU agreement on a CUDA GPU.

One run, under 8 minutes in all (``--budget``, default 450 s; every fit, reconstruction and
segmentation has its own cap and items that no longer fit in the budget are skipped and listed),
so it can be rerun at once. Mixed precision is on (the default); wall times are taken between
``torch.cuda.synchronize()`` calls and GPU memory is ``torch.cuda.max_memory_allocated`` after
``reset_peak_memory_stats`` (tensors only, not the allocator's cache or the CUDA context).

Sections, in priority order: ``fit`` (the default configuration on brain1 and lung2, whose
models serve below; ``gpu-2d`` and ``gpu-3d`` last, capped, for speed), ``reconstruct`` (lung2
and a synthetic 400x512x512 CT made here, anomaly candidates included as users get them),
``segment`` (a few-shot lung2 round on the largest-tumour slice with a fresh feature cache,
then again with it filled, stage by stage, and again with the forest's trees on the CPU) and
``cpu_vs_gpu`` (the same lung2 model on the CPU: reconstruction difference in normalised
units, Dice between the CPU and GPU labels).

``steps_per_s`` is 1 / the median step time after 5 warm-up steps (sampling, transfer,
forward, backward, optimiser, losses read back). ``time_to_usable_s`` is the fit's elapsed time
(data preparation included) at the first validation whose held-out L1 error is within 1 dB (a
factor 10^(1/20) = 1.122) of the best held-out L1 that fit reached: the fit's own validation
history, every 50 steps by default, so the figure has that granularity.

Targets on a datacenter GPU: brain1 default fit <= 20 s; lung2 cached round <= 1 s;
400x512x512 reconstruction <= 10 s and < 8 GB of GPU memory. Missed targets are reported, not
failures. ``--dry-run`` runs every section on the CPU with tiny synthetic data and models
(seconds) to check the script's code paths.

Usage: ``python benchmarks/bench_gpu.py [--data DIR] [--out bench_gpu.json] [--dry-run]``.
Exit codes: 0 done, 1 a section raised (see ``errors``), 2 no CUDA GPU, 3 no data.
"""

from __future__ import annotations

import argparse
import copy
import json
import sys
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))  # the helpers beside it, also when loaded by file (the tests)
from _gpu_helpers import (  # noqa: E402
    DATA_ENV,
    Budget,
    Clock,
    capped,
    default_data,
    dice,
    load_cases,
    machine,
    synthetic_ct,
    warm_up,
)

EXIT_NO_CUDA, EXIT_NO_DATA = 2, 3
BIG_SHAPE = (400, 512, 512)
USABLE_DB = 1.0
CONFIGS = ("default", "gpu-2d", "gpu-3d")
TINY = {"default": "tiny", "gpu-2d": "tiny", "gpu-3d": "tiny-3d"}  # --dry-run stand-ins
TARGETS = [  # (name, section path, key, limit, comparison)
    ("brain1 default fit s", ("fit", "brain1", "default"), "wall_s", 20.0, "<="),
    ("lung2 segmentation round, features cached, s", ("segment", "lung2", "cached"),
     "wall_s", 1.0, "<="),
    ("400x512x512 reconstruction s", ("reconstruct", "synthetic"), "wall_s", 10.0, "<="),
    ("400x512x512 reconstruction peak GPU MiB (8 GB)", ("reconstruct", "synthetic"),
     "peak_gpu_mb", 8e9 / 2**20, "<"),
]


class Bench:
    """Runs the sections and keeps the results (written after every section)."""

    def __init__(self, args: argparse.Namespace, cuda: bool, t0: float) -> None:
        self.args, self.dry = args, args.dry_run
        self.dev = "cpu" if self.dry else args.device
        # Synchronise and read GPU memory only when the GPU is what is measured.
        self.cuda = cuda and self.dev == "cuda"
        self.budget = Budget(args.budget, t0)
        self.models: dict = {}
        self.kept: dict = {}  # GPU outputs reused by the CPU comparison
        self.res: dict = {
            "dry_run": self.dry, "device": self.dev, "budget_s": args.budget,
            "machine": machine(self.cuda),
            "definitions": {
                "steps_per_s": "1 / median step time after 5 warm-up steps",
                "time_to_usable_s": f"fit elapsed time at the first validation with held-out "
                                    f"L1 within {USABLE_DB:g} dB of the fit's best held-out L1",
                "wall_s": "wall time between torch.cuda.synchronize() calls",
                "peak_gpu_mb": "torch.cuda.max_memory_allocated after reset_peak_memory_stats",
                "recon_diff_norm": "|GPU - CPU| reconstruction in normalised units",
            },
            "fit": {}, "reconstruct": {}, "segment": {}, "cpu_vs_gpu": {},
            "targets": [], "skipped": [], "errors": [],
        }

    # ------------------------------------------------------------------ helpers
    def save(self) -> None:
        self.res["total_s"] = round(self.args.budget - self.budget.left(), 1)
        self.args.out.write_text(json.dumps(self.res, indent=2))

    def item(self, path: tuple[str, ...], need_s: float, fn) -> dict | None:
        """Run ``fn()`` into ``res[path]`` unless the budget is short; errors are kept."""
        label = "/".join(path)
        if self.budget.left() < need_s:
            self.res["skipped"].append(f"{label}: {self.budget.left():.0f} s left of the "
                                       f"budget, {need_s:.0f} s needed")
            print(f"  skip {label} (budget)", flush=True)
            return None
        where = self.res
        for key in path[:-1]:
            where = where.setdefault(key, {})
        print(f"  {label} ...", flush=True)
        try:
            out = fn()
        except Exception as exc:  # one failed item must not lose the others
            import torch

            if self.cuda:
                torch.cuda.empty_cache()
            msg = f"{type(exc).__name__}: {(str(exc).splitlines() or [''])[0]}"
            where[path[-1]] = {"error": msg}
            self.res["errors"].append(f"{label}: {msg}")
            print(f"    error: {msg}", flush=True)
            return None
        where[path[-1]] = out
        print(f"    {json.dumps({k: v for k, v in out.items() if not isinstance(v, list)})}",
              flush=True)
        self.save()
        return out

    def cap(self, want: float) -> float:
        return max(5.0, min(want, self.budget.left() - 20))

    # ------------------------------------------------------------------ sections
    def fit(self, name: str, image, modality, config: str, cap_s: float) -> dict:
        from napari_latentseg.engine.train import FitOptions, fit
        from napari_latentseg.models.config import DEFAULT_CONFIG

        extra = {"steps": 4, "eval_every": 2, "patience": 0} if self.dry else {}
        cfg = TINY[config] if self.dry else (DEFAULT_CONFIG if config == "default" else config)
        opts = FitOptions(device=self.dev, amp=True, minutes=cap_s / 60, **extra)
        with Clock(self.cuda) as c:
            res = fit(image, cfg, opts, modalities=[modality], sources=[name])
        # The main fit's steps (the decoder phase's are cheaper; counted apart below).
        times = [h["step_time"] for h in res.history
                 if "step_time" in h and h.get("phase") != "decoder"]
        steady = times[5:] or times
        vals = [h for h in res.history if "val" in h]
        limit = res.best_val * 10 ** (USABLE_DB / 20)
        usable = next((h for h in vals if h["val"] <= limit), None)
        self.models[(name, config)] = res.model
        return {
            "config": cfg, "wall_s": round(c.s, 2), "steps": res.steps,
            "stop_reason": res.reason, "cap_s": round(cap_s, 1),
            "decoder_steps": res.decoder_steps,
            "steps_per_s": round(1 / float(np.median(steady)), 2) if steady else None,
            "overall_steps_per_s": round(res.steps / c.s, 2),
            "first_step_s": round(times[0], 3) if times else None,
            "best_val_l1": round(res.best_val, 5),
            "time_to_usable_s": round(usable["elapsed"], 2) if usable else None,
            "steps_to_usable": usable["step"] if usable else None,
            "val_history": [[h["step"], round(h["elapsed"], 2), round(h["val"], 5)]
                            for h in vals],
            "peak_gpu_mb": c.peak_mb,
        }

    def reconstruct(self, model, image, modality, cap_s: float, keep: str | None = None
                    ) -> dict:
        from napari_latentseg.engine.infer import reconstruct
        from napari_latentseg.runtime.progress import Cancelled

        ev, timer = capped(cap_s)
        try:
            with Clock(self.cuda) as c:
                rec = reconstruct(model, image, modality=modality, stop_event=ev)
        except Cancelled:
            raise TimeoutError(f"not finished within its {cap_s:.0f} s cap") from None
        finally:
            timer.cancel()
        if keep:
            self.kept[keep] = rec
        return {"config": model.config.name, "shape": list(image.shape),
                "wall_s": round(c.s, 2), "voxels_per_s": round(image.size / c.s),
                "anomaly_candidates": rec.n_candidates, "peak_gpu_mb": c.peak_mb,
                "device": rec.info["device"]}

    def segment(self, model, image, modality, ann, truth, cache, cap_s: float,
                keep: str | None = None, cpu_trees: bool = False) -> dict:
        """One few-shot round, timed stage by stage (``stages_s``: wall time from one
        progress report to the next, named by the earlier one: ``start`` the checks and the
        cache's key, ``features`` the cache's filling and the training set, ``forest`` the
        forests' fit, ``predict`` every voxel's probabilities, ``reach`` the geodesic reach
        and momentum, ``labels`` the labels, connectivity, edge step, uncertainty and next
        slice). ``cpu_trees``: the forest predicts on the CPU (the ablation of
        ``gpu_forest``)."""
        from napari_latentseg.engine.segment import gpu_forest, segment_iter
        from napari_latentseg.runtime.progress import Cancelled

        ev, timer = capped(cap_s)
        saved = gpu_forest.GPU_FOREST
        gpu_forest.GPU_FOREST = not cpu_trees
        stages: dict[str, float] = {}
        try:
            with Clock(self.cuda) as c:
                it = segment_iter(model, image, ann, modality=modality, cache=cache,
                                  stop_event=ev)
                stage, last = "start", time.perf_counter()
                while True:
                    try:
                        msg = next(it)
                    except StopIteration as done:
                        res = done.value
                        break
                    now = time.perf_counter()
                    stages[stage] = stages.get(stage, 0.0) + now - last
                    stage, last = msg.get("stage", stage), now
                stages[stage] = stages.get(stage, 0.0) + time.perf_counter() - last
        except Cancelled:
            raise TimeoutError(f"not finished within its {cap_s:.0f} s cap") from None
        finally:
            gpu_forest.GPU_FOREST = saved
            timer.cancel()
        if keep:
            self.kept[keep] = res.labels
        held = ~ann.reshape(ann.shape[0], -1).any(1)
        classes = [c_ for c_ in res.classes if c_ != 1]
        out = {"wall_s": round(c.s, 2), "cache_hit": res.cache_hit,
               "dice_vs_truth_unannotated": dice(res.labels[held], truth[held], classes),
               "peak_gpu_mb": c.peak_mb,
               "stages_s": {k.removeprefix("segment: "): round(v, 3)
                            for k, v in stages.items()}}
        if cpu_trees and "seg_cached" in self.kept:
            out["labels_equal_gpu_forest_fraction"] = round(
                float((self.kept["seg_cached"] == res.labels).mean()), 6)
        return out

    def run(self, cases: dict) -> None:
        r = self.res
        default_cap = 60.0 if not self.dry else 30.0
        print("fit (default configuration)", flush=True)
        for name, (img, _, mod) in cases.items():
            self.item(("fit", name, "default"), 30,
                      lambda img=img, mod=mod, name=name: self.fit(
                          name, img, mod, "default", self.cap(default_cap)))
        ref = "lung2" if ("lung2", "default") in self.models else next(
            (n for n, c in self.models if c == "default"), None)
        print("reconstruct", flush=True)
        ann = None
        big = synthetic_ct((8, 64, 64) if self.dry else BIG_SHAPE)
        if ref is not None:
            model = self.models[(ref, "default")]
            img, truth, mod = cases[ref]
            self.item(("reconstruct", ref), 20, lambda: self.reconstruct(
                model, img, mod, self.cap(60), keep="rec"))
            self.item(("reconstruct", "synthetic"), 40, lambda: self.reconstruct(
                model, big, "CT", self.cap(90)))
            print("segment", flush=True)
            if truth is not None:
                from napari_latentseg.engine.segment import FeatureCache

                area = (truth == 2).reshape(truth.shape[0], -1).sum(1)
                ann = np.zeros_like(truth)
                z = int(np.argmax(area))
                ann[z] = truth[z]
                cache = FeatureCache()
                r["segment"][ref] = {"annotated_slice": z}
                self.item(("segment", ref, "uncached"), 20, lambda: self.segment(
                    model, img, mod, ann, truth, cache, self.cap(90), keep="seg"))
                self.item(("segment", ref, "cached"), 10, lambda: self.segment(
                    model, img, mod, ann, truth, cache, self.cap(60), keep="seg_cached"))
                # The same round with the trees on the CPU (as before session 39).
                self.item(("segment", ref, "cached_cpu_trees"), 10, lambda: self.segment(
                    model, img, mod, ann, truth, cache, self.cap(60), cpu_trees=True))
            print("cpu_vs_gpu", flush=True)
            self.compare(model, img, mod, truth, ann, ref)
        else:
            r["skipped"].append("reconstruct, segment, cpu_vs_gpu: no default model")
        print("fit (gpu-2d, gpu-3d) and their reconstruction", flush=True)
        for config in CONFIGS[1:]:
            for name, (img, _, mod) in cases.items():
                self.item(("fit", name, config), 35, lambda img=img, mod=mod, name=name,
                          config=config: self.fit(name, img, mod, config, self.cap(25)))
            model = self.models.get((ref, config))
            if model is not None:
                img, _, mod = cases[ref]
                self.item(("reconstruct", f"{ref} {config}"), 20,
                          lambda model=model, img=img, mod=mod: self.reconstruct(
                              model, img, mod, self.cap(40)))
                # The large case last, only with time to spare (a minute or more on a GPU).
                self.item(("reconstruct", f"synthetic {config}"), 90,
                          lambda model=model: self.reconstruct(model, big, "CT", self.cap(60)))
            for key in [k for k in self.models if k[1] == config]:
                self.models[key].to("cpu")  # frees the GPU for the next configuration

    def compare(self, model, img, mod, truth, ann, ref: str) -> None:
        """The same model on the CPU: reconstruction difference and label agreement."""
        from napari_latentseg.engine.normalize import Normalizer

        self.res["cpu_vs_gpu"]["case"] = ref
        if "rec" not in self.kept:
            self.res["skipped"].append("cpu_vs_gpu: no GPU reconstruction to compare")
            return
        cpu_model = copy.deepcopy(model).to("cpu")
        gpu_rec = self.kept["rec"]
        saved_cuda, self.cuda = self.cuda, False  # CPU timings: no device syncs

        def recon() -> dict:
            m = self.reconstruct(cpu_model, img, mod, self.cap(90), keep="cpu_rec")
            cpu_rec = self.kept.pop("cpu_rec")
            norm = Normalizer.from_dict(gpu_rec.info["normalization"])
            d = np.abs(norm(gpu_rec.reconstruction) - norm(cpu_rec.reconstruction))
            m.update(recon_diff_norm_mean=float(d.mean()),
                     recon_diff_norm_p99=float(np.percentile(d, 99)),
                     recon_diff_norm_max=float(d.max()),
                     error_map_diff_max=float(np.abs(gpu_rec.error - cpu_rec.error).max()),
                     anomaly_candidates_gpu=gpu_rec.n_candidates)
            if gpu_rec.anomalies is not None and cpu_rec.anomalies is not None:
                m["anomaly_mask_dice"] = dice(gpu_rec.anomalies > 0, cpu_rec.anomalies > 0,
                                              [True])["1"]
            return m

        def seg() -> dict:
            m = self.segment(cpu_model, img, mod, ann, truth, None, self.cap(120),
                             keep="cpu_seg")
            a, b = self.kept["seg"], self.kept.pop("cpu_seg")
            m.update(labels_dice_gpu_vs_cpu=dice(a, b, np.unique(truth)),
                     labels_equal_fraction=round(float((a == b).mean()), 5))
            return m

        try:
            self.item(("cpu_vs_gpu", "reconstruction"), 30, recon)
            if ann is not None and "seg" in self.kept:
                self.item(("cpu_vs_gpu", "segmentation"), 40, seg)
        finally:
            self.cuda = saved_cuda

    def targets(self) -> None:
        for name, path, key, limit, op in TARGETS:
            node = self.res
            for p in path:
                node = node.get(p, {}) if isinstance(node, dict) else {}
            value = node.get(key) if isinstance(node, dict) else None
            met = None
            if value is not None and self.cuda:  # GPU targets: not judged on the CPU
                met = value <= limit if op == "<=" else value < limit
            self.res["targets"].append({"name": name, "limit": f"{op} {limit:g}",
                                        "value": value, "met": met})


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", type=Path, default=None,
                   help=f"pyradiomics scans (default: ${DATA_ENV} or shared/data/pyradiomics)")
    p.add_argument("--out", type=Path, default=Path("bench_gpu.json"))
    p.add_argument("--budget", type=float, default=None,
                   help="seconds for the whole run (default 450; 300 with --dry-run, which "
                   "needs far less, but a shared CPU can be slow)")
    p.add_argument("--dry-run", action="store_true",
                   help="every section on the CPU with tiny synthetic data (checks the script)")
    p.add_argument("--device", choices=["cuda", "cpu"], default="cuda",
                   help="cpu: the full-size run on the CPU (slow; for checking the script)")
    args = p.parse_args(argv)
    t0 = time.perf_counter()
    import torch

    cuda = torch.cuda.is_available()
    if not cuda and not args.dry_run and args.device == "cuda":
        print(f"bench_gpu: no CUDA GPU available (torch {torch.__version__}, CUDA build "
              f"{torch.version.cuda or 'none'}); this benchmark needs a CUDA machine "
              "(use --dry-run to check the script on the CPU)", file=sys.stderr)
        return EXIT_NO_CUDA
    if args.budget is None:
        args.budget = 300.0 if args.dry_run else 450.0
    data = args.data or default_data()
    cases = load_cases(data, args.dry_run)
    if not cases:
        print(f"bench_gpu: no brain1/lung2 scans in {data}; pass --data DIR or set "
              f"${DATA_ENV}", file=sys.stderr)
        return EXIT_NO_DATA
    from napari_latentseg.runtime.device import configure_threads

    configure_threads()
    bench = Bench(args, cuda, t0)
    bench.res["data"] = "synthetic (dry run)" if args.dry_run else str(data)
    missing = {"brain1", "lung2"} - set(cases)
    if missing:
        bench.res["skipped"].append(f"cases not found in {data}: {sorted(missing)}")
    print(f"bench_gpu on {bench.dev} ({bench.res['machine'].get('gpu', 'CPU')}), budget "
          f"{args.budget:.0f} s{' (dry run)' if args.dry_run else ''}", flush=True)
    bench.res["warmup_s"] = round(warm_up(bench.cuda), 2)
    bench.run(cases)
    bench.targets()
    bench.save()
    print(f"\nwrote {args.out} in {bench.res['total_s']} s")
    for t in bench.res["targets"]:
        verdict = {True: "met", False: "MISSED", None: "n/a"}[t["met"]]
        print(f"  {t['name']}: {t['value']} (target {t['limit']}): {verdict}")
    for s in bench.res["skipped"]:
        print(f"  skipped: {s}")
    return 1 if bench.res["errors"] else 0


if __name__ == "__main__":
    sys.exit(main())
