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
    new = viewer.add_image(chest_ct(5, nodule=True), name="new", scale=(3.0, 1.5, 1.5),
                           metadata=dict(meta))
    widget.scan.set_layer(new)
    with qtbot.waitSignal(widget.tasks.task_finished, timeout=TIMEOUT_MS) as blocker:
        assert widget.reconstruct_section.run()
    assert blocker.args[1] == "done", widget.tasks.status_text
    assert "(contrast, against the model's normative statistics)" in \
        widget.reconstruct_section.summary.text()
    score = np.asarray(viewer.layers["new anomaly score"].data)
    assert score[3:5, 22:26, 18:22].mean() > np.percentile(score[:, 12:36, 12:36], 95)
