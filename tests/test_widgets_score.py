"""The dock's anomaly score: the denoiser's choices reach the engine, the score without a
model, and Segment rounds that use it (moved from test_widgets.py past its 500 lines)."""

from __future__ import annotations

import numpy as np

from test_widgets import add_crop, assert_on_grid, dock, fit, phantom_crop, run

__all__ = ["dock", "phantom_crop"]  # fixtures used here, imported from test_widgets


def test_anomaly_score_before_any_fit(dock, qtbot, phantom_crop):
    """Reconstruct without a model makes the anomaly layers alone (the denoiser needs no
    VAE), and Segment rounds, still without a model, use that score."""
    viewer, widget = dock
    scan = add_crop(viewer, phantom_crop)
    rec = widget.reconstruct_section
    assert widget.active_model is None
    run(qtbot, widget, rec.run)
    names = {layer.name for layer in viewer.layers}
    assert {"phantom crop anomaly score", "phantom crop anomalies"} <= names
    assert not names & {"phantom crop reconstruction", "phantom crop error"}
    assert "No model: the anomaly score alone" in rec.summary.text()
    assert "(dae)" in rec.summary.text()
    assert_on_grid(viewer.layers["phantom crop anomaly score"], scan)
    rec.method.setCurrentIndex(rec.method.findData("error"))  # the VAE's error needs one
    assert rec.run() is False
    seg = widget.segment_section
    ann = seg.new_annotation_layer()
    ann.data_setitem((np.full(32, 6), np.full(32, 16), np.arange(32)), phantom_crop[1][6, 16])
    run(qtbot, widget, lambda: seg.segment(finetune=False))
    text = seg.summary.text()
    assert "ilastik multiscale set + the anomaly score (no VAE features)" in text
    np.testing.assert_array_equal(scan.data, phantom_crop[0])


def test_reconstruct_with_the_denoiser_score(dock, qtbot, phantom_crop, monkeypatch):
    """The Reconstruct section's score choice reaches the engine: the denoiser (a short fit
    here) gives the anomaly layers and says which method it used; its findings on both
    sides of the head, and near its surface, are lowered unless the boxes are unticked."""
    monkeypatch.setenv("LATENTSEG_DAE_STEPS", "10")
    viewer, widget = dock
    scan = add_crop(viewer, phantom_crop)
    fit(qtbot, widget, steps=10)
    seg = widget.segment_section
    ann = seg.new_annotation_layer()
    ann.data_setitem((np.full(32, 6), np.full(32, 16), np.arange(32)), phantom_crop[1][6, 16])
    painted = np.array(ann.data, copy=True)
    seg.score.make.setChecked(False)  # not made in the background: a tip says how to make it
    run(qtbot, widget, lambda: seg.segment(finetune=False))
    assert "Tip: Reconstruct" in seg.summary.text() and not widget.score_tasks.busy
    rec = widget.reconstruct_section
    assert rec.method.currentData() == "default"
    import napari_latentseg.engine.anomaly_masks as masks
    import napari_latentseg.engine.anomaly_symmetry as symmetry

    calls, faded = [], []
    lower, fade = symmetry.lower_bilateral, masks.surface_fade
    monkeypatch.setattr(symmetry, "lower_bilateral",
                        lambda *a, **k: calls.append(1) or lower(*a, **k))
    monkeypatch.setattr(masks, "surface_fade", lambda *a, **k: faded.append(1) or fade(*a, **k))
    rec.method.setCurrentIndex(rec.method.findData("dae"))
    assert rec.symmetric.isChecked() and rec.surface.isChecked()
    run(qtbot, widget, rec.run)
    assert "(dae)" in rec.summary.text() and calls == [1] and faded == [1]
    assert_on_grid(viewer.layers["phantom crop anomaly score"], scan)
    np.testing.assert_array_equal(scan.data, phantom_crop[0])
    rec.symmetric.setChecked(False)  # bilateral findings kept: the step is skipped
    rec.surface.setChecked(False)  # and the findings near the surface
    run(qtbot, widget, rec.run)
    assert calls == [1] and faded == [1]
    # Segment rounds see that score as one more column of the forest (an MR scan), unless
    # the box is unticked; the user's layers are not changed.
    import napari_latentseg._napari._widgets._segment as segment_widget

    seen = []
    job = segment_widget.segment_job
    monkeypatch.setattr(segment_widget, "segment_job", lambda *a, **k: seen.append(
        k.get("extra_features")) or job(*a, **k))
    score = viewer.layers["phantom crop anomaly score"].data
    run(qtbot, widget, lambda: seg.segment(finetune=False))
    assert seen[-1] is score and "+ the anomaly score" in seg.summary.text()
    assert "Tip: Reconstruct" not in seg.summary.text()
    np.testing.assert_array_equal(ann.data, painted)
    seg.anomaly.setChecked(False)
    run(qtbot, widget, lambda: seg.segment(finetune=False))
    assert seen[-1] is None and "anomaly score" not in seg.summary.text()


