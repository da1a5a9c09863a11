"""The correction loop, simulated: annotate the suggested slice, run the next round.

What fine-tuning and the "next slice to annotate" suggestion are for. A simulated user starts
from one annotated axial slice (the largest tumour area; the middle slice for the phantom) and,
after each round, annotates the slice the round suggests (in whatever orientation it names)
with the ground truth. Two strategies over the same number of rounds:

- ``fewshot``: the default forest round each time, on the growing annotations;
- ``finetune``: each round fine-tunes (60 steps) starting from the previous round's model, as
  the dock and ``latentseg segment --finetune-steps 60 --save-model`` do.

Dice is measured on the voxels never annotated. Uses the models fitted by
``bench_segment.py`` (``benchmarks/results/models``), fitting one if missing.

Usage: ``python benchmarks/bench_loop.py [--cases phantom brain1 lung1 lung2] [--rounds 4]``
Writes ``benchmarks/results/loop.json`` and ``loop.md``.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from bench_engine import DEFAULT_DATA, machine  # noqa: E402
from bench_segment import (  # noqa: E402
    FINETUNE_STEPS,
    available_cases,
    choose_slices,
    dice_scores,
    get_model,
    load_case,
    peak_rss_mb,
)


def annotate_slice(ann: np.ndarray, truth: np.ndarray, axis: int, index: int) -> None:
    """The simulated user labels every voxel of one slice (in place on the bench's copy)."""
    sl = [slice(None)] * truth.ndim
    sl[axis] = index
    ann[tuple(sl)] = truth[tuple(sl)]


def run_loop(name: str, data: Path, models_dir: Path, strategy: str, rounds: int) -> list[dict]:
    from napari_latentseg.engine.segment import FeatureCache, segment

    img, truth, modality = load_case(name, data)
    phantom = name == "phantom"
    model, _ = get_model(name, img, modality, models_dir)
    classes = sorted(int(c) for c in np.unique(truth))
    ann = np.zeros_like(truth)
    for z in choose_slices(truth, 1, phantom):
        annotate_slice(ann, truth, 0, z)
    cache = FeatureCache()
    rows = []
    current = model
    for r in range(1, rounds + 1):
        t0 = time.perf_counter()
        if strategy == "fewshot":
            res = segment(model, img.data, ann, modality=modality, cache=cache)
        else:
            res = segment(current, img.data, ann, modality=modality, cache=cache,
                          finetune_steps=FINETUNE_STEPS)
            current = res.model
        secs = time.perf_counter() - t0
        d = dice_scores(res.labels, truth, classes, ann == 0, phantom)
        vals = [v for v in d.values() if np.isfinite(v)]
        sug = res.suggestion
        row = {"case": name, "strategy": strategy, "round": r,
               "annotated_voxels": int((ann > 0).sum()),
               "mean_dice": round(float(np.mean(vals)), 4) if vals else None,
               "seconds": round(secs, 1), "suggestion": [sug["axis"], sug["index"]],
               "peak_rss_mb": round(peak_rss_mb())}
        rows.append(row)
        print(f"{name} {strategy} round {r}: Dice {row['mean_dice']} in {secs:.1f} s; next: "
              f"axis {sug['axis']} slice {sug['index']}", flush=True)
        if sug["index"] is None:
            break
        annotate_slice(ann, truth, sug["axis"], sug["index"])
    return rows


def to_markdown(rows: list[dict], info: dict) -> str:
    lines = [f"Machine: {info.get('cpu')} ({info.get('cores')} cores), torch {info['torch']}",
             "", "Dice on never-annotated voxels after each round (seconds per round); the "
             "slice annotated next is the round's suggestion (axis, index).", "",
             "| case | strategy | " + " | ".join(
                 f"round {r}" for r in range(1, 1 + max(x["round"] for x in rows))) + " |",
             "|---|---|" + "---|" * max(x["round"] for x in rows)]
    keys = sorted({(x["case"], x["strategy"]) for x in rows},
                  key=lambda k: [x["case"] for x in rows].index(k[0]))
    for case, strategy in keys:
        cells = [f"{x['mean_dice']:.3f} ({x['seconds']:.0f} s; next {tuple(x['suggestion'])})"
                 for x in rows if x["case"] == case and x["strategy"] == strategy]
        lines.append(f"| {case} | {strategy} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--cases", nargs="+", default=["phantom", "brain1", "lung1", "lung2"])
    p.add_argument("--strategies", nargs="+", default=["fewshot", "finetune"])
    p.add_argument("--rounds", type=int, default=4)
    p.add_argument("--data", type=Path, default=DEFAULT_DATA)
    p.add_argument("--out", type=Path, default=HERE / "results")
    args = p.parse_args()
    from napari_latentseg.runtime.device import configure_threads

    configure_threads()
    args.out.mkdir(parents=True, exist_ok=True)
    rows = []
    for case in available_cases(args.cases, args.data):
        for strategy in args.strategies:
            rows += run_loop(case, args.data, args.out / "models", strategy, args.rounds)
            info = machine()
            (args.out / "loop.json").write_text(json.dumps(
                {"machine": info, "results": rows}, indent=2))
            (args.out / "loop.md").write_text(to_markdown(rows, info))
    if rows:
        print(to_markdown(rows, machine()))


if __name__ == "__main__":
    main()
