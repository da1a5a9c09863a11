"""The LatentSeg dock driven like a user would: open, fit, reconstruct, segment, save.

Every test works on a small crop of the sample phantom with the "tiny" configuration, so the
whole file runs in well under a minute on 2 CPU cores. Jobs run in napari thread workers; the
tests wait on the dock's ``tasks.task_finished`` signal.
"""

from __future__ import annotations

import subprocess
import sys
import time

import numpy as np
import pytest

pytestmark = pytest.mark.gui

TIMEOUT_MS = 60_000


# ----------------------------------------------------------------------------- helpers
@pytest.fixture(scope="module")
def phantom_crop():
    """(image, ground truth, layer kwargs) of the phantom cropped to (12, 32, 32)."""
    from napari_latentseg._napari._sample_data import load_phantom

    (img, img_kw, _), (lab, _, _) = load_phantom()
    assert "rotate" not in img_kw  # identity direction: translate shifts by index * scale
    scale = np.asarray(img_kw["scale"], float) * (1, 4, 4)
    translate = np.asarray(img_kw["translate"], float) + np.array([14, 0, 0]) * img_kw["scale"]
    meta = {"modality": "MR"}  # no stored geometry: it is derived from scale/translate
    kw = {"scale": scale, "translate": translate, "metadata": meta, "name": "phantom crop",
          "contrast_limits": img_kw.get("contrast_limits")}
    return img[14:26, ::4, ::4].copy(), lab[14:26, ::4, ::4].copy(), kw


@pytest.fixture
def dock(make_napari_viewer):
    """A viewer with the LatentSeg dock opened through the manifest (as from Plugins menu)."""
    viewer = make_napari_viewer()
    _, widget = viewer.window.add_plugin_dock_widget("napari-latentseg", "LatentSeg")
    widget.model_section.config.setCurrentText("tiny")
    return viewer, widget


@pytest.fixture
def notes():
    """Notifications shown during the test, as (severity, message)."""
    from napari.utils.notifications import notification_manager

    seen: list[tuple[str, str]] = []

    def record(event):
        n = event if hasattr(event, "severity") else getattr(event, "value", event)
        seen.append((str(n.severity), str(n.message)))

    notification_manager.notification_ready.connect(record)
    yield seen
    notification_manager.notification_ready.disconnect(record)


def run(qtbot, widget, start, outcome="done", bar=None):
    """Start a job with ``start()`` and wait until its task bar (default: the main one)
    reports it finished."""
    bar = bar or widget.tasks
    with qtbot.waitSignal(bar.task_finished, timeout=TIMEOUT_MS) as blocker:
        assert start() is not False, "the job did not start"
    assert blocker.args[1] == outcome, (blocker.args, bar.status_text)
    return blocker.args


def add_crop(viewer, phantom_crop):
    img, _, kw = phantom_crop
    return viewer.add_image(img.copy(), **kw)


def fit(qtbot, widget, steps=30):
    widget.model_section.steps.setValue(steps)
    run(qtbot, widget, widget.model_section.fit, bar=widget.fit_tasks)


def assert_on_grid(layer, source):
    assert layer.data.shape == source.data.shape
    np.testing.assert_allclose(layer.scale, source.scale)
    np.testing.assert_allclose(layer.translate, source.translate)
    np.testing.assert_allclose(layer.rotate, source.rotate)


def errors(notes):
    return [m for s, m in notes if s == "error"]


# ----------------------------------------------------------------------------- tests
def test_widget_module_does_not_import_torch():
    code = ("import sys, napari_latentseg._napari._widgets._dock;"
            "bad = [m for m in ('torch', 'monai') if m in sys.modules];"
            "print(bad); sys.exit(1 if bad else 0)")
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         timeout=120)
    assert res.returncode == 0, res.stdout + res.stderr


