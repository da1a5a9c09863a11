"""Probe: a seed ensemble of the self-mode denoiser on thick slices (session 58, issue #14).

On near-isotropic scans self mode fits the denoiser three times and keeps what every fit
finds (``anomaly_residual.consensus``, sessions 43-44). Thick slices (the brains' 6.5 mm, the
4 mm phantom) fit it once, and one fit's map moves with its seed (session 52: up to 0.17 best
Dice on a case; brain2's far flags 0.087 % at seed 0, 0.101 % at seed 1).

``fit SEEDS CASE...`` fits the denoiser once per case and seed (the engine's recipe, one
process per call), saves the single-fit score as the engine makes it (mirrored findings
lowered on the denoiser's grid) and the score before that lowering, and prints the engine's
own row for the single fit. ``combo SETS CASE...`` scores the saved fits together: their
voxel-wise minimum (``min``) or mean (``mean``), normalised per slice again and lowered
where mirrored, as the thin-slice path combines its fits; then the engine's finish,
calibration and candidates (``anomaly_map`` with the denoiser's raw score replaced). SETS:
seed groups joined by ``+``, e.g. ``0+1+0,1`` (a group of one replays that fit alone).

``--views x,xy,d8`` (fit) also saves each fit's score read through flipped copies of every
slice (``x``: the last axis, left to right on these heads; ``xy``: both in-plane axes;
``d8``: and transposed), the snapshots' outputs flipped back and averaged before the
residual (session 59: test-time flips against the seed's swing; not kept); ``combo --view
V`` replays those. ``--flip-crops`` (fit) flips half of every training batch left to right,
so that the mirrored reading is a view the net was fitted on.

One JSON line per case and variant on stdout: best Dice, AUPRC, Dice of the candidates at
the threshold, % of the head flagged more than 20 mm from every lesion (``fp_pct_far``).

Usage::

    LATENTSEG_NUM_THREADS=1 python benchmarks/_dae_seeds.py fit 0,1 brain1-tumour phantom
    LATENTSEG_NUM_THREADS=1 python benchmarks/_dae_seeds.py combo 0+1+0,1 brain1-tumour
"""

from __future__ import annotations

import argparse
import fnmatch
import json
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
HOWS = ("min", "mean")
#: In-plane views of a slice: (transpose, flip y, flip x).
VIEWS = {"x": ((0, 0, 0), (0, 0, 1)),
         "xy": ((0, 0, 0), (0, 1, 0), (0, 0, 1), (0, 1, 1))}
VIEWS["d8"] = VIEWS["xy"] + tuple((1, fy, fx) for _, fy, fx in VIEWS["xy"])


