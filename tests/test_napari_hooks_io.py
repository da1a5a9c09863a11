"""napari reader/writer hooks, called directly (plus one viewer test marked gui)."""

from __future__ import annotations

import importlib
import shutil
from pathlib import Path

import numpy as np
import pytest
import yaml
from pydicom.data import get_testdata_file

from napari_latentseg._napari._reader import get_reader, read_path
from napari_latentseg._napari._writer import (
    geometry_from_layer_attributes,
    write_image,
    write_labels,
)
from napari_latentseg.io import read_volume, save_volume

MANIFEST = Path(__file__).parents[1] / "src" / "napari_latentseg" / "napari.yaml"


def rot_x(deg: float) -> np.ndarray:
    c, s = np.cos(np.radians(deg)), np.sin(np.radians(deg))
    return np.array([[1, 0, 0], [0, c, -s], [0, s, c]])


GEOMS = {
    "flipped": dict(
        spacing=(4.0, 0.8, 0.6), origin=(-30.0, 90.0, -100.0), direction=np.diag([1.0, -1.0, 1.0])
    ),
    "oblique": dict(
        spacing=(2.0, 1.0, 0.5),
        origin=(5.0, -6.0, 7.0),
        direction=rot_x(30) @ np.diag([1.0, 1.0, -1.0]),
    ),
}


@pytest.fixture
def notifications(monkeypatch):
    """Record show_info/show_error calls instead of showing them."""
    import napari.utils.notifications as notif

    calls: dict[str, list[str]] = {"info": [], "error": []}
    monkeypatch.setattr(notif, "show_info", lambda msg: calls["info"].append(str(msg)))
    monkeypatch.setattr(notif, "show_error", lambda msg: calls["error"].append(str(msg)))
    return calls


def make_pair(folder: Path, name: str = "flipped") -> tuple[Path, Path]:
    """An image and its label file on the same grid."""
    g = GEOMS[name]
    image = np.linspace(0, 100, 6 * 7 * 8, dtype=np.float32).reshape(6, 7, 8)
    labels = np.zeros((6, 7, 8), np.uint8)
    labels[2:4, 3:6, 1:3] = 1
    img = save_volume(folder / "case_image.nii.gz", image, **g)
    lab = save_volume(folder / "case_label.nrrd", labels, kind="labels", **g)
    return img, lab


# ----------------------------------------------------------------------------- reader


def test_get_reader_declines_what_is_not_ours(tmp_path):
    (tmp_path / "a.png").write_bytes(b"\x89PNG" + b"\0" * 50)
    (tmp_path / "plain").mkdir()
    (tmp_path / "plain" / "notes.txt").write_text("x")
    img, lab = make_pair(tmp_path)
    assert get_reader(str(tmp_path / "a.png")) is None
    assert get_reader(str(tmp_path / "plain")) is None
    assert get_reader([str(img), str(lab)]) is None  # a stack of several paths
    assert get_reader(str(tmp_path / "missing.tif")) is None
    assert callable(get_reader(str(img)))
    assert callable(get_reader([str(lab)]))


def test_get_reader_accepts_dicom_folder_and_extensionless_file(tmp_path):
    folder = Path(get_testdata_file("DICOMDIR")).parent / "98892001"
    assert callable(get_reader(str(folder)))
    shutil.copy(get_testdata_file("MR_small.dcm"), tmp_path / "IM0001")
    assert callable(get_reader(str(tmp_path / "IM0001")))


@pytest.mark.parametrize("name", list(GEOMS))
def test_reader_layers_sit_in_world_space(tmp_path, name):
    from napari.layers import Layer

    img_path, lab_path = make_pair(tmp_path, name)
    g = GEOMS[name]
    ((data, kwargs, layer_type),) = read_path(str(img_path))
    assert layer_type == "image"
    assert kwargs["scale"] == pytest.approx(g["spacing"])
    assert kwargs["translate"] == pytest.approx(g["origin"])
    np.testing.assert_allclose(kwargs["rotate"], g["direction"], atol=1e-6)
    assert kwargs["name"] == "case_image"
    # an MR-like image without modality: 0.5-99.5 percentiles of a 0..100 ramp
    assert kwargs["contrast_limits"] == pytest.approx([0.5, 99.5], abs=0.05)
    assert kwargs["units"] == ("mm", "mm", "mm") and kwargs["axis_labels"] == ("S", "P", "L")
    assert kwargs["metadata"]["format"] == "nifti"
    ((ldata, lkwargs, ltype),) = read_path([str(lab_path)])
    assert ltype == "labels" and ldata.dtype == np.uint8

    # napari's own transform puts every voxel where the Volume formula says
    image_layer = Layer.create(data, kwargs, layer_type)
    label_layer = Layer.create(ldata, lkwargs, ltype)
    vol = read_volume(img_path)
    for idx in ([0, 0, 0], [5, 6, 7], [2, 3, 1]):
        expected = np.asarray(vol.origin) + vol.direction @ (np.asarray(vol.spacing) * idx)
        np.testing.assert_allclose(image_layer.data_to_world(idx), expected, atol=1e-4)
        np.testing.assert_allclose(label_layer.data_to_world(idx), expected, atol=1e-4)