def test_open_scan_shows_modality_shape_spacing(dock, qtbot):
    from napari_latentseg._napari._sample_data import sample_data_dir

    viewer, widget = dock
    run(qtbot, widget, lambda: widget.scan_section.open_path(
        str(sample_data_dir() / "phantom_t1.nii.gz")))
    layer = widget.scan_layer()
    assert layer is not None and layer.name == "phantom_t1"
    assert layer.data.shape == (40, 128, 128)
    np.testing.assert_allclose(layer.scale, (4.0, 1.6, 1.6), rtol=1e-6)  # anisotropic
    info = widget.scan_info
    assert "40 \u00d7 128 \u00d7 128" in info and "4 \u00d7 1.6 \u00d7 1.6" in info
    assert "MR" in info or "not in the file header" in info


def test_dicom_folder_series_picker(dock, qtbot, tmp_path):
    from test_io_dicom import make_series

    viewer, widget = dock
    make_series(tmp_path / "a", 7, series_uid="1.2.3.1", description="T1 axial")
    make_series(tmp_path / "b", 3, series_uid="1.2.3.2", description="localizer")
    section = widget.scan_section
    run(qtbot, widget, lambda: section.list_series(str(tmp_path)))
    assert section.series_row.isVisibleTo(section) and section.series.count() == 2
    assert "localizer" in section.series.itemText(1)
    section.series.setCurrentIndex(1)
    run(qtbot, widget, section.load_selected_series)
    assert widget.scan_layer().data.shape == (3, 6, 5)
    assert "MR" in widget.scan_info


def test_full_loop(dock, qtbot, phantom_crop, tmp_path, notes):
    from napari_latentseg.io import read_volume

    viewer, widget = dock
    img, truth, _ = phantom_crop
    scan = add_crop(viewer, phantom_crop)
    original = scan.data.copy()
    assert widget.scan_layer() is scan  # a newly opened scan becomes the one to work on
    assert "12 \u00d7 32 \u00d7 32" in widget.scan_info

    # --- fit: progress, live loss curve, active model
    fit(qtbot, widget, steps=30)
    model = widget.active_model
    assert model is not None and model.config.name == "tiny"
    assert len(widget.model_section.plot.losses) >= 25
    assert "tiny" in widget.model_section.model_info.text()
    assert "phantom crop" in widget.model_section.model_info.text()  # what it was fitted on

    # --- reconstruct: three plugin layers on the scan's grid; a re-run updates them
    run(qtbot, widget, widget.reconstruct_section.run)
    names = {layer.name for layer in viewer.layers}
    for role in ("reconstruction", "error", "anomalies"):
        assert f"phantom crop {role}" in names
        assert_on_grid(viewer.layers[f"phantom crop {role}"], scan)
    n_layers = len(viewer.layers)
    run(qtbot, widget, widget.reconstruct_section.run)
    assert len(viewer.layers) == n_layers

    # --- clusters
    run(qtbot, widget, widget.segment_section.cluster)
    clusters = viewer.layers["phantom crop clusters"]
    assert_on_grid(clusters, scan)
    assert set(np.unique(clusters.data)) == {1, 2, 3, 4}

    # --- annotate two slices "by hand" on a layer made by the button
    seg = widget.segment_section
    seg.new_btn.click()
    ann = viewer.layers["phantom crop annotations"]
    assert seg.annotations.layer() is ann
    assert_on_grid(ann, scan)
    assert ann.mode == "paint" and not ann.data.any()
    for z in (3, 8):
        index = np.nonzero(np.ones(truth[z].shape, bool))
        ann.data_setitem((np.full(index[0].size, z),) + index, truth[z][index])
    assert set(np.unique(ann.data[3])) >= {1, 2, 3}

    # --- few-shot segmentation
    run(qtbot, widget, lambda: seg.segment(finetune=False))
    pred = viewer.layers["phantom crop segmentation"]
    unc = viewer.layers["phantom crop uncertainty"]
    assert_on_grid(pred, scan)
    assert_on_grid(unc, scan)
    np.testing.assert_array_equal(pred.data[3], truth[3])  # painted voxels keep their label
    assert (pred.data == truth).mean() > 0.5
    # A forest round changes no model: the fitted one stays active and untouched.
    assert widget.active_model is model and model.head is None
    assert len(widget.models) == 1

    # --- fine-tune round: a new model holding the head becomes active
    seg.finetune_steps.setValue(5)
    run(qtbot, widget, lambda: seg.segment(finetune=True))
    assert widget.active_model.head["rounds"] == 1
    assert widget.active_model.head["finetuned_encoder"]
    assert widget.models[0].model is model and model.head is None
    assert len(viewer.layers) == n_layers + 4  # clusters, annotations, segmentation, unc.

    # --- next slice: the viewer shows the suggested slice, in world coordinates
    s = seg.suggestion
    assert s["index"] is not None and s["index"] not in (3, 8)
    assert seg.go_to_suggestion()
    axis = s["axis"]
    expected = scan.translate[axis] + s["index"] * scan.scale[axis]
    assert viewer.dims.point[axis] == pytest.approx(expected)
    assert axis not in viewer.dims.displayed

    # --- accept corrections: the user repaints part of the prediction
    z = int(s["index"]) if axis == 0 else 5
    before = ann.data.copy()
    idx = (np.full(20, z), np.full(20, 16), np.arange(6, 26))
    new = np.where(pred.data[idx] == 7, 6, 7).astype(pred.data.dtype)
    pred.data_setitem(idx, new)
    assert seg.accept_corrections() == 20
    np.testing.assert_array_equal(ann.data[idx], new)
    changed = ann.data != before
    assert changed.sum() == 20
    assert seg.accept_corrections() == 0  # the same edits are not copied twice

    # --- save labels in the source geometry
    out = tmp_path / "seg.nii.gz"
    run(qtbot, widget, lambda: seg.save_labels(str(out)))
    vol = read_volume(out)
    np.testing.assert_array_equal(vol.data, pred.data)
    np.testing.assert_allclose(vol.spacing, scan.scale, rtol=1e-5)
    np.testing.assert_allclose(vol.origin, scan.translate, atol=1e-4)

    # --- save the model (never overwriting: a second save gets -v2)
    path = tmp_path / "vae.pt"
    run(qtbot, widget, lambda: widget.model_section.save_model_file(str(path)))
    run(qtbot, widget, lambda: widget.model_section.save_model_file(str(path)))
    assert path.exists() and (tmp_path / "vae-v2.pt").exists()
    assert widget.active_entry.path == str(tmp_path / "vae-v2.pt")
    run(qtbot, widget, lambda: widget.model_section.load_model_file(str(path)))
    assert widget.active_entry.origin == "loaded" and widget.active_entry.path == str(path)
    assert widget.active_model.head["rounds"] == 1  # the head travels with the file

    # --- the user's scan was never modified
    np.testing.assert_array_equal(scan.data, original)
    np.testing.assert_array_equal(scan.data, img)
    assert not errors(notes), notes