def _viewed(net, views):
    """``net`` reading every view in ``views`` of its input, outputs mapped back, averaged."""
    import torch

    class Viewed(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.net = net

        def forward(self, x):
            acc = 0
            for t, fy, fx in views:
                dims = [d for d, f in ((-2, fy), (-1, fx)) if f]
                v = x.transpose(-1, -2) if t else x
                o = self.net(torch.flip(v, dims) if dims else v)
                o = torch.flip(o, dims) if dims else o
                acc = acc + (o.transpose(-1, -2) if t else o)
            return acc / len(views)

    return Viewed().eval()


def _key(kind: str, view: str) -> str:
    return kind if view == "plain" else f"{kind}_{view}"


def _row(c: dict, res, label: str, secs: float) -> dict:
    from _anomaly_cases import away_from_lesions, case_masks
    from _anomaly_metrics import curve_metrics, dice

    truth = c["truth"]
    mask, smask, _ = case_masks(c)
    away = away_from_lesions(c, mask)
    bd, ap = curve_metrics(res.score, truth, smask)
    out = {"case": c["name"], "variant": label, "best_dice": bd, "auprc": ap,
           "dice_at_threshold": dice(res.labels > 0, truth & smask),
           "n_candidates": len(res.candidates), "seconds": round(secs, 1)}
    if away.any():
        out["fp_pct_far"] = float(100 * (res.labels[away] > 0).mean())
    return out


def _flipping(batch_fn, seed: int):
    """``noisy_batch`` with half of each batch flipped along the last axis (by a generator of
    its own: the fit's random stream is left as it is)."""
    import torch

    flips = np.random.default_rng(10_000 + seed)

    def flipped(*args, **kwargs):
        out = batch_fn(*args, **kwargs)
        pick = torch.from_numpy(flips.random(len(out[0])) < 0.5)
        return tuple(torch.where(pick[:, None, None, None], t.flip(-1), t) for t in out)

    return flipped


def _fit(c: dict, seed: int, path: Path, views: tuple = (), flip_crops: bool = False) -> dict:
    """The engine's self-mode map of case ``c`` with the denoiser's seed ``seed``, saving
    the fit's scores to ``path`` on the way."""
    from napari_latentseg.engine import anomaly_dae as ad
    from napari_latentseg.engine.anomaly import anomaly_map

    def recording(x, mask, *, spacing=None, steps=None, seed=0, device="cpu",
                  lower_symmetric=True, stop_event=None):
        if len(ad.planes(spacing, np.shape(x))) != 1:
            raise ValueError(f"{c['name']}: thick slices only (near-isotropic scans fit "
                             f"{ad.DAE_FITS_THIN} times already)")
        nets = yield from ad.fit_dae_iter([(x, mask, spacing)], steps=steps, seed=seed,
                                          device=device, stop_event=stop_event)
        plain = yield from ad.dae_score_iter(nets, x, mask, spacing=spacing, device=device,
                                             lower_symmetric=False)
        engine = yield from ad.dae_score_iter(nets, x, mask, spacing=spacing, device=device,
                                              lower_symmetric=lower_symmetric)
        arrays = {"nosym": plain, "engine": engine}
        for v in views:
            viewed = [_viewed(n, VIEWS[v]) for n in nets]
            for kind, sym in (("nosym", False), ("engine", lower_symmetric)):
                arrays[_key(kind, v)] = yield from ad.dae_score_iter(
                    viewed, x, mask, spacing=spacing, device=device, lower_symmetric=sym)
        np.savez_compressed(path, **arrays)
        return engine

    saved, batches = ad.dae_raw_iter, ad.noisy_batch
    ad.dae_raw_iter = recording
    if flip_crops:
        ad.noisy_batch = _flipping(batches, seed)
    try:
        t = time.perf_counter()
        res = anomaly_map(None, c["v"], modality=c["mod"], spacing=c["sp"], error_map=False,
                          seed=seed)
        return _row(c, res, f"single {seed}", time.perf_counter() - t)
    finally:
        ad.dae_raw_iter, ad.noisy_batch = saved, batches


def _combo(c: dict, files: list[Path], how: str, label: str, view: str = "plain") -> dict:
    """The engine's map of ``c`` with the saved fits ``files`` combined by ``how``."""
    from napari_latentseg.engine import anomaly_dae as ad
    from napari_latentseg.engine.anomaly import anomaly_map

    def combined(x, mask, *, spacing=None, steps=None, seed=0, device="cpu",
                 lower_symmetric=True, stop_event=None):
        yield {"stage": "anomaly: saved fits", "done": 0, "total": 1}
        if len(files) == 1:
            return np.load(files[0])[_key("engine", view)]
        scores = [np.load(f)[_key("nosym", view)] for f in files]
        joined = ad.consensus(scores) if how == "min" else np.mean(scores, axis=0)
        total = ad.slice_normalise(joined, mask)
        if lower_symmetric:
            total = yield from ad._lower_symmetric(total, x, mask, spacing)
        return total

    saved = ad.dae_raw_iter
    ad.dae_raw_iter = combined
    try:
        t = time.perf_counter()
        res = anomaly_map(None, c["v"], modality=c["mod"], spacing=c["sp"], error_map=False)
        return _row(c, res, label, time.perf_counter() - t)
    finally:
        ad.dae_raw_iter = saved


def main(argv: list[str] | None = None) -> None:
    from _anomaly_cases import build_cases

    from napari_latentseg.runtime.device import configure_threads

    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("mode", choices=("fit", "combo"))
    ap.add_argument("seeds", help="fit: 0,1; combo: groups joined by '+', e.g. 0+1+0,1")
    ap.add_argument("cases", nargs="+", help="case names or patterns of bench_anomaly")
    ap.add_argument("--maps", type=Path, default=Path("/tmp/latentseg-dae-seeds"),
                    help="folder of the saved fits")
    ap.add_argument("--views", default="", help="fit: also save these test-time views "
                    f"({', '.join(VIEWS)}), comma-separated")
    ap.add_argument("--flip-crops", action="store_true",
                    help="fit: flip half of every training batch left to right (give it a "
                    "--maps folder of its own: saved fits are named by case and seed)")
    ap.add_argument("--view", default="plain", choices=("plain", *VIEWS),
                    help="combo: the saved view to replay")
    a = ap.parse_args(argv)
    views = tuple(v for v in a.views.split(",") if v)
    if set(views) - set(VIEWS):
        ap.error(f"--views: choose from {', '.join(VIEWS)}")
    configure_threads()
    a.maps.mkdir(parents=True, exist_ok=True)
    cases = [c for c in build_cases(False)[0]
             if any(fnmatch.fnmatch(c["name"], p) for p in a.cases)]
    for c in cases:
        if a.mode == "fit":
            for seed in (int(s) for s in a.seeds.split(",")):
                path = a.maps / f"{c['name']}_s{seed}.npz"
                if not path.exists():
                    print(json.dumps(_fit(c, seed, path, views, a.flip_crops)), flush=True)
            continue
        for group in a.seeds.split("+"):
            seeds = [int(s) for s in group.split(",")]
            files = [a.maps / f"{c['name']}_s{s}.npz" for s in seeds]
            if not all(f.exists() for f in files):
                print(f"# {c['name']}: fit seeds {group} first", flush=True)
                continue
            for how in HOWS[:1] if len(seeds) == 1 else HOWS:
                label = f"single {group}" if len(seeds) == 1 else f"{how} {group}"
                if a.view != "plain":
                    label += f" view {a.view}"
                print(json.dumps(_combo(c, files, how, label, a.view)), flush=True)


if __name__ == "__main__":
    import sys

    sys.path.insert(0, str(HERE))
    main()
