"""Screenshots of the LatentSeg dock for the docs: the whole workflow on the sample phantom.

Runs napari in a real window. Without a ``DISPLAY`` it starts a virtual X server itself
(``pyvirtualdisplay`` + Xvfb, installed with the test dependencies); ``xvfb-run python
scripts/make_screenshots.py`` works too. It opens the head phantom, fits a quick cpu-2d
model (150 steps, about a minute on 2 cores), reconstructs, clusters, segments from the two
shipped annotated slices, fine-tunes one round and moves to the suggested slice, saving
``docs/images/01_open.png`` ... ``05_finetune.png`` (window and dock, downscaled and
palette-compressed to stay small).

Usage::

    python scripts/make_screenshots.py [--out docs/images] [--steps 150] [--config cpu-2d]
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
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
    parser.add_argument("--config", default="cpu-2d")
    parser.add_argument("--finetune-steps", type=int, default=30)
    args = parser.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)

    display = _ensure_display()
    os.environ.setdefault("QT_QPA_PLATFORM", "xcb")
    # Fresh napari settings (default theme and layout), without touching the user's own.
    settings_dir = tempfile.TemporaryDirectory()
    os.environ["NAPARI_CONFIG"] = str(Path(settings_dir.name) / "settings.yaml")
    import napari
    import numpy as np
    from napari.settings import get_settings
    from qtpy.QtCore import QEventLoop, QTimer
    from qtpy.QtWidgets import QApplication

    from napari_latentseg._napari._sample_data import sample_data_dir
    from napari_latentseg.io import read_volume

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

    def wait_job(start) -> str:
        """Start a job and run the event loop until the task bar reports it finished."""
        outcome: list[str] = []
        loop = QEventLoop()

        def finished(title: str, result: str) -> None:
            outcome.append(result)
            loop.quit()

        dock.tasks.task_finished.connect(finished)
        try:
            if start() is False:
                raise RuntimeError(f"job did not start: {dock.tasks.status_text}")
            if not outcome:
                loop.exec()
        finally:
            dock.tasks.task_finished.disconnect(finished)
        print(f"  {dock.tasks.status_text} ({time.perf_counter() - t_start:.0f} s)", flush=True)
        return outcome[0]

    def show_sections(*keys: str) -> None:
        for key, box in dock.sections.items():
            (box.expand if key in keys else box.collapse)(animate=False)
        settle()

    def shot(name: str) -> None:
        settle(400)
        _save(viewer.screenshot(canvas_only=False, flash=False), args.out / name)

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
        if not grabbed and ev.get("stage") == "fit" and ev.get("step", 0) >= 0.7 * args.steps:
            grabbed.append(True)
            QApplication.processEvents()
            _save(viewer.screenshot(canvas_only=False, flash=False), args.out / "02_fit.png")

    def start_fit():
        ok = ms.fit()
        dock.tasks.worker.yielded.connect(grab_mid_fit)
        return ok

    wait_job(start_fit)

    # 3. reconstruct ---------------------------------------------------------------------
    print("3. reconstruct", flush=True)
    wait_job(dock.reconstruct_section.run)
    # Show a central slice with anomaly candidates (the end slices of a quickly fitted model
    # are all "anomalous"); without candidates there, the slice with the most lesion voxels.
    n_z = scan.data.shape[0]
    cand = np.asarray(viewer.layers["phantom T1 anomalies"].data) > 0
    per_slice = cand.reshape(n_z, -1).sum(1)
    per_slice[: n_z // 5] = 0
    per_slice[n_z - n_z // 5:] = 0
    lesion = np.asarray(truth.data) == 7  # the phantom's lesions (ground truth label 7)
    z_anom = int(np.argmax(per_slice)) if per_slice.any() else int(
        np.argmax(lesion.reshape(n_z, -1).sum(1)))
    print(f"  showing slice {z_anom} ({per_slice[z_anom]} candidate voxels)", flush=True)
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

    print(f"done in {time.perf_counter() - t_start:.0f} s", flush=True)
    viewer.close()
    settings_dir.cleanup()
    if display is not None:
        display.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