def test_stop_keeps_model_and_gui_stays_responsive(dock, qtbot, phantom_crop):
    from qtpy.QtCore import QTimer

    viewer, widget = dock
    add_crop(viewer, phantom_crop)
    fit(qtbot, widget, steps=20)
    first = widget.active_entry
    run(qtbot, widget, widget.reconstruct_section.run)
    error_layer = viewer.layers["phantom crop error"]
    error_before = error_layer.data.copy()

    ticks = []
    timer = QTimer()
    timer.timeout.connect(lambda: ticks.append(time.perf_counter()))
    timer.start(20)
    try:
        widget.model_section.steps.setValue(100_000)  # far longer than the test
        with qtbot.waitSignal(widget.fit_tasks.task_finished, timeout=TIMEOUT_MS) as blocker:
            assert widget.model_section.fit()
            qtbot.waitUntil(lambda: len(widget.model_section.plot.losses) >= 10,
                            timeout=TIMEOUT_MS)
            # The GUI thread processes events while the fit runs in its worker.
            n = len(ticks)
            qtbot.waitUntil(lambda: len(ticks) >= n + 5, timeout=5_000)
            assert widget.fit_tasks.busy and not widget.tasks.busy
            widget.fit_tasks._stop_btn.click()
            t_stop = time.perf_counter()
        t_done = time.perf_counter()
    finally:
        timer.stop()
    assert blocker.args[1] == "stopped"
    assert t_done - t_stop < 1.0, f"Stop took {t_done - t_stop:.2f} s"
    # The previous model stays active; the stopped fit's model is kept in the list.
    assert widget.active_entry is first
    assert len(widget.models) == 2
    stopped = widget.models[1].model
    assert stopped.info["stop_reason"] == "stopped" and stopped.info["steps"] >= 10
    np.testing.assert_array_equal(error_layer.data, error_before)
    assert not widget.fit_tasks.busy and widget.model_section.fit_btn.isEnabled()


