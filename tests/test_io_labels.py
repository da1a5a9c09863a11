"""Label volumes with named structures: class tables, Slicer NRRD fields, NIfTI sidecars."""

from __future__ import annotations

import json

import nrrd
import numpy as np
import pytest

from napari_latentseg.io import VolumeIOError, read_volume, save_labels, save_volume
from napari_latentseg.io.labels_meta import (
    atomic_write_text,
    classes_from_nrrd_header,
    looks_like_label_path,
    normalize_classes,
    parse_itksnap_labels,
    sidecar_paths,
)

GEOM = dict(spacing=(3.0, 0.8, 0.7), origin=(-20.0, 10.0, 5.0), direction=np.diag([1.0, -1, 1]))
CLASSES = {1: ("liver", [0.8, 0.4, 0.2]), 2: "tumour \"A\"",
           7: {"name": "vessel", "color": "#00ff00"}}


def labels_volume() -> np.ndarray:
    data = np.zeros((4, 5, 6), np.uint8)
    data[1:3, 2:4, 1:5] = 1
    data[2, 1, 3] = 2
    return data


def test_normalize_classes_spellings_and_errors():
    table = normalize_classes(CLASSES)
    assert [c["value"] for c in table] == [1, 2, 7]
    assert table[0] == {"value": 1, "name": "liver", "color": [0.8, 0.4, 0.2]}
    assert table[2]["color"] == [0.0, 1.0, 0.0]
    assert len(table[1]["color"]) == 3  # default colour for a class given without one
    as_list = normalize_classes([{"index": "3", "name": "x", "color": [255, 0, 0]},
                                 {"value": 1, "name": "", "color": "0.1 0.2 0.3"}])
    assert as_list == [{"value": 1, "name": "label 1", "color": [0.1, 0.2, 0.3]},
                       {"value": 3, "name": "x", "color": [1.0, 0.0, 0.0]}]
    assert normalize_classes({"1": "background"})[0]["name"] == "background"  # phantom.json
    for bad in ({-1: "x"}, {1.5: "x"}, [{"value": 1}, {"value": 1}], {1: ("a", [1, 2])}, "x"):
        with pytest.raises(ValueError):
            normalize_classes(bad)


@pytest.mark.parametrize("name,expected", [
    ("case.seg.nrrd", True), ("Segmentation-label.nrrd", True), ("ct_label.nrrd", True),
    ("liver_labels.nii.gz", True), ("labels.nii.gz", True), ("brain_seg.nii.gz", True),
    ("my segmentation.mha", True), ("BrainMask.nrrd", True), ("label_map.nii", True),
    ("t1.nii.gz", False), ("lung2_image.nrrd", False), ("ct.nii.gz", False),
])
def test_label_file_names(name, expected):
    assert looks_like_label_path(f"/some/folder/{name}") is expected


def test_nrrd_stores_slicer_segment_fields(tmp_path):
    data = labels_volume()
    out = save_labels(tmp_path / "case.seg.nrrd", data, classes=CLASSES, **GEOM)
    _, header = nrrd.read(str(out), index_order="C")
    assert header["Segmentation_MasterRepresentation"] == "Binary labelmap"
    assert header["Segment0_Name"] == "liver" and header["Segment0_LabelValue"] == "1"
    assert header["Segment0_Layer"] == "0" and header["Segment0_ID"] == "Segment_1"
    assert [float(v) for v in header["Segment0_Color"].split()] == pytest.approx([.8, .4, .2])
    # extent in file index order (i, j, k): i 1..4, j 2..3, k 1..2
    assert header["Segment0_Extent"] == "1 4 2 3 1 2"
    assert header["Segment1_Extent"] == "3 3 1 1 2 2"
    assert header["Segment2_Extent"] == "0 -1 0 -1 0 -1"  # value 7 is absent: empty
    vol = read_volume(out)
    np.testing.assert_array_equal(vol.data, data)
    assert vol.metadata["label_classes"] == normalize_classes(CLASSES)
    assert not list(tmp_path.glob("*.json"))  # NRRD keeps names in its header


