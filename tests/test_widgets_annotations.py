"""The Segment section's annotation tools driven like a user: named classes, locks, start
from a layer or file, autosave and restore. Tiny crops; one short fit in the lock test."""

from __future__ import annotations

import numpy as np
import pytest

from napari_latentseg._napari._widgets._layers import same_layer
from test_widgets import TIMEOUT_MS, add_crop, dock, errors, fit, notes, phantom_crop, run

pytestmark = pytest.mark.gui

__all__ = ["dock", "notes", "phantom_crop"]  # fixtures used here, imported from test_widgets


def _regions(shape) -> np.ndarray:
    """Background 1, a block of 2 and a block of 3 on every slice."""
    labels = np.ones(shape, np.uint8)
    labels[:, 4:14, 4:14] = 2
    labels[:, 18:28, 16:26] = 3
    return labels


def _add_labels_on(viewer, scan, data, name, **kw):
    return viewer.add_labels(data, name=name, scale=scan.scale, translate=scan.translate, **kw)


def test_class_table_names_colours_and_save(dock, qtbot, phantom_crop, tmp_path, notes):
    from napari_latentseg.io import read_volume

    viewer, widget = dock
    scan = add_crop(viewer, phantom_crop)
    seg = widget.segment_section
    table = seg.classes
    ann = seg.new_annotation_layer()
    assert same_layer(seg.annotations.layer(), ann) and same_layer(table.layer(), ann)
    assert table.names() == {1: "background", 2: "structure"}  # default rows
    assert list(ann.features["name"]) == ["background", "structure"]
    table.rename(2, "liver")
    assert table.add_class() == 3 and ann.selected_label == 3
    table.rename(3, "tumour")
    table.set_color(3, [1.0, 0.0, 0.0])
    assert list(ann.features["index"]) == [1, 2, 3]
    assert list(ann.features["name"]) == ["background", "liver", "tumour"]
    np.testing.assert_allclose(ann.colormap.map(np.array([3]))[0], [1, 0, 0, 1], atol=1e-6)

    # a starting segmentation takes the table's names and colours; Save labels writes them
    source = _add_labels_on(viewer, scan, _regions(scan.data.shape), "drawn elsewhere")
    seg.box.source.set_layer(source)
    assert seg.box.use_as_segmentation()
    pred = viewer.layers["phantom crop segmentation"]
    np.testing.assert_array_equal(pred.data, source.data)
    assert dict(zip(pred.features["index"], pred.features["name"], strict=True))[3] == "tumour"
    np.testing.assert_allclose(pred.colormap.map(np.array([3]))[0], [1, 0, 0, 1], atol=1e-6)
    assert pred.colormap.map(np.array([1]))[0][3] == 0  # background shows the scan
    for name in ("seg.nrrd", "seg.nii.gz"):
        run(qtbot, widget, lambda name=name: seg.save_labels(str(tmp_path / name)))
        vol = read_volume(tmp_path / name)
        np.testing.assert_array_equal(vol.data, source.data)
        classes = {c["value"]: c for c in vol.metadata["label_classes"]}
        assert {v: c["name"] for v, c in classes.items()} == {
            1: "background", 2: "liver", 3: "tumour"}
        np.testing.assert_allclose(classes[3]["color"], [1, 0, 0], atol=0.01)
    assert (tmp_path / "seg.labels.json").exists()  # NIfTI: names in sidecars
    assert not errors(notes), notes