def test_the_encoder_is_handed_over_while_the_decoder_trains(dock, qtbot, phantom_crop):
    """Segmentation reads the encoder alone: its model is active as soon as the main fit
    ends, and the finished model (decoder trained, anomalies calibrated) takes its place."""
    import torch

    viewer, widget = dock
    add_crop(viewer, phantom_crop)
    seen = []
    widget.session.model_changed.connect(
        lambda: seen.append((widget.active_entry, widget.active_entry.origin,
                             widget.active_model)))
    fit(qtbot, widget, steps=12)
    origins = [origin for _, origin, _ in seen]
    assert origins[0] == "decoder still training" and origins[-1] == "fitted"
    entry, _, interim = seen[0]
    assert len(widget.models) == 1 and widget.active_entry is entry
    final = widget.active_model
    assert final is not interim and final.info["decoder_steps"] == 12
    assert interim.info["decoder_steps"] == 0 and not interim.anomaly and final.anomaly
    enc = [k for k in final.net.state_dict() if k.startswith("encoder.")]
    assert all(torch.equal(final.net.state_dict()[k], interim.net.state_dict()[k]) for k in enc)


def test_stopped_reconstruction_changes_nothing(dock, qtbot, phantom_crop, monkeypatch):
    from napari_latentseg._napari._widgets import _reconstruct

    viewer, widget = dock
    add_crop(viewer, phantom_crop)
    fit(qtbot, widget, steps=10)
    run(qtbot, widget, widget.reconstruct_section.run)
    before = {layer.name: np.array(layer.data) for layer in viewer.layers}
    real = _reconstruct.reconstruct_job

    def slow(*args, **kwargs):  # the crop is too quick to stop: give Stop a moment
        yield {"stage": "reconstruct", "done": 0, "total": 1}
        time.sleep(0.3)
        return (yield from real(*args, **kwargs))

    monkeypatch.setattr(_reconstruct, "reconstruct_job", slow)
    with qtbot.waitSignal(widget.tasks.task_finished, timeout=TIMEOUT_MS) as blocker:
        assert widget.reconstruct_section.run()
        qtbot.waitUntil(lambda: "reconstruct 0/1" in widget.tasks.status_text, timeout=5_000)
        widget.tasks.stop()
    assert blocker.args[1] == "stopped"
    assert {layer.name for layer in viewer.layers} == set(before)
    for layer in viewer.layers:
        np.testing.assert_array_equal(layer.data, before[layer.name])


def test_wrong_inputs_become_error_notifications(dock, qtbot, phantom_crop, notes,
                                                  tmp_path):
    from napari_latentseg._napari._widgets._layers import describe_error

    viewer, widget = dock
    seg = widget.segment_section
    assert widget.reconstruct_section.run() is False  # no scan
    assert "open a scan" in errors(notes)[-1]
    scan = add_crop(viewer, phantom_crop)
    widget.reconstruct_section.anomalies.setChecked(False)
    assert widget.reconstruct_section.run() is False  # no model, and no score asked for
    assert "No active model" in errors(notes)[-1]
    widget.reconstruct_section.anomalies.setChecked(True)
    fit(qtbot, widget, steps=10)

    assert seg.segment() is False  # no annotation layer
    assert "New annotation layer" in errors(notes)[-1]
    viewer.add_labels(np.zeros((5, 8, 8), np.uint8), name="other scan's labels")
    seg.annotations.set_layer(viewer.layers["other scan's labels"])
    assert seg.segment() is False  # shape mismatch
    assert "shape (5, 8, 8)" in errors(notes)[-1] and "(12, 32, 32)" in errors(notes)[-1]
    ann = seg.new_annotation_layer()
    assert seg.segment() is False  # nothing painted
    assert "paint at least two classes" in errors(notes)[-1]
    ann.data_setitem((np.array([2]), np.array([5]), np.array([5])), 1)
    assert seg.segment() is False  # a single class
    assert "only class 1" in errors(notes)[-1]
    assert seg.accept_corrections() == 0 and "No segmentation" in errors(notes)[-1]
    assert seg.go_to_suggestion() is False and "No suggestion" in errors(notes)[-1]
    assert not widget.tasks.busy
    np.testing.assert_array_equal(scan.data, phantom_crop[0])

    # Errors inside a worker become notifications too.
    junk = tmp_path / "junk.pt"
    junk.write_text("not a model")
    run(qtbot, widget, lambda: widget.model_section.load_model_file(str(junk)), "error")
    assert "not a readable model file" in errors(notes)[-1]

    # A worker error (GPU out of memory) reads as advice, not a traceback.
    msg = describe_error(RuntimeError("CUDA out of memory. Tried to allocate 2 GiB"), "Fitting")
    assert "CPU" in msg and "Tile size" in msg