def test_label_detection_needs_name_and_integer_dtype(tmp_path):
    ints = np.zeros((2, 3, 4), np.uint8)
    for name, data, expected in [
        ("brain_seg.nii.gz", ints, "labels"),
        ("BrainMask.nrrd", ints, "labels"),
        ("x_label.nrrd", ints.astype(np.float32), "image"),
        ("t1.nii.gz", ints, "image"),
    ]:
        path = save_volume(tmp_path / name, data)
        assert read_path(str(path))[0][2] == expected, name


def test_reader_error_is_one_notification(tmp_path, notifications):
    bad = tmp_path / "broken.nii.gz"
    bad.write_bytes(b"\x1f\x8b" + b"garbage" * 10)
    reader = get_reader(str(bad))
    assert callable(reader)
    assert reader(str(bad)) == [(None,)]  # napari's "nothing to add" sentinel
    assert len(notifications["error"]) == 1
    assert "broken.nii.gz" in notifications["error"][0]


def test_dicom_folder_names_other_series(notifications):
    folder = Path(get_testdata_file("DICOMDIR")).parent / "98892001"
    ((data, kwargs, layer_type),) = read_path(str(folder))
    assert data.shape == (5, 16, 16) and layer_type == "image"
    assert kwargs["metadata"]["modality"] == "CT"
    assert "SmartScore" in kwargs["name"]
    assert len(notifications["info"]) == 1
    assert "Scout" in notifications["info"][0]


# ----------------------------------------------------------------------------- writer


def test_write_labels_uses_source_geometry(tmp_path):
    from napari.layers import Labels

    img_path, _ = make_pair(tmp_path, "oblique")
    ((data, kwargs, _),) = read_path(str(img_path))
    layer = Labels((data > 50).astype(np.int32), metadata=kwargs["metadata"])  # no transform
    out = tmp_path / "pred.nii.gz"
    out.write_bytes(b"old")  # napari's dialog already confirmed replacing it
    written = write_labels(str(out), layer.data, layer.as_layer_data_tuple()[1])
    assert written == [str(out)]
    back = read_volume(out)
    src = read_volume(img_path)
    np.testing.assert_array_equal(back.data, (data > 50).astype(np.uint8))
    np.testing.assert_allclose(back.spacing, src.spacing, rtol=1e-6)
    np.testing.assert_allclose(back.origin, src.origin, atol=1e-4)
    np.testing.assert_allclose(back.direction, src.direction, atol=1e-5)


@pytest.mark.parametrize("name", list(GEOMS))
def test_write_derives_geometry_from_layer_transform(tmp_path, name):
    from napari.layers import Image, Labels

    g = GEOMS[name]
    data = np.zeros((3, 4, 5), np.uint8)
    data[1, 2, 3] = 7
    layer = Labels(
        data,
        scale=g["spacing"],
        translate=g["origin"],
        rotate=g["direction"],
        metadata={
            "latentseg_geometry": {
                "spacing": [1, 1],
                "origin": [0, 0],
                "direction": [[1, 0], [0, 1]],
                "shape": [9, 9],
            }
        },
    )
    out = write_labels(str(tmp_path / "l.nrrd"), layer.data, layer.as_layer_data_tuple()[1])
    back = read_volume(out[0])
    np.testing.assert_allclose(back.spacing, g["spacing"], rtol=1e-6)
    np.testing.assert_allclose(back.origin, g["origin"], atol=1e-6)
    np.testing.assert_allclose(back.direction, g["direction"], atol=1e-6)
    np.testing.assert_allclose(
        layer.data_to_world([1, 2, 3]),
        np.asarray(back.origin) + back.direction @ (np.asarray(back.spacing) * [1, 2, 3]),
        atol=1e-6,
    )

    image = Image(np.ones((3, 4, 5)), scale=g["spacing"], translate=g["origin"])
    out = write_image(str(tmp_path / "i.nii.gz"), image.data, image.as_layer_data_tuple()[1])
    back = read_volume(out[0])
    assert back.data.dtype == np.float32
    np.testing.assert_allclose(back.spacing, g["spacing"], rtol=1e-6)


