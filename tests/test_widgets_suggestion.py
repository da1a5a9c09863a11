"""*Next slice*: the viewer moves to the suggested slice, superior at the top of a coronal or
sagittal slice (napari drew the vertex at the bottom), axial slices as before, and not
transposed after a visit to another orientation."""

from __future__ import annotations

import numpy as np


def test_next_slice_shows_superior_at_the_top():
    from napari.components import ViewerModel

    from napari_latentseg._napari._widgets._suggestion import go_to_suggestion

    viewer = ViewerModel()
    scan = viewer.add_image(np.zeros((5, 6, 7), np.float32), scale=(6.5, 0.8, 0.8),
                            translate=(-10.0, 0.0, 0.0), axis_labels=("S", "P", "L"))
    ann = viewer.add_labels(np.zeros((5, 6, 7), np.uint8), scale=scan.scale,
                            translate=scan.translate)
    assert go_to_suggestion(viewer, {"axis": 2, "index": 3, "score": 0.5}, scan, ann)
    assert viewer.dims.order[-2:] == (0, 1)  # a sagittal slice: S down the rows, P across
    assert viewer.dims.point[2] == 3 * 0.8
    assert viewer.camera.orientation2d[0] == "up"
    assert viewer.layers.selection.active is ann  # ready to paint
    assert go_to_suggestion(viewer, {"axis": 0, "index": 1, "score": 0.5}, scan, ann)
    assert viewer.dims.order[-2:] == (1, 2) and viewer.dims.point[0] == -10.0 + 6.5
    assert viewer.camera.orientation2d[0] == "down"  # axial: anterior at the top, as before


def test_a_layer_in_another_frame_keeps_the_cameras_orientation():
    from napari.components import ViewerModel

    from napari_latentseg._napari._widgets._suggestion import go_to_suggestion

    viewer = ViewerModel()
    scan = viewer.add_image(np.zeros((5, 6, 7), np.float32))  # axes 0, 1, 2: unknown frame
    assert go_to_suggestion(viewer, {"axis": 2, "index": 3, "score": 0.5}, scan, None)
    assert viewer.camera.orientation2d[0] == "down"
