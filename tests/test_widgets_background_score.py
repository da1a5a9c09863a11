"""The anomaly score Segment asks for: made in the background when a round on an MR scan
finds none, used by the rounds after it; stopped by the user, it is not started again;
Reconstruct takes its place; CT scans and the unticked box go without."""

from __future__ import annotations

import threading

import numpy as np
import pytest

from test_widgets import TIMEOUT_MS, add_crop, dock, phantom_crop, run

__all__ = ["dock", "phantom_crop"]  # fixtures used here, imported from test_widgets


def _paint(seg, phantom_crop):
    ann = seg.new_annotation_layer()
    ann.data_setitem((np.full(32, 6), np.full(32, 16), np.arange(32)), phantom_crop[1][6, 16])
    return ann


@pytest.fixture
def gate(monkeypatch):
    """The background score waits after its first step until the test sets the event."""
    from napari_latentseg._napari._widgets import _reconstruct

    real, event = _reconstruct.reconstruct_job, threading.Event()

    def gated(*args, **kwargs):
        steps = real(*args, **kwargs)
        first = True
        try:
            while True:
                ev = next(steps)
                yield ev
                if first and not kwargs.get("reconstruction", True):
                    first = False
                    event.wait(30)
        except StopIteration as end:
            return end.value

    monkeypatch.setattr(_reconstruct, "reconstruct_job", gated)
    yield event
    event.set()


def test_a_round_without_the_score_makes_it_for_the_next(dock, qtbot, phantom_crop):
    """No model, no score: the round comes at once and says the score is being made; it
    arrives hidden, the annotation layer stays selected, and the next round uses it. The
    scan and the strokes are unchanged; Reconstruct then shows the score."""
    viewer, widget = dock
    scan = add_crop(viewer, phantom_crop)
    seg = widget.segment_section
    ann = _paint(seg, phantom_crop)
    painted = np.array(ann.data, copy=True)
    with qtbot.waitSignal(widget.score_tasks.task_finished, timeout=TIMEOUT_MS) as made:
        run(qtbot, widget, lambda: seg.segment(finetune=False))
        assert "+ the anomaly score" not in seg.summary.text()
        assert "being made in the background" in seg.summary.text()
        assert not widget.score_tasks.isHidden()
    assert made.args[1] == "done"
    score = viewer.layers["phantom crop anomaly score"]
    assert not score.visible and not viewer.layers["phantom crop anomalies"].visible
    assert viewer.layers.selection.active.name == ann.name  # (the dock hands out proxies)
    assert "Made in the background" in widget.reconstruct_section.summary.text()
    # The summary says it came; live mode (on since the first round) catches up by itself.
    assert "has come" in seg.summary.text() and "being made" not in seg.summary.text()
    assert seg.live.enabled and seg.live._volume_timer.isActive()
    with qtbot.waitSignal(widget.tasks.task_finished, timeout=TIMEOUT_MS) as caught_up:
        pass
    assert caught_up.args[1] == "done"
    assert "+ the anomaly score" in seg.summary.text()
    run(qtbot, widget, lambda: seg.segment(finetune=False))
    assert "+ the anomaly score" in seg.summary.text()
    assert "being made" not in seg.summary.text() and not widget.score_tasks.busy
    np.testing.assert_array_equal(scan.data, phantom_crop[0])
    np.testing.assert_array_equal(ann.data, painted)
    run(qtbot, widget, widget.reconstruct_section.run)
    assert score.visible and viewer.layers["phantom crop anomalies"].visible


def test_stopped_it_stays_stopped_and_reconstruct_takes_its_place(dock, qtbot, phantom_crop,
                                                                  gate):
    """Stop on the score bar: the next rounds go without it and do not start it again.
    Reconstruct pressed while it runs stops it and makes the score itself (no decline:
    without the score, the next round asks again)."""
    viewer, widget = dock
    add_crop(viewer, phantom_crop)
    seg = widget.segment_section
    _paint(seg, phantom_crop)
    bar = widget.score_tasks
    run(qtbot, widget, lambda: seg.segment(finetune=False))
    assert bar.busy
    with qtbot.waitSignal(bar.task_finished, timeout=TIMEOUT_MS) as stopped:
        bar.stop()
        gate.set()
    assert stopped.args[1] == "stopped"
    gate.clear()
    run(qtbot, widget, lambda: seg.segment(finetune=False))
    assert not bar.busy and "Tip: Reconstruct" in seg.summary.text()
    assert "phantom crop anomaly score" not in {layer.name for layer in viewer.layers}

    viewer.layers.remove("phantom crop")  # the same pixels as a new scan: not declined
    add_crop(viewer, phantom_crop)
    _paint(seg, phantom_crop)
    run(qtbot, widget, lambda: seg.segment(finetune=False))
    assert bar.busy
    rec = widget.reconstruct_section
    with qtbot.waitSignal(bar.task_finished, timeout=TIMEOUT_MS) as superseded:
        run(qtbot, widget, rec.run)
        gate.set()
    assert superseded.args[1] == "stopped"
    assert viewer.layers["phantom crop anomaly score"].visible
    viewer.layers.remove("phantom crop anomaly score")
    gate.set()
    with qtbot.waitSignal(bar.task_finished, timeout=TIMEOUT_MS) as again:
        run(qtbot, widget, lambda: seg.segment(finetune=False))
    assert again.args[1] == "done"


def test_no_background_score_for_ct_or_unticked(dock, qtbot, phantom_crop):
    """A CT scan's score (the contrast density) is not a column, and an unticked box asks
    for nothing: no job on the score bar."""
    viewer, widget = dock
    seg = widget.segment_section
    add_crop(viewer, phantom_crop)
    _paint(seg, phantom_crop)
    seg.score.make.setChecked(False)
    run(qtbot, widget, lambda: seg.segment(finetune=False))
    assert not widget.score_tasks.busy and "Tip: Reconstruct" in seg.summary.text()
    seg.score.make.setChecked(True)
    rng = np.random.default_rng(0)
    ct = np.where(rng.random((6, 32, 32)) < 0.5, -800.0, 40.0).astype(np.float32)
    viewer.add_image(ct, name="ct", metadata={"modality": "CT"})
    ann = seg.new_annotation_layer()
    ann.data_setitem((np.full(4, 2), np.full(4, 3), np.arange(4)), 1)
    ann.data_setitem((np.full(4, 2), np.full(4, 20), np.arange(4)), 2)
    run(qtbot, widget, lambda: seg.segment(finetune=False))
    assert not widget.score_tasks.busy and "anomaly score" not in seg.summary.text()