def test_start_from_label_file_copies_into_new_layer(dock, qtbot, phantom_crop, tmp_path):
    from napari_latentseg.io import save_labels

    viewer, widget = dock
    scan = add_crop(viewer, phantom_crop)
    seg = widget.segment_section
    labels = _regions(scan.data.shape)
    path = tmp_path / "atlas_label.nii.gz"
    save_labels(path, labels, spacing=scan.scale, origin=scan.translate,
                classes={1: "background", 2: "kidney", 3: ("cyst", [0, 0, 1])})

    run(qtbot, widget, lambda: seg.box.open_label_file(str(path)))
    opened = seg.box.source.layer()
    assert opened is not None and opened.name.startswith("atlas_label")
    assert list(opened.features["name"]) == ["background", "kidney", "cyst"]
    before = opened.data.copy()

    ann = seg.box.copy_to_annotations()
    assert ann is not None and not same_layer(ann, opened)
    assert same_layer(seg.annotations.layer(), ann)
    assert "atlas_label" in ann.name
    np.testing.assert_array_equal(ann.data, labels)
    np.testing.assert_allclose(ann.scale, scan.scale)
    assert seg.classes.names() == {1: "background", 2: "kidney", 3: "cyst"}  # names shown
    np.testing.assert_allclose(ann.colormap.map(np.array([3]))[0][:3], [0, 0, 1], atol=0.01)
    # painting the copy (and renaming its classes) leaves the source layer alone
    ann.data_setitem((np.array([0]), np.array([0]), np.array([0])), 3)
    seg.classes.rename(2, "left kidney")
    np.testing.assert_array_equal(opened.data, before)
    assert list(opened.features["name"]) == ["background", "kidney", "cyst"]
    assert ann.data[0, 0, 0] == 3 and not np.shares_memory(ann.data, opened.data)

    # a layer on another grid is refused with a sentence
    other = viewer.add_labels(np.zeros((3, 4, 4), np.uint8), name="elsewhere")
    seg.box.source.set_layer(other)
    assert seg.box.copy_to_annotations() is None
    assert not seg.box.use_as_segmentation()


def test_locked_class_keeps_its_voxels(dock, qtbot, phantom_crop):
    viewer, widget = dock
    _, truth, _ = phantom_crop
    add_crop(viewer, phantom_crop)
    fit(qtbot, widget, steps=10)
    seg = widget.segment_section
    ann = seg.new_annotation_layer()
    for z in (3, 8):
        index = np.nonzero(np.ones(truth[z].shape, bool))
        ann.data_setitem((np.full(index[0].size, z),) + index, truth[z][index])
    run(qtbot, widget, lambda: seg.segment(finetune=False))
    # Every class painted has a row to name and lock, table row or not before the round.
    painted = {int(v) for v in np.unique(truth[[3, 8]])}
    assert painted <= {c["value"] for c in seg.classes.classes()}
    pred = viewer.layers["phantom crop segmentation"]
    locked = int(np.unique(truth[truth > 1])[0])
    # the user finishes that structure by hand, then locks it
    edited = pred.data.copy()
    edited[edited == locked] = 1
    edited[5, 10:20, 10:20] = locked
    pred.data = edited
    region = edited == locked
    seg.classes.merge([{"value": locked, "name": "finished", "color": [0, 1, 0]}])
    seg.classes.set_locked(locked, True)
    assert seg.classes.locked() == [locked]
    assert ann.metadata["latentseg_locked"] == [locked]

    index = np.nonzero(np.ones(truth[6].shape, bool))  # a new slice painting that class too
    ann.data_setitem((np.full(index[0].size, 6),) + index, truth[6][index])
    run(qtbot, widget, lambda: seg.segment(finetune=False))
    np.testing.assert_array_equal(pred.data == locked, region)
    assert "Locked" in seg.summary.text()