def test_slicer_written_seg_nrrd_is_read(tmp_path):
    """A header as 3D Slicer writes it (no LabelValue on old files: segment N is N + 1)."""
    data = labels_volume()
    header = {
        "space": "left-posterior-superior",
        "space directions": np.diag([0.7, 0.8, 3.0]),
        "space origin": np.array([1.0, 2.0, 3.0]),
        "kinds": ["domain"] * 3,
        "Segment0_ID": "Segment_1", "Segment0_Name": "Liver", "Segment0_Color": "0.5 0.1 0",
        "Segment0_Layer": "0", "Segment0_Extent": "1 4 2 3 1 2",
        "Segment1_ID": "Segment_2", "Segment1_Name": "Tumor", "Segment1_Color": "1 1 0",
        "Segment1_Layer": "0",
    }
    path = tmp_path / "Segmentation.seg.nrrd"
    nrrd.write(str(path), data, header, index_order="C")
    classes = read_volume(path).metadata["label_classes"]
    assert [(c["value"], c["name"]) for c in classes] == [(1, "Liver"), (2, "Tumor")]
    assert classes[0]["color"] == pytest.approx([0.5, 0.1, 0.0])
    with pytest.raises(ValueError, match="layers"):
        classes_from_nrrd_header({"Segment0_Layer": "0", "Segment1_Layer": "1"})


@pytest.mark.parametrize("ext", [".nii.gz", ".mha"])
def test_nifti_and_metaimage_use_sidecars(tmp_path, ext):
    data = labels_volume()
    out = save_labels(tmp_path / f"case_seg{ext}", data, classes=CLASSES, **GEOM)
    json_path, txt_path = sidecar_paths(out)
    assert json_path.name == "case_seg.labels.json" and txt_path.name == "case_seg.label.txt"
    doc = json.loads(json_path.read_text())
    assert doc["labels"][0] == {"value": 1, "name": "liver", "color": [0.8, 0.4, 0.2]}
    text = txt_path.read_text()
    assert "ITK-SnAP Label Description File" in text
    assert '    1   204  102   51        1  1  1    "liver"' in text
    assert "\"Clear Label\"" in text
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temp files
    vol = read_volume(out)
    assert vol.metadata["label_classes"] == normalize_classes(CLASSES)

    json_path.unlink()  # ITK-SNAP file alone: names and 8-bit colours come back
    classes = read_volume(out).metadata["label_classes"]
    assert [(c["value"], c["name"]) for c in classes] == [(1, "liver"), (2, "tumour 'A'"),
                                                          (7, "vessel")]
    assert classes[0]["color"] == pytest.approx([0.8, 0.4, 0.2], abs=1 / 255)


def test_itksnap_file_from_itksnap_and_broken_sidecar(tmp_path):
    text = ("# ITK-SnAP Label Description File\n"
            '    0     0    0    0        0  0  0    "Clear Label"\n'
            '    1   255    0    0        1  1  1    "Left kidney"\n'
            '   12     0    0  255     0.50  1  0    "Spleen"\n')
    assert [(c["value"], c["name"], c["color"]) for c in parse_itksnap_labels(text)] == [
        (1, "Left kidney", [1.0, 0.0, 0.0]), (12, "Spleen", [0.0, 0.0, 1.0])]
    with pytest.raises(ValueError, match="line 2"):
        parse_itksnap_labels("# x\n1 2 3\n")

    out = save_volume(tmp_path / "organs_label.nii", labels_volume(), kind="labels")
    sidecar_paths(out)[0].write_text("{not json")
    vol = read_volume(out)  # the scan still opens, the problem is noted
    assert "label_classes" not in vol.metadata
    assert "organs_label.labels.json" in vol.metadata["label_classes_note"]


def test_classes_refused_for_images_and_bad_tables(tmp_path):
    with pytest.raises(VolumeIOError, match="kind='labels'"):
        save_volume(tmp_path / "i.nii.gz", np.zeros((2, 2, 2)), classes={1: "x"})
    with pytest.raises(VolumeIOError, match="class table"):
        save_labels(tmp_path / "l.nii.gz", np.zeros((2, 2, 2), np.uint8), classes={-3: "x"})
    assert not list(tmp_path.iterdir())


def test_atomic_write_text(tmp_path):
    target = tmp_path / "names.txt"
    target.write_text("old")
    atomic_write_text(target, "new\n")
    assert target.read_text() == "new\n"
    assert [p.name for p in tmp_path.iterdir()] == ["names.txt"]
    with pytest.raises(VolumeIOError, match="cannot write"):
        atomic_write_text(tmp_path / "missing" / "x.txt", "x")