def test_denoiser_options_follow_the_score_in_effect(dock):
    """The two denoiser-only options are greyed out where Reconstruct makes another score:
    a CT's automatic score (the contrast density), or a score picked by name; the header
    names the modality guessed from the intensities."""
    viewer, widget = dock
    rec = widget.reconstruct_section
    rng = np.random.default_rng(0)
    ct = viewer.add_image(rng.normal(-800.0, 50.0, (6, 32, 32)).astype(np.float32), name="ct")
    widget.scan.set_layer(ct)
    assert widget.scan_modality.text().startswith("CT (guessed")
    assert not rec.symmetric.isEnabled() and not rec.surface.isEnabled()
    rec.method.setCurrentIndex(rec.method.findData("dae"))  # the denoiser, by name
    assert rec.symmetric.isEnabled() and rec.surface.isEnabled()
    mr = viewer.add_image(rng.normal(300.0, 50.0, (6, 32, 32)).astype(np.float32), name="mr",
                          metadata={"modality": "MR"})
    widget.scan.set_layer(mr)
    assert widget.scan_modality.text() == "MR"
    rec.method.setCurrentIndex(rec.method.findData("default"))
    assert rec.symmetric.isEnabled()
    rec.method.setCurrentIndex(rec.method.findData("contrast"))
    assert not rec.symmetric.isEnabled()
    rec.method.setCurrentIndex(rec.method.findData("default"))
    rec.anomalies.setChecked(False)
    assert not rec.surface.isEnabled()


def test_the_reconstruction_shows_while_the_score_computes(dock, qtbot, phantom_crop,
                                                           monkeypatch):
    """The reconstruction and error layers come as soon as they are ready (the denoiser's
    score takes minutes on MR); Stop during the score keeps them and says so."""
    import threading

    from napari_latentseg._napari._widgets import _reconstruct

    viewer, widget = dock
    add_crop(viewer, phantom_crop)
    fit(qtbot, widget, steps=10)
    real, gate, infos = _reconstruct.reconstruct_job, threading.Event(), []

    def gated(*args, **kwargs):  # the score waits until the test has looked
        steps = real(*args, **kwargs)
        try:
            while True:
                ev = next(steps)
                yield ev
                if ev.get("partial") is not None:
                    gate.wait(30)
        except StopIteration as end:
            return end.value

    monkeypatch.setattr(_reconstruct, "reconstruct_job", gated)
    monkeypatch.setattr(_reconstruct, "show_info", infos.append)
    rec = widget.reconstruct_section
    with qtbot.waitSignal(widget.tasks.task_finished, timeout=60_000) as finished:
        assert rec.run()
        qtbot.waitUntil(lambda: "scoring anomalies" in rec.summary.text(), timeout=30_000)
        names = {layer.name for layer in viewer.layers}
        assert {"phantom crop reconstruction", "phantom crop error"} <= names
        assert "phantom crop anomaly score" not in names
        widget.tasks.stop()
        gate.set()
    assert finished.args[1] == "stopped"
    assert "phantom crop error" in {layer.name for layer in viewer.layers}
    assert "phantom crop anomaly score" not in {layer.name for layer in viewer.layers}
    assert any(str(i).startswith("Anomaly scoring stopped") for i in infos)