def test_autosave_throttled_and_restored_after_a_crash(make_napari_viewer, qtbot, phantom_crop,
                                                       recovery_dir):
    from napari_latentseg import recovery

    def open_dock():
        viewer = make_napari_viewer()
        _, widget = viewer.window.add_plugin_dock_widget("napari-latentseg", "LatentSeg")
        return viewer, widget

    viewer, widget = open_dock()
    add_crop(viewer, phantom_crop)
    box = widget.segment_section.box
    box.autosaver.timer.setInterval(300)
    saves: list[str] = []
    box.autosaver.saved.connect(saves.append)
    ann = box.new_layer()
    box.table.rename(2, "lesion")
    box.table.set_locked(1, True)
    with qtbot.waitSignal(box.autosaver.saved, timeout=TIMEOUT_MS):
        for i in range(5):  # five quick strokes: one save
            ann.data_setitem((np.array([2]), np.array([i]), np.array([i])), 2)
    qtbot.wait(600)
    assert len(saves) == 1
    snap = recovery.load_snapshot(saves[0])
    np.testing.assert_array_equal(snap.labels, ann.data)
    assert snap.name == ann.name and snap.locked == [1]
    assert {c["value"]: c["name"] for c in snap.classes}[2] == "lesion"
    assert snap.path.parent.parent == recovery_dir

    # accepted corrections reach the annotation layer, hence the next autosave
    seg = widget.segment_section
    scan = widget.scan_layer()
    assert seg.set_segmentation(scan, np.ones(scan.data.shape, np.uint8), [])
    pred = viewer.layers["phantom crop segmentation"]
    pred.data_setitem((np.array([7]), np.array([3]), np.array([4])), 2)
    with qtbot.waitSignal(box.autosaver.saved, timeout=TIMEOUT_MS):
        assert seg.accept_corrections() == 1
    snap = recovery.load_snapshot(saves[-1])
    assert len(saves) == 2 and snap.labels[7, 3, 4] == 2
    np.testing.assert_array_equal(snap.labels, ann.data)

    # The app "crashes" (nothing saved by hand); the same scan is opened in a new viewer.
    # (The first viewer stays open: make_napari_viewer closes it; closing twice crashes Qt.)
    viewer2, widget2 = open_dock()
    add_crop(viewer2, phantom_crop)
    box2 = widget2.segment_section.box
    assert box2.recovery_bar.isVisibleTo(widget2) and "lesion" not in box2.recovery_bar.text.text()
    assert ann.name in box2.recovery_bar.text.text()
    restored = box2.recovery_bar.restore()
    assert len(restored) == 1 and not box2.recovery_bar.isVisibleTo(widget2)
    layer = box2.layer()
    assert layer.name == ann.name
    np.testing.assert_array_equal(layer.data, snap.labels)
    assert box2.table.names()[2] == "lesion" and box2.table.locked() == [1]
    # restored annotations keep autosaving to the same file; a rescan offers nothing more
    box2.on_scan_changed()
    assert not box2.recovery_bar.isVisibleTo(widget2)
    assert box2.recovery_bar.offer(snap.path.parent, set()) == 1
    assert box2.recovery_bar.discard() == 1 and not recovery.list_snapshots(snap.path.parent)


def test_object_class_in_the_dock(dock, qtbot, phantom_crop):
    """"Object class": with three classes painted, that class comes from a two-class round
    (the summary says so), live slices take it from the two-class part too, and the next
    round continues both parts."""
    from napari_latentseg.engine.segment import ObjectLiveSegmenter

    viewer, widget = dock
    img, truth, _ = phantom_crop
    scan = add_crop(viewer, phantom_crop)
    seg = widget.segment_section
    ann = seg.new_annotation_layer()
    for value, tissue in ((1, 1), (2, 6), (3, 5)):  # air, white matter, grey matter
        at = np.argwhere(truth[6] == tissue)[:10]
        ann.data_setitem((np.full(len(at), 6), at[:, 0], at[:, 1]), value)
    seg.object_class.setValue(2)
    assert seg.object_class.text() == "2 structure"  # the id with the class table's name
    seg.classes.table.item(1, 2).setText("white matter")
    assert seg.object_class.text() == "2 white matter"
    run(qtbot, widget, lambda: seg.segment(finetune=False))
    assert "class 2 from a two-class round" in seg.summary.text()
    assert seg.live_box.isChecked()  # offered as with every round
    parts = seg._last_round[2].object_parts
    assert parts is not None and parts[0].classes == [1, 2]
    assert not hasattr(parts[0], "model")  # only what the next round reads is kept
    out = next(layer for layer in viewer.layers if layer.name.endswith("segmentation"))
    before = np.array(out.data, copy=True)
    z = 7
    viewer.dims.set_point(0, float(scan.data_to_world((z, 0, 0))[0]))
    more = np.argwhere(truth[z] == 5)[:5]
    with qtbot.waitSignal(seg.live.slice_updated, timeout=TIMEOUT_MS) as blocker:
        ann.data_setitem((np.full(len(more), z), more[:, 0], more[:, 1]), 3)
        ann.events.paint()  # as a brush stroke ends
    assert blocker.args[0] == z and isinstance(seg.live._segmenter, ObjectLiveSegmenter)
    assert (out.data[z][more[:, 0], more[:, 1]] == 3).all()
    np.testing.assert_array_equal(np.delete(out.data, z, 0), np.delete(before, z, 0))
    seg.live_box.setChecked(False)  # the round after the pause, by hand
    run(qtbot, widget, lambda: seg.segment(finetune=False))
    assert seg._last_round[2].round_no == 2
    seg.object_class.setValue(0)
    seg.classes.table.item(0, 2).setText("air")
    assert seg.object_class.text() == "none" and seg._object_class() is None
    np.testing.assert_array_equal(viewer.layers["phantom crop"].data, img)
