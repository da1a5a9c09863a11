"""``latentseg demo``: the whole job on the embedded phantom (or a user's scan)."""

from __future__ import annotations

import argparse
import sys
import threading
from pathlib import Path

from ..models.config import DEFAULT_CONFIG
from ._common import Progress, add_common


def add_parser(sub) -> None:
    d = sub.add_parser("demo", help="the whole job on the embedded phantom (or --input SCAN)")
    d.add_argument("--output", "-o", default="demo_output", help="output folder")
    d.add_argument("--input", metavar="SCAN", help="use this scan instead of the phantom")
    d.add_argument("--annotations", metavar="ANN", help="sparse annotations for --input")
    d.add_argument("--config", default=DEFAULT_CONFIG,
                   help=f"model configuration (default {DEFAULT_CONFIG})")
    d.add_argument("--steps", type=int, default=400, help="fit steps (default 400)")
    d.add_argument("--finetune-steps", type=int, default=60,
                   help="fine-tuning steps of the demo's fine-tuning round (default 60)")
    d.add_argument("--seed", type=int, default=0)
    d.add_argument("--overwrite", action="store_true", help="replace earlier demo results")
    add_common(d)
    d.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from ..demo import run_demo

    stop = threading.Event()
    progress = Progress(args.quiet)

    def report(ev: dict) -> None:
        try:
            progress(ev)
        except KeyboardInterrupt:
            stop.set()
            print("\nstopping at the next step...", file=sys.stderr)

    try:
        metrics = run_demo(args.output, input_path=args.input, annotations=args.annotations,
                           config=args.config, steps=args.steps, device=args.device,
                           finetune_steps=args.finetune_steps,
                           seed=args.seed, overwrite=args.overwrite, progress=report,
                           stop_event=stop)
    finally:
        progress.close()
    rec = metrics["reconstruction"]
    print(f"demo results in {args.output}: PSNR {rec['psnr_db']} dB, "
          f"{rec['anomaly_candidates']} anomaly candidates, on {metrics['device']}; "
          f"times {metrics['times_s']}")
    dice = metrics["segmentation"].get("dice_finetuned")
    if dice:
        print("Dice per class (slices without annotations): "
              + ", ".join(f"{k} {v:.3f}" for k, v in dice.items()))
    for name in metrics["outputs"]:
        print(f"  {Path(args.output) / name}")
    return 0
