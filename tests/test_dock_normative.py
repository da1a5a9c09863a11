"""Normative anomaly statistics from the dock: fit on reference scans, score a new one."""

from __future__ import annotations

import numpy as np
import pytest

pytestmark = pytest.mark.gui

TIMEOUT_MS = 60_000


def test_fit_with_normative_statistics_scores_a_new_scan(make_napari_viewer, qtbot, chest_ct):
    """Ticking *Normative anomaly statistics* adds them (of the ticked scans, in mm) to the
    fitted model; Reconstruct on another scan then scores it against them."""
    viewer = make_napari_viewer()
    _, widget = viewer.window.add_plugin_dock_widget("napari-latentseg", "LatentSeg")
    ms = widget.model_section
    assert not widget.reconstruct_section.with_self.isEnabled()  # no statistics, no meaning
    ms.config.setCurrentText("tiny")
    meta = {"modality": "CT"}
    refs = [viewer.add_image(chest_ct(i), name=f"ref {i}", scale=(3.0, 1.5, 1.5),
                             metadata=dict(meta)) for i in range(2)]
    ms.fit_on.set_checked(refs)
    ms.steps.setValue(3)
    ms.normative.setChecked(True)
    with qtbot.waitSignal(widget.fit_tasks.task_finished, timeout=TIMEOUT_MS) as blocker:
        assert ms.fit()
    assert blocker.args[1] == "done", widget.fit_tasks.status_text
    norm = widget.session.active_model.anomaly["normative"]
    assert norm["method"] == "contrast" and norm["n_scans"] == 2
    assert widget.reconstruct_section.with_self.isEnabled()
    new = viewer.add_image(chest_ct(5, nodule=True), name="new", scale=(3.0, 1.5, 1.5),
                           metadata=dict(meta))
    widget.scan.set_layer(new)
    rs = widget.reconstruct_section
    # Then also against the scan itself: the same layers, replaced, and the summary says so.
    for with_self, ref in ((False, ""), (True, " and the scan itself")):
        rs.with_self.setChecked(with_self)
        with qtbot.waitSignal(widget.tasks.task_finished, timeout=TIMEOUT_MS) as blocker:
            assert rs.run()
        assert blocker.args[1] == "done", widget.tasks.status_text
        assert f"(contrast, against the model's normative statistics{ref})" in \
            rs.summary.text()
        score = np.asarray(viewer.layers["new anomaly score"].data)
        assert score[3:5, 22:26, 18:22].mean() > np.percentile(score[:, 12:36, 12:36], 95)

def test_stop_during_the_normative_statistics_keeps_the_fitted_model(make_napari_viewer, qtbot,
                                                                       chest_ct, monkeypatch):
    """Stop after the fit, while the statistics are computed: the fitted model is kept (and
    made active), without statistics, and the message says so."""
    from napari.utils.notifications import notification_manager

    import napari_latentseg.pipeline as pipeline
    from napari_latentseg.runtime.progress import Cancelled

    def stopped(*args, **kwargs):
        yield {"stage": "density sample", "done": 0, "total": 1}
        raise Cancelled("anomaly features")

    monkeypatch.setattr(pipeline, "normative_job", stopped)
    messages = []
    notification_manager.notification_ready.connect(lambda n: messages.append(n.message))
    viewer = make_napari_viewer()
    _, widget = viewer.window.add_plugin_dock_widget("napari-latentseg", "LatentSeg")
    ms = widget.model_section
    ms.config.setCurrentText("tiny")
    viewer.add_image(chest_ct(0), name="ref", scale=(3.0, 1.5, 1.5), metadata={"modality": "CT"})
    ms.steps.setValue(3)
    ms.normative.setChecked(True)
    with qtbot.waitSignal(widget.fit_tasks.task_finished, timeout=TIMEOUT_MS):
        assert ms.fit()
    model = widget.session.active_model
    assert model is not None and model.info["steps"] == 3
    assert "normative" not in (model.anomaly or {})
    assert any("Normative statistics were stopped" in m for m in messages)
