"""Screenshots of the LatentSeg dock for the docs: the whole workflow on the sample phantom.

Runs napari in a real window. Without a ``DISPLAY`` it starts a virtual X server itself
(``pyvirtualdisplay`` + Xvfb, installed with the test dependencies); ``xvfb-run python
scripts/make_screenshots.py`` works too. It opens the head phantom, fits a quick cpu-2d-fine
model (150 steps, about a minute on 2 cores), reconstructs, clusters, segments from the two
shipped annotated slices, fine-tunes one round and moves to the suggested slice, saving
``docs/images/01_open.png`` ... ``05_finetune.png`` (window and dock, downscaled and
palette-compressed to stay small).

Usage::

    python scripts/make_screenshots.py [--out docs/images] [--steps 150] [--config cpu-2d-fine]
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT.parent / "shared" / "data" / "pyradiomics"
WINDOW = (1440, 900)


def _ensure_display():
    """Start Xvfb through pyvirtualdisplay when there is no X display (returns it or None)."""
    if os.environ.get("DISPLAY"):
        return None
    from pyvirtualdisplay import Display

    display = Display(visible=False, size=(WINDOW[0] + 40, WINDOW[1] + 80), color_depth=24)
    display.start()
    return display


def _save(image, path: Path, max_width: int = 1200, max_bytes: int = 300_000) -> None:
    """Save an RGBA array as a small PNG (downscaled, then palette-compressed if needed)."""
    from PIL import Image

    img = Image.fromarray(image[..., :3])
    if img.width > max_width:
        img = img.resize((max_width, round(img.height * max_width / img.width)),
                         Image.Resampling.LANCZOS)
    img.save(path, optimize=True)
    if path.stat().st_size > max_bytes:
        img.quantize(colors=256, method=Image.Quantize.MEDIANCUT, dither=Image.Dither.NONE).save(
            path, optimize=True)
    print(f"  wrote {path.relative_to(ROOT) if path.is_relative_to(ROOT) else path} "
          f"({path.stat().st_size // 1024} KB, {img.width}x{img.height})", flush=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "images")
    parser.add_argument("--steps", type=int, default=150, help="fit steps (default 150)")
    parser.add_argument("--config", default="cpu-2d-fine")
    parser.add_argument("--finetune-steps", type=int, default=30)
    parser.add_argument("--data", type=Path, default=DATA,
                        help="pyradiomics scans for the real-scan walkthrough (skipped when "
                             "missing)")
    parser.add_argument("--real-steps", type=int, default=120,
                        help="fit steps of the real-scan walkthrough (default 120)")
    parser.add_argument("--only-real", action="store_true",
                        help="only the real-scan walkthrough (06-09)")
    args = parser.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)

    display = _ensure_display()
    os.environ.setdefault("QT_QPA_PLATFORM", "xcb")
    # Fresh napari settings (default theme and layout), without touching the user's own.
    settings_dir = tempfile.TemporaryDirectory()
    os.environ["NAPARI_CONFIG"] = str(Path(settings_dir.name) / "settings.yaml")
    # Nor the user's recovery copies: a fresh session offers no "restore" box.
    os.environ["LATENTSEG_RECOVERY_DIR"] = str(Path(settings_dir.name) / "recovery")
    import napari
    from napari.settings import get_settings
    from qtpy.QtCore import QEventLoop, QTimer
    from qtpy.QtWidgets import QApplication


    get_settings().application.gui_notification_level = "error"  # no toasts over the canvas
    t_start = time.perf_counter()
    viewer = napari.Viewer(title="napari-latentseg", show=True)
    viewer.window.resize(*WINDOW)
    _, dock = viewer.window.add_plugin_dock_widget("napari-latentseg", "LatentSeg")

    def settle(ms: int = 300) -> None:
        loop = QEventLoop()
        QTimer.singleShot(ms, loop.quit)
        loop.exec()
        QApplication.processEvents()

    def wait_job(start, bar=None) -> str:
        """Start a job and run the event loop until its task bar (default: the main one)
        reports it finished."""
        bar = bar or dock.tasks
        outcome: list[str] = []
        loop = QEventLoop()

        def finished(title: str, result: str) -> None:
            outcome.append(result)
            loop.quit()

        bar.task_finished.connect(finished)
        try:
            if start() is False:
                raise RuntimeError(f"job did not start: {bar.status_text}")
            if not outcome:
                loop.exec()
        finally:
            bar.task_finished.disconnect(finished)
        print(f"  {bar.status_text} ({time.perf_counter() - t_start:.0f} s)", flush=True)
        return outcome[0]

    def show_sections(*keys: str) -> None:
        for key, box in dock.sections.items():
            (box.expand if key in keys else box.collapse)(animate=False)
        settle()

    def shot(name: str) -> None:
        settle(400)
        _save(viewer.screenshot(canvas_only=False, flash=False), args.out / name)

    if not args.only_real:
        _phantom_walkthrough(args, viewer, dock, settle, wait_job, show_sections, shot,
                             t_start)
    _real_scan_walkthrough(args, viewer, dock, settle, wait_job, show_sections, shot)

    print(f"done in {time.perf_counter() - t_start:.0f} s", flush=True)
    viewer.close()
    settings_dir.cleanup()
    if display is not None:
        display.stop()
    return 0


def _phantom_walkthrough(args, viewer, dock, settle, wait_job, show_sections, shot, t_start):
    """01-05: the sample phantom from open to fine-tuning and saving."""
    import numpy as np
    from qtpy.QtWidgets import QApplication

    from napari_latentseg._napari._sample_data import sample_data_dir
    from napari_latentseg.io import read_volume

    # 1. open the sample scan (File > Open Sample > napari-latentseg > Head phantom) -----
    print("1. open", flush=True)
    viewer.open_sample("napari-latentseg", "phantom")
    scan = viewer.layers["phantom T1"]
    truth = viewer.layers["phantom ground truth"]
    truth.visible = False
    dock.scan.set_layer(scan)
    z_mid = scan.translate[0] + 20 * scan.scale[0]
    viewer.dims.set_point(0, z_mid)
    show_sections("scan", "model")
    shot("01_open.png")

    # 2. fit, screenshot taken mid-fit (progress bar, Stop, live loss curve) ---------------
    print(f"2. fit {args.config} for {args.steps} steps", flush=True)
    ms = dock.model_section
    ms.config.setCurrentText(args.config)
    ms.steps.setValue(args.steps)
    show_sections("model")
    grabbed: list[bool] = []

    def grab_mid_fit(ev: dict) -> None:
        # In the decoder phase: the encoder's model already active, the curve past the fit.
        if (not grabbed and ev.get("phase") == "decoder"
                and ev.get("step", 0) >= 1.5 * args.steps):
            grabbed.append(True)
            QApplication.processEvents()
            _save(viewer.screenshot(canvas_only=False, flash=False), args.out / "02_fit.png")

    def start_fit():
        ok = ms.fit()
        dock.fit_tasks.worker.yielded.connect(grab_mid_fit)
        return ok

    wait_job(start_fit, dock.fit_tasks)

    # 3. reconstruct ---------------------------------------------------------------------
    print("3. reconstruct", flush=True)
    wait_job(dock.reconstruct_section.run)
    # Show the slice where the candidates cover most of the phantom's lesions (ground truth
    # label 7); if none does, a central slice with candidates (the end slices of a quickly
    # fitted model are all "anomalous"), else the slice with the most lesion voxels.
    n_z = scan.data.shape[0]
    cand = np.asarray(viewer.layers["phantom T1 anomalies"].data) > 0
    lesion = np.asarray(truth.data) == 7
    found = (cand & lesion).reshape(n_z, -1).sum(1)
    per_slice = cand.reshape(n_z, -1).sum(1)
    per_slice[: n_z // 5] = 0
    per_slice[n_z - n_z // 5:] = 0
    if found.any():
        z_anom = int(np.argmax(found))
    elif per_slice.any():
        z_anom = int(np.argmax(per_slice))
    else:
        z_anom = int(np.argmax(lesion.reshape(n_z, -1).sum(1)))
    print(f"  showing slice {z_anom} ({per_slice[z_anom]} candidate voxels, {found[z_anom]} "
          f"on a lesion; {int(found.sum())} of {int(lesion.sum())} lesion voxels flagged)",
          flush=True)
    from scipy import ndimage as ndi

    score = np.asarray(viewer.layers["phantom T1 anomaly score"].data)
    parts, n = ndi.label(lesion)
    peaks = ndi.maximum(score, parts, range(1, n + 1)) if n else []
    sizes = ndi.sum_labels(lesion, parts, range(1, n + 1)) if n else []
    print("  lesions (voxels: peak score): " + ", ".join(
        f"{int(v)}: {p:.2f}" for v, p in zip(sizes, peaks, strict=True)), flush=True)
    show_sections("reconstruct")
    viewer.layers.selection.active = viewer.layers["phantom T1 error"]
    viewer.dims.set_point(0, scan.translate[0] + z_anom * scan.scale[0])
    shot("03_reconstruct.png")

    # 4. clusters and few-shot segmentation from the shipped annotated slices --------------
    print("4. segment", flush=True)
    seg = dock.segment_section
    wait_job(seg.cluster)
    ann_layer = seg.new_annotation_layer()
    painted = read_volume(sample_data_dir() / "phantom_annotations.nii.gz").data
    index = np.nonzero(painted)
    ann_layer.data_setitem(index, painted[index])  # as if painted by hand on two slices
    wait_job(lambda: seg.segment(finetune=False))
    pred = viewer.layers["phantom T1 segmentation"]
    unc = viewer.layers["phantom T1 uncertainty"]
    # Side by side: [scan + segmentation] | [uncertainty]; everything else hidden.
    for layer in viewer.layers:
        layer.visible = False
    layers = viewer.layers
    layers.move(layers.index(scan), 0)
    layers.move(layers.index(pred), 1)
    layers.move(layers.index(unc), 2)
    for layer in (scan, pred, unc):
        layer.visible = True
    grid = viewer.canvas.grid if hasattr(viewer, "canvas") else viewer.grid  # napari >= 0.9
    grid.stride = 2
    grid.enabled = True
    viewer.reset_view()
    viewer.dims.set_point(0, z_mid)
    viewer.layers.selection.active = pred
    show_sections("segment")
    shot("04_segment.png")

    # 5. fine-tune a round, go to the suggested slice, save -----------------------------
    print("5. fine-tune", flush=True)
    seg.finetune_steps.setValue(args.finetune_steps)
    wait_job(lambda: seg.segment(finetune=True))
    grid.enabled = False
    unc.visible = False
    ann_layer.visible = True
    viewer.reset_view()
    seg.go_to_suggestion()
    show_sections("segment")
    shot("05_finetune.png")
    with tempfile.TemporaryDirectory() as tmp:
        wait_job(lambda: seg.save_labels(str(Path(tmp) / "segmentation.nii.gz")))
    grid.enabled = False


def _real_scan_walkthrough(args, viewer, dock, settle, wait_job, show_sections, shot):
    """06-09: brain1 (contrast T1 MR with a tumour) opened from its file, as a user would:
    a fit started, two strokes and Segment while it runs (08: the ilastik features),
    reconstruct once the fit is done (06; the default score on MR is the denoiser's), that
    score and its candidates alone (09), Segment with the model active and that score, then a live
    correction (07)."""
    import numpy as np
    from qtpy.QtCore import QEventLoop, QTimer
    from scipy import ndimage as ndi

    image, label = args.data / "brain1_image.nrrd", args.data / "brain1_label.nrrd"
    if not image.exists():
        print(f"6. real-scan walkthrough skipped: {image} not found", flush=True)
        return
    print("6. brain1: open, start a fit, two strokes and Segment while it runs", flush=True)
    viewer.layers.clear()
    scan = viewer.open(str(image), plugin="napari-latentseg")[0]
    truth = viewer.open(str(label), plugin="napari-latentseg")[0]
    truth.visible = False
    dock.scan.set_layer(scan)
    tumour = np.asarray(truth.data) > 0
    z = int(np.argmax(tumour.reshape(len(tumour), -1).sum(1)))
    ms = dock.model_section
    ms.config.setCurrentText("cpu-2d-fine")
    ms.steps.setValue(args.real_steps)
    if not ms.fit():  # runs on the fit bar, alongside what follows
        raise RuntimeError(f"the fit did not start: {dock.fit_tasks.status_text}")
    seg = dock.segment_section
    ann = seg.new_annotation_layer()
    for value, mask in ((1, ~ndi.binary_dilation(tumour[z], iterations=8)), (2, tumour[z])):
        y, x = np.unravel_index(int(np.argmax(ndi.distance_transform_edt(mask))), mask.shape)
        ann.brush_size = 9
        ann.paint((z, y, x), value)
    t0 = time.perf_counter()
    wait_job(lambda: seg.segment(finetune=False))  # no model yet: the ilastik features
    print(f"  first result in {time.perf_counter() - t0:.1f} s while the fit runs "
          f"({dock.fit_tasks.status_text})", flush=True)
    pred = viewer.layers[f"{scan.name} segmentation"]
    viewer.dims.set_point(0, float(scan.data_to_world((z, 0, 0))[0]))
    viewer.reset_view()
    for layer in viewer.layers:
        layer.visible = layer in (scan, pred, ann)
    show_sections("segment")
    shot("08_brain1_first_result.png")
    seg.live_box.setChecked(False)  # the walkthrough's next strokes come after the fit
    viewer.layers.remove(pred)

    print("6. brain1: wait for the fit, reconstruct", flush=True)
    ann.visible = False
    if dock.fit_tasks.busy:
        loop = QEventLoop()
        dock.fit_tasks.task_finished.connect(lambda *_: loop.quit())
        loop.exec()
    print(f"  {dock.fit_tasks.status_text}", flush=True)
    wait_job(dock.reconstruct_section.run)
    viewer.dims.set_point(0, float(scan.data_to_world((z, 0, 0))[0]))
    viewer.reset_view()
    show_sections("reconstruct")
    shot("06_brain1_reconstruct.png")

    print("6b. brain1: the default score (the denoiser on MR) and its candidates alone",
          flush=True)
    viewer.dims.set_point(0, float(scan.data_to_world((z, 0, 0))[0]))
    for layer in viewer.layers:
        layer.visible = layer is scan or layer.name.endswith(("anomaly score", "anomalies"))
    show_sections("reconstruct")
    shot("09_brain1_denoiser.png")

    print("7. brain1: the same two strokes, Segment with the model active, one live correction",
          flush=True)
    ann.visible = True
    seg.live_box.setChecked(True)
    wait_job(lambda: seg.segment(finetune=False))  # with the anomaly score of 06 (MR)
    print(f"  {seg.summary.text()}", flush=True)
    pred = viewer.layers[f"{scan.name} segmentation"]
    wrong = (np.asarray(pred.data[z]) == 2) != tumour[z]
    if wrong.any():
        dist = ndi.distance_transform_edt(wrong)
        y, x = np.unravel_index(int(np.argmax(dist)), wrong.shape)
        loop = QEventLoop()
        seg.live.slice_updated.connect(lambda *_: loop.quit())
        QTimer.singleShot(60_000, loop.quit)
        ann.brush_size = 5
        ann.paint((z, y, x), 2 if tumour[z][y, x] else 1)
        loop.exec()
    for layer in viewer.layers:
        layer.visible = layer in (scan, pred, ann)
    show_sections("segment")
    shot("07_brain1_live.png")


if __name__ == "__main__":
    sys.exit(main())