def test_single_2d_image(dock, qtbot, phantom_crop):
    viewer, widget = dock
    img, truth, kw = phantom_crop
    scan = viewer.add_image(img[6].copy(), name="slice", scale=kw["scale"][1:],
                            translate=kw["translate"][1:], metadata={"modality": "MR"})
    assert "2D image" in widget.scan_info
    fit(qtbot, widget, steps=10)
    run(qtbot, widget, widget.reconstruct_section.run)
    assert_on_grid(viewer.layers["slice error"], scan)
    seg = widget.segment_section
    ann = seg.new_annotation_layer()
    assert ann.data.shape == (32, 32)
    rows = np.arange(8, 24)
    for r in rows:
        ann.data_setitem((np.full(32, r), np.arange(32)), truth[6][r])
    run(qtbot, widget, lambda: seg.segment(finetune=False))
    assert_on_grid(viewer.layers["slice segmentation"], scan)
    assert seg.go_to_suggestion() is False  # no slices to move between in 2D


def test_closing_the_dock_stops_its_job(make_napari_viewer, qtbot, phantom_crop):
    viewer = make_napari_viewer()
    dock_widget, widget = viewer.window.add_plugin_dock_widget("napari-latentseg", "LatentSeg")
    widget.model_section.config.setCurrentText("tiny")
    add_crop(viewer, phantom_crop)
    widget.model_section.steps.setValue(100_000)
    assert widget.model_section.fit()
    worker = widget.fit_tasks.worker
    qtbot.waitUntil(lambda: len(widget.model_section.plot.losses) >= 3, timeout=TIMEOUT_MS)
    viewer.window.remove_dock_widget(dock_widget)
    qtbot.waitUntil(lambda: not worker.is_running, timeout=5_000)


