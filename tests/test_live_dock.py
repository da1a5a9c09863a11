"""Live mode in the dock: a stroke updates the displayed slice, then the volume follows."""

from __future__ import annotations

import numpy as np
import pytest

pytestmark = pytest.mark.gui

TIMEOUT_MS = 60_000


def test_stroke_updates_the_slice_then_the_volume(make_napari_viewer, qtbot, small_phantom,
                                                  monkeypatch):
    from napari_latentseg.engine.segment import LiveSegmenter

    given = []  # whether each live slice got the last round's probabilities (momentum)
    columns = []  # the extra columns each new live segmenter got (the anomaly score)
    init = LiveSegmenter.__init__
    options = []  # ... and its options (the edge step as the full rounds have it)
    monkeypatch.setattr(LiveSegmenter, "__init__", lambda self, *a, **k: columns.append(
        k.get("extra_features")) or options.append(k.get("options")) or init(self, *a, **k))
    predict = LiveSegmenter.predict_slice
    monkeypatch.setattr(LiveSegmenter, "predict_slice", lambda self, z, anchors=None,
                        previous=None, grown=None: given.append(previous is not None)
                        or predict(self, z, anchors, previous, grown))
    viewer = make_napari_viewer()
    _, widget = viewer.window.add_plugin_dock_widget("napari-latentseg", "LatentSeg")
    widget.model_section.config.setCurrentText("tiny")
    image, truth = small_phantom.image, small_phantom.labels
    scan = viewer.add_image(image.copy(), name="phantom", metadata={"modality": "MR"})
    widget.model_section.steps.setValue(20)
    with qtbot.waitSignal(widget.fit_tasks.task_finished, timeout=TIMEOUT_MS):
        assert widget.model_section.fit()
    seg = widget.segment_section
    ann = seg.new_annotation_layer()
    z = 6
    ann.data[z] = np.where(truth[z] == 1, 1, np.where(truth[z] == 6, 2, 0))  # two classes
    ann.refresh()
    painted_before = np.array(ann.data, copy=True)
    assert not seg.live_box.isChecked()  # nothing to follow before a first round
    with qtbot.waitSignal(widget.tasks.task_finished, timeout=TIMEOUT_MS):
        assert seg.segment()
    assert seg.live_box.isChecked()  # on by default once a round has run
    out = next(layer for layer in viewer.layers if layer.name.endswith("segmentation"))
    viewer.dims.set_point(0, float(scan.data_to_world((z + 2, 0, 0))[0]))
    # An anomaly score as Reconstruct leaves it: live slices take it as the rounds do (MR).
    from napari_latentseg._napari._widgets._layers import upsert_output

    score = upsert_output(viewer, scan, "anomaly score", (truth == 6).astype(np.float32),
                          "image").data
    before = np.array(out.data, copy=True)
    target = z + 2
    wrong = np.argwhere(before[target] != 2)
    y, x = wrong[len(wrong) // 2]
    ann.brush_size = 3
    with qtbot.waitSignal(seg.live.slice_updated, timeout=TIMEOUT_MS) as blocker:
        ann.paint((target, y, x), 2)
        assert widget.session.user_waiting()  # from the stroke on: background jobs hold
    qtbot.waitUntil(lambda: not widget.session.live_busy, timeout=TIMEOUT_MS)
    index, seconds = blocker.args
    assert index == target and seconds > 0
    assert given == [True]  # a stroke added to the last round's: it continues that round
    assert len(columns) == 1 and columns[0] is score
    assert options[0].boundary_refine == seg.snap.isChecked() and options[0].edge_min_p == 0
    assert out.data[target, y, x] == 2  # the stroke's class shows on the displayed slice
    np.testing.assert_array_equal(out.data[:target], before[:target])  # only that slice
    # The user's layers: the scan untouched, the annotations hold exactly the strokes.
    np.testing.assert_array_equal(scan.data, image)
    changed = np.argwhere(np.asarray(ann.data) != painted_before)
    assert len(changed) and set(changed[:, 0]) == {target}
    # When the strokes pause, a full round updates the whole volume.
    with qtbot.waitSignal(widget.tasks.task_finished, timeout=TIMEOUT_MS) as done:
        pass
    assert done.args[1] == "done"
    assert out.data[target, y, x] == 2
    seg.live_box.setChecked(False)
    assert not seg.live.enabled


def _dock_after_a_round(make_napari_viewer, qtbot, small_phantom):
    """A viewer and dock where a first round (no model: the ilastik features) has run on
    two classes painted on slice 6, so that live mode is on."""
    viewer = make_napari_viewer()
    _, widget = viewer.window.add_plugin_dock_widget("napari-latentseg", "LatentSeg")
    image, truth = small_phantom.image, small_phantom.labels
    viewer.add_image(image.copy(), name="phantom", metadata={"modality": "MR"})
    seg = widget.segment_section
    ann = seg.new_annotation_layer()
    ann.data[6] = np.where(truth[6] == 1, 1, np.where(truth[6] == 6, 2, 0))
    with qtbot.waitSignal(widget.tasks.task_finished, timeout=TIMEOUT_MS):
        assert seg.segment()
    assert seg.live.enabled
    return viewer, widget


def test_volume_round_after_the_layers_are_closed_is_silent(make_napari_viewer, qtbot,
                                                            small_phantom, monkeypatch):
    """A live volume round that comes due after the user closed the scan and its layers
    (e.g. a fit ended during the pause) does nothing: no error message, no job."""
    from napari_latentseg._napari._widgets import _segment

    errors = []
    monkeypatch.setattr(_segment, "show_error", errors.append)
    viewer, widget = _dock_after_a_round(make_napari_viewer, qtbot, small_phantom)
    seg = widget.segment_section
    viewer.layers.clear()
    seg.live._start_volume()  # what the pause timer calls
    assert errors == [] and not widget.tasks.busy


def test_a_due_slice_holds_background_jobs_until_it_is_no_longer_due(make_napari_viewer,
                                                                     qtbot, small_phantom):
    """A stroke makes the user wait (a fit or the anomaly score holds its next step) until
    its slice is done; live mode switched off, or the layers closed in the pause, release
    the hold, or background jobs would wait forever."""
    viewer, widget = _dock_after_a_round(make_napari_viewer, qtbot, small_phantom)
    seg, session = widget.segment_section, widget.session
    qtbot.waitUntil(lambda: not session.user_waiting(), timeout=TIMEOUT_MS)
    seg.live._on_paint()  # what a stroke on the annotation layer calls
    assert session.user_waiting()
    seg.live_box.setChecked(False)
    assert not session.user_waiting()
    seg.live_box.setChecked(True)
    seg.live._on_paint()
    viewer.layers.clear()
    seg.live._start_job()  # what the stroke pause's timer calls
    assert not session.user_waiting() and seg.live._worker is None


def test_segment_pressed_during_the_automatic_round_replaces_it(make_napari_viewer, qtbot,
                                                                small_phantom, monkeypatch,
                                                                tmp_path):
    """Segment (or another job) pressed while live mode's volume round runs is not refused:
    that round stops and the user's job, with the options set now, follows it."""
    import time

    from napari_latentseg._napari._widgets import _segment
    from napari_latentseg.runtime.progress import check_stop

    viewer, widget = _dock_after_a_round(make_napari_viewer, qtbot, small_phantom)
    seg = widget.segment_section
    assert seg.connected.isChecked()
    connected = []  # keep_connected_regions of each round from here on
    real = _segment.segment_job

    def slow_first(*args, **kwargs):
        connected.append(kwargs["keep_connected_regions"])
        if len(connected) == 1:  # the automatic round: long enough to press Segment
            for _ in range(1000):
                check_stop(kwargs["stop_event"], "segmentation")
                time.sleep(0.01)
                yield {"stage": "features"}
        return (yield from real(*args, **kwargs))

    monkeypatch.setattr(_segment, "segment_job", slow_first)
    infos = []
    monkeypatch.setattr(_segment, "show_info", infos.append)
    outcomes = []
    widget.tasks.task_finished.connect(lambda title, outcome: outcomes.append(outcome))
    seg.live._start_volume()  # what the pause timer calls
    assert widget.tasks.busy
    qtbot.waitUntil(lambda: bool(connected), timeout=TIMEOUT_MS)
    seg.connected.setChecked(False)
    assert seg.segment()  # not refused
    qtbot.waitUntil(lambda: len(outcomes) == 2, timeout=TIMEOUT_MS)
    assert outcomes == ["stopped", "done"]
    assert connected == [True, False]  # the user's round ran with the option set after
    # Its round covers the strokes and the model: no volume round is left due to redo it.
    assert not seg.live._volume_timer.isActive()
    assert not any("stopped" in str(n) for n in infos)  # no message for a round not asked for
    # Another job (Save) also takes the bar; the volume round is due again after it.
    connected.clear()
    seg.live._start_volume()
    qtbot.waitUntil(lambda: bool(connected), timeout=TIMEOUT_MS)
    assert seg.save_labels(str(tmp_path / "labels.nii.gz"))
    qtbot.waitUntil(lambda: len(outcomes) == 4, timeout=TIMEOUT_MS)
    assert outcomes[2:] == ["stopped", "done"]
    assert (tmp_path / "labels.nii.gz").exists()
    assert seg.live._volume_timer.isActive()


def test_one_message_a_round_and_none_for_live_rounds(make_napari_viewer, qtbot,
                                                      small_phantom, monkeypatch):
    """The user's round says once that the result is updated, naming its layer and classes;
    the engine's notes stay in the summary (they were one notification each). Live mode's
    volume rounds, which come by themselves, say nothing."""
    from napari_latentseg._napari._widgets import _segment

    infos = []
    monkeypatch.setattr(_segment, "show_info", infos.append)
    viewer, widget = _dock_after_a_round(make_napari_viewer, qtbot, small_phantom)
    seg = widget.segment_section
    assert len(infos) == 1, infos
    assert infos[0].startswith("'phantom segmentation' updated in")
    assert "background (1)" in infos[0] and "(2)" in infos[0]
    assert "edge snapped to the image" in seg.summary.text()  # a note, in the summary only
    assert not any("snapped" in m for m in infos)
    with qtbot.waitSignal(widget.tasks.task_finished, timeout=TIMEOUT_MS):
        seg.live._start_volume()  # what the pause timer calls
    assert len(infos) == 1, infos


def test_live_mode_catches_up_with_a_score_its_rounds_read(make_napari_viewer, qtbot,
                                                           small_phantom):
    """A score that came for the followed scan starts a volume round, as a fit does; not
    when rounds would not read it (the box unticked, as on a CT scan), nor for another
    layer."""
    viewer, widget = _dock_after_a_round(make_napari_viewer, qtbot, small_phantom)
    seg = widget.segment_section
    if widget.score_tasks.busy:  # the score the first round asked for: not this test's
        with qtbot.waitSignal(widget.score_tasks.task_finished, timeout=TIMEOUT_MS):
            widget.score_tasks.stop()
    scan = viewer.layers["phantom"]
    seg.live._volume_timer.stop()
    from napari_latentseg._napari._widgets._layers import upsert_output

    upsert_output(viewer, scan, "anomaly score", np.zeros(scan.data.shape, np.float32),
                  "image")  # as Reconstruct makes it
    seg.score.use.setChecked(False)
    widget.session.score_ready.emit(scan)
    assert not seg.live._volume_timer.isActive()
    seg.score.use.setChecked(True)
    widget.session.score_ready.emit(viewer.layers["phantom anomaly score"])  # not the scan
    assert not seg.live._volume_timer.isActive()
    widget.session.score_ready.emit(scan)
    assert seg.live._volume_timer.isActive()
