"""The dock's model section: what it says of the active model against the chosen scan."""

from __future__ import annotations

import numpy as np
import pytest

pytestmark = pytest.mark.gui


def test_a_model_of_another_modality_is_flagged_before_any_job(make_napari_viewer,
                                                              tiny_model, small_phantom):
    viewer = make_napari_viewer()
    _, dock = viewer.window.add_plugin_dock_widget("napari-latentseg", "LatentSeg")
    img = small_phantom.image.astype(np.float32)
    mr = viewer.add_image(img, name="mr", metadata={"modality": "MR"})
    ct = viewer.add_image((img - img.min()) / np.ptp(img) * 1400 - 1000, name="ct")
    dock.add_model(tiny_model, "loaded")  # fitted on MR
    info = dock.model_section.model_info
    dock.scan.set_layer(mr)
    assert "MR scans" in info.text() and "but this scan is" not in info.text()
    dock.scan.set_layer(ct)  # no header: the intensities say CT
    assert "fitted on MR scans but this scan is CT (guessed" in info.text()
    dock.scan.set_layer(mr)
    assert "but this scan is" not in info.text()
