"""``latentseg segment``: few-shot segmentation from sparse annotations."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from ._common import CLIError, add_common, class_id, load_scan, run_core

# Few-shot (forest + connectivity rule) is the default: seconds per round. Fine-tuning costs
# 3-10x the time and a new model file per round for gains on few cases (docs/benchmarks.md):
# opt-in (--finetune-steps).
DEFAULT_FINETUNE_STEPS = 0


def add_parser(sub) -> None:
    s = sub.add_parser("segment", help="few-shot segmentation from sparse annotations")
    s.add_argument("image", metavar="IMAGE")
    s.add_argument("-m", "--model", metavar="MODEL",
                   help="fitted VAE (latentseg fit); without one, the forest uses the ilastik "
                        "multiscale features alone: a first result with no fit")
    s.add_argument("-a", "--annotations", required=True, metavar="ANNOTATIONS",
                   help="label volume on the image grid: 0 = not annotated, 1..N = classes")
    s.add_argument("-o", "--output", required=True, metavar="LABELS")
    s.add_argument("--finetune-steps", type=int, default=DEFAULT_FINETUNE_STEPS,
                   help=f"fine-tuning steps of an MLP head + the encoder, which refines the "
                        f"forest's boundaries if held-out annotations say it helps (default "
                        f"{DEFAULT_FINETUNE_STEPS}; 0 = few-shot only; 60 is about a minute on "
                        f"a 2-core CPU)")
    s.add_argument("--classifier", choices=["forest", "mlp"], default="forest",
                   help="forest: random forest on multiscale + VAE features (default); mlp: "
                        "an MLP head on the VAE hypercolumn alone")
    s.add_argument("--no-vae-features", action="store_true",
                   help="the forest on the ilastik multiscale features alone (the ablation of "
                        "the VAE features; docs/interactive_benchmarks.md)")
    s.add_argument("--vae-features", choices=("auto", "always"), default="auto",
                   help="with -m, when the forest reads the VAE's features: auto (default) in "
                        "rounds of three or more classes, where they paid on the benchmarks, "
                        "not for one object against its background; always: every round")
    s.add_argument("--no-prototypes", action="store_true",
                   help="without the class-prototype columns that rounds of three or more "
                        "classes get by default (their ablation; docs/benchmarks.md)")
    s.add_argument("--background", default="auto", metavar="LABEL",
                   help="the background class (label id or name) of an object-vs-background "
                        "task: unpainted voxels train the forest as weak background, so one "
                        "small background stroke does not let the object flood the scan "
                        "(default auto: the class named background/outside/other in the "
                        "annotations' label names, else class 1 when exactly two classes are "
                        "painted; with three or more classes the unpainted voxels count as "
                        "weak evidence of the large ones; none: both off)")
    s.add_argument("--object-class", type=class_id, default=None, metavar="ID",
                   help="with three or more painted classes: this class (a tumour painted "
                        "beside the air and the body, say) comes from a two-class round, it "
                        "against every other painted class as the background, and the others "
                        "from the round of all of them (the object's rules, such as the "
                        "background prior and the reach, serve two-class rounds; "
                        "docs/interactive_benchmarks.md)")
    s.add_argument("--background-prior", choices=["fixed", "adaptive"], default=None,
                   help="how much the unpainted voxels weigh: fixed (as much as the painted "
                        "object) or adaptive (by the object's estimated share of the scan: "
                        "converges better on small objects in whole scans, slower on objects "
                        "that fill much of it); default adaptive")
    s.add_argument("--no-reach", action="store_true",
                   help="object-vs-background tasks: do not fade the object beyond its reach "
                        "(a geodesic distance of at least 40 mm from its strokes, edges of the "
                        "image counting as distance) that keeps far tissue of the same kind "
                        "from joining it")
    s.add_argument("--no-stroke-distances", action="store_true",
                   help="object-vs-background tasks: the classifier reads the image's features "
                        "alone, not also each voxel's geodesic distance from the object's "
                        "strokes (edges of the image counting as distance), which tells the "
                        "object from tissue of the same look elsewhere")
    snap = s.add_mutually_exclusive_group()
    snap.add_argument("--snap-edge", dest="snap_edge", action="store_true", default=True,
                      help="object-vs-background tasks: move the object's edge, within two "
                           "voxels, to the side of the closer local mean intensity (the "
                           "default since session 22: over a correction loop it reaches "
                           "more of the object sooner, mean Dice over rounds +0.02 to +0.08 "
                           "on six tumour benchmarks, but a round steps back more often)")
    snap.add_argument("--no-snap-edge", dest="snap_edge", action="store_false",
                      help="keep the forest's edge (no edge step)")
    s.add_argument("--light-prior", action="store_true",
                   help="object-vs-background tasks: half the background prior's weight "
                        "(each run of this command is a fresh round): a first result from "
                        "two strokes covers more of the object (brain1 0.59 Dice against "
                        "0.36); for a one-off segmentation, not for rounds of corrections")
    s.add_argument("--anomaly-map", metavar="SCORE",
                   help="the scan's anomaly score on its grid, as `latentseg reconstruct "
                        "--anomaly-map` writes it (read here, never written): one more feature "
                        "for the forest. On MR tumours it lifts the mean Dice of a correction "
                        "loop by 0.05-0.06; on CT (the contrast density) it lost 0.01 "
                        "(docs/interactive_benchmarks.md)")
    s.add_argument("--all-regions", action="store_true",
                   help="keep regions not connected to a stroke of their class (default: "
                        "drop them, so the object is the one you painted; use this to find "
                        "lesions you did not paint)")
    s.add_argument("--save-model", metavar="MODEL2",
                   help="where to save the model with its head (default: next free version "
                        "of MODEL, e.g. model-v2.pt)")
    s.add_argument("--uncertainty", metavar="MAP", help="per-voxel uncertainty (entropy) map")
    s.add_argument("--suggest", action="store_true", help="print the next slice to annotate")
    s.add_argument("--seed", type=int, default=0)
    s.add_argument("--overwrite", action="store_true", help="replace existing output images")
    add_common(s)
    s.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from ..engine.segment.prior import resolve_background
    from ..models.checkpoint import load_model, next_version_path, save_model
    from ..pipeline import check_outputs_free, load_annotations, save_outputs, segment_job

    check_outputs_free([args.output, args.uncertainty], args.overwrite)
    if args.model is None and (args.finetune_steps > 0 or args.save_model
                               or args.classifier != "forest"):
        raise CLIError("--finetune-steps, --save-model and --classifier mlp need a fitted model "
                       "(-m MODEL)")
    if args.no_vae_features and args.vae_features == "always":
        raise CLIError("--no-vae-features and --vae-features always contradict each other: "
                       "choose one")
    if args.anomaly_map and args.classifier != "forest":
        raise CLIError("--anomaly-map is a feature of the forest: not with --classifier mlp")
    if args.save_model and Path(args.save_model).exists():
        raise CLIError(f"{args.save_model} already exists; models are never overwritten")
    scan = load_scan(args.image)
    try:
        ann, names = load_annotations(scan, args.annotations, with_classes=True)
        background = resolve_background(args.background, names)
        score = (load_annotations(scan, args.anomaly_map, "the anomaly map")
                 if args.anomaly_map else None)
    except (FileNotFoundError, ValueError) as exc:
        raise CLIError(str(exc)) from None
    if score is not None and not args.quiet:
        from ..engine.normalize import guess_modality

        if guess_modality(scan.data, scan.modality) == "CT":
            print("note: on CT the anomaly score (the contrast density) lost 0.01 mean Dice as "
                  "a feature in the benchmarks; it helps on MR", file=sys.stderr)
    model = load_model(args.model, device=args.device) if args.model else None
    job = run_core(lambda stop: segment_job(
        model, scan, ann, finetune_steps=args.finetune_steps, classifier=args.classifier,
        keep_connected_regions=not args.all_regions, seed=args.seed,
        vae_features=(False if args.no_vae_features
                      else True if args.vae_features == "always" else "auto"),
        prototypes=not args.no_prototypes,
        background=background, object_reach=not args.no_reach, stop_event=stop,
        object_class=args.object_class,
        stroke_distances=not args.no_stroke_distances,
        extra_features=score,
        boundary_refine=args.snap_edge, fresh_prior_scale=0.5 if args.light_prior else 1.0,
        **({} if args.background_prior is None
           else {"background_adaptive": args.background_prior == "adaptive"})),
        args.quiet)
    res = job.result
    for note in job.notes:
        print(f"note: {note}", file=sys.stderr)
    written = save_outputs(job, {"labels": args.output, "uncertainty": args.uncertainty}, scan,
                           overwrite=args.overwrite)
    features = next((h["features"] for h in res.history if "features" in h), None)
    print(f"wrote {written['labels']} (classes {res.classes}, {res.seconds:.1f} s"
          + (f"; features: {features})" if features else ")"))
    if "uncertainty" in written:
        print(f"wrote {written['uncertainty']}")
    # The head (and a fine-tuned encoder) is a new model: never the file we started from.
    if args.model and (args.save_model or args.finetune_steps > 0):
        target = Path(args.save_model) if args.save_model else next_version_path(args.model)
        saved = save_model(res.model, target)
        if res.model.head:
            print(f"saved {saved} (round {res.model.head['rounds']}; start the next round "
                  "from it)")
        else:
            print(f"saved {saved} (no segmentation head: few-shot rounds retrain the forest "
                  "from the annotations; --finetune-steps N trains one)")
    if args.suggest:
        _print_suggestion(res.suggestion)
    return 0


def _print_suggestion(sgt: dict) -> None:
    if sgt["index"] is None:
        print("suggestion: every slice already holds annotations")
        return
    print(f"suggestion: annotate slice {sgt['index']} along axis {sgt['axis']} "
          f"(mean foreground uncertainty {sgt['score']:.3f})")
    if sgt.get("reason"):
        print(f"  {sgt['reason']} (the most uncertain slices per axis:)")
    for p in sgt["per_axis"]:
        if p["index"] is not None:
            print(f"  axis {p['axis']}: slice {p['index']} ({p['score']:.3f})")