def test_segment_before_any_fit(dock, qtbot, phantom_crop, notes):
    """No model yet: Segment gives a first result on the ilastik features, with the
    background prior on a two-class task; Fine-tune still asks for a model."""
    viewer, widget = dock
    img, truth, _ = phantom_crop
    scan = add_crop(viewer, phantom_crop)
    assert widget.session.active_model is None
    seg = widget.segment_section
    ann = seg.new_annotation_layer()
    inside = np.argwhere(truth[6] == 6)[:10]  # white matter on one slice = the object
    ann.data_setitem((np.full(len(inside), 6), inside[:, 0], inside[:, 1]), 2)
    ann.data_setitem((np.array([6, 6]), np.array([0, 0]), np.array([0, 1])), 1)
    run(qtbot, widget, lambda: seg.segment(finetune=False))
    pred = viewer.layers["phantom crop segmentation"]
    assert_on_grid(pred, scan)
    assert "ilastik multiscale set only" in seg.summary.text()
    assert "background prior" in seg.summary.text()
    assert "momentum" not in seg.summary.text()  # a first round has nothing to continue
    # A correction (a stroke added) continues the last round: its result is averaged in
    # where the object shrinks; after an erased stroke the round starts over.
    ann.data_setitem((np.array([6]), np.array([0]), np.array([2])), 1)
    run(qtbot, widget, lambda: seg.segment(finetune=False))
    from napari_latentseg.engine.segment import SegmentOptions

    opts = SegmentOptions()
    floor = "or rose to under {:g} (at {:g})".format(*opts.growth_floor)
    assert (f"where the object's probability fell {floor} (momentum {opts.momentum:g})"
            in seg.summary.text())
    kept = seg._last_round[2]  # what the next round needs: the object's gain of this one
    assert kept.grown is not None and kept.grown.shape == kept.labels.shape
    ann.data_setitem((np.array([6]), np.array([0]), np.array([0])), 0)
    run(qtbot, widget, lambda: seg.segment(finetune=False))
    assert "momentum" not in seg.summary.text()
    assert "edge snapped to the image" in seg.summary.text()  # on by default
    assert "or more" not in seg.summary.text()  # its growth is not gated by default
    seg.steady.setChecked(True)  # "Steady corrections": growth only where the forest backs it
    run(qtbot, widget, lambda: seg.segment(finetune=False))
    assert "joining the object only at probability 0.35 or more" in seg.summary.text()
    seg.steady.setChecked(False)
    seg.snap.setChecked(False)
    assert not seg.steady.isEnabled()  # nothing to gate without the edge step
    run(qtbot, widget, lambda: seg.segment(finetune=False))
    assert "snapped" not in seg.summary.text()
    seg.snap.setChecked(True)
    assert seg.background() == 1  # the table names class 1 "background" (the convention)
    seg.classes.rename(1, "liver")
    seg.classes.rename(2, "Background")
    assert seg.background() == 2  # the class the user named so
    seg.classes.rename(2, "lesion")
    assert seg.background() == "auto"  # none named: the engine's rule (class 1 of two)
    seg.prior.setChecked(False)
    assert seg.background() is None
    assert seg.segment(finetune=True) is False
    assert "No active model" in errors(notes)[-1]
    np.testing.assert_array_equal(scan.data, img)  # the user's layer is untouched


def test_segment_while_a_fit_runs(dock, qtbot, phantom_crop):
    """A fit runs on its own bar: the user segments on the ilastik features meanwhile, and
    when the fit ends, live mode segments the volume again with the new model's features."""
    viewer, widget = dock
    _, truth, _ = phantom_crop
    scan = add_crop(viewer, phantom_crop)
    ms, seg = widget.model_section, widget.segment_section
    ms.steps.setValue(100_000)  # far longer than the test: stopped below
    with qtbot.waitSignal(widget.fit_tasks.task_finished, timeout=TIMEOUT_MS) as fitted:
        assert ms.fit()
        qtbot.waitUntil(lambda: len(ms.plot.losses) >= 3, timeout=TIMEOUT_MS)
        assert not ms.fit_btn.isEnabled() and seg.segment_btn.isEnabled()
        assert ms.fit() is False  # one fit at a time
        ann = seg.new_annotation_layer()
        # Three tissues: rounds of three or more classes read the VAE's columns once a
        # model is active (vae_features="auto").
        ann.data[6] = np.select([truth[6] == 1, truth[6] == 6, truth[6] == 5], [1, 2, 3], 0)
        ann.refresh()
        run(qtbot, widget, lambda: seg.segment(finetune=False))
        assert widget.fit_tasks.busy  # the first result came while the fit runs
        assert "ilastik multiscale set only" in seg.summary.text()
        assert seg.live_box.isChecked()
        pred = viewer.layers["phantom crop segmentation"]
        assert_on_grid(pred, scan)
        # Stop: with no model before, the stopped fit's best model becomes active, and
        # live mode segments the volume again with its features (after its pause).
        with qtbot.waitSignal(widget.tasks.task_finished, timeout=TIMEOUT_MS) as again:
            widget.fit_tasks.stop()
    assert fitted.args[1] == "stopped" and again.args[1] == "done"
    assert widget.active_model is not None
    assert "VAE latent" in seg.summary.text()
    assert ms.fit_btn.isEnabled()