def test_geometry_from_attributes_includes_extra_affine():
    extra = np.eye(4)
    extra[:3, 3] = [10, 20, 30]
    geom = geometry_from_layer_attributes(
        {"scale": [2, 2, 2], "translate": [1, 1, 1], "affine": extra, "metadata": {}}, (2, 2, 2)
    )
    assert geom["origin"] == pytest.approx([11, 21, 31])
    assert geom["spacing"] == pytest.approx([2, 2, 2])


def test_manifest_points_at_these_hooks():
    manifest = yaml.safe_load(MANIFEST.read_text())
    commands = {c["id"]: c["python_name"] for c in manifest["contributions"]["commands"]}
    for cid in (
        "napari-latentseg.get_reader",
        "napari-latentseg.write_labels",
        "napari-latentseg.write_image",
    ):
        module, func = commands[cid].split(":")
        assert callable(getattr(importlib.import_module(module), func))
    for writer in manifest["contributions"]["writers"]:
        assert set(writer["filename_extensions"]) <= {".nii.gz", ".nii", ".nrrd", ".mha"}
    (reader,) = manifest["contributions"]["readers"]
    assert reader["accepts_directories"] is True


def test_viewer_model_overlays_image_and_labels(tmp_path):
    """Through a (Qt-free) ViewerModel: both layers share one data-to-world transform."""
    from napari.components import ViewerModel

    viewer = ViewerModel()
    img_path, lab_path = make_pair(tmp_path, "oblique")
    for path in (img_path, lab_path):
        for layer_data in read_path(str(path)):
            viewer._add_layer_from_data(*layer_data)
    image, labels = viewer.layers
    assert type(labels).__name__ == "Labels"
    np.testing.assert_allclose(
        image._data_to_world.affine_matrix, labels._data_to_world.affine_matrix, atol=1e-9
    )
    np.testing.assert_allclose(
        image._data_to_world.affine_matrix, read_volume(img_path).affine, atol=1e-5
    )
    written = write_labels(
        str(tmp_path / "saved.nrrd"), labels.data, labels.as_layer_data_tuple()[1]
    )
    back = read_volume(written[0])
    np.testing.assert_array_equal(back.data, labels.data)
    np.testing.assert_allclose(back.affine, read_volume(img_path).affine, atol=1e-5)


def test_open_and_save_through_napari_plugin_manager(tmp_path, notifications, npe2pm):
    """End to end through npe2: the manifest, our reader and our writer."""
    from napari.components import ViewerModel
    from napari.plugins.io import save_layers
    from npe2 import PluginManifest

    npe2pm.register(PluginManifest.from_file(MANIFEST))
    img_path, lab_path = make_pair(tmp_path, "flipped")
    viewer = ViewerModel()
    viewer.open(str(img_path), plugin="napari-latentseg")
    viewer.open(str(lab_path), plugin="napari-latentseg")
    image, labels = viewer.layers
    assert type(labels).__name__ == "Labels"
    np.testing.assert_allclose(image.scale, GEOMS["flipped"]["spacing"])

    out = tmp_path / "saved_labels.nii.gz"
    written = save_layers(str(out), [labels], plugin="napari-latentseg")
    assert written == [str(out)]
    back = read_volume(out)
    np.testing.assert_array_equal(back.data, labels.data)
    np.testing.assert_allclose(back.affine, read_volume(lab_path).affine, atol=1e-5)

    broken = tmp_path / "broken.nrrd"
    broken.write_bytes(b"NRRD0004\ntype: nonsense\n\n")
    viewer.open(str(broken), plugin="napari-latentseg")  # no exception, no layer
    assert len(viewer.layers) == 2
    assert len(notifications["error"]) == 1 and "broken.nrrd" in notifications["error"][0]

    folder = Path(get_testdata_file("DICOMDIR")).parent / "98892001"
    viewer.open(str(folder), plugin="napari-latentseg")
    assert viewer.layers[-1].data.shape == (5, 16, 16)
    assert any("Scout" in msg for msg in notifications["info"])
