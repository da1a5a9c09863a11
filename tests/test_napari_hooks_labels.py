"""Reader/writer hooks as a clinician meets them: CT contrast, DICOM selections, named labels."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from napari_latentseg._napari import _reader
from napari_latentseg._napari._layer_geometry import axis_kwargs, layer_geometry_kwargs
from napari_latentseg._napari._reader import get_reader, read_path
from napari_latentseg._napari._writer import classes_from_layer_attributes, write_labels
from napari_latentseg.io import read_volume, save_labels, save_volume
from napari_latentseg.io.labels_meta import sidecar_paths
from test_io_contrast_series import write_ct_series

MANIFEST = Path(__file__).parents[1] / "src" / "napari_latentseg" / "napari.yaml"
GEOM = dict(spacing=(2.0, 0.9, 0.8), origin=(4.0, -5.0, 6.0), direction=np.eye(3))


@pytest.fixture
def notifications(monkeypatch):
    import napari.utils.notifications as notif

    calls: dict[str, list[str]] = {"info": [], "error": []}
    monkeypatch.setattr(notif, "show_info", lambda msg: calls["info"].append(str(msg)))
    monkeypatch.setattr(notif, "show_error", lambda msg: calls["error"].append(str(msg)))
    monkeypatch.setattr(_reader, "_recent_series", {})  # no memory from other tests
    return calls


def organ_labels() -> np.ndarray:
    data = np.zeros((3, 4, 5), np.uint8)
    data[1, 1:3, 1:4] = 1
    data[2, 0, 0] = 2
    data[0, 3, 4] = 5  # a value without a name
    return data


CLASSES = {1: ("liver", [0.9, 0.5, 0.1]), 2: ("tumour", [1.0, 0.0, 0.0])}


def test_axis_kwargs_name_the_lps_world():
    assert axis_kwargs(3) == {"units": ("mm", "mm", "mm"), "axis_labels": ("S", "P", "L")}
    assert axis_kwargs(2) == {"units": ("mm", "mm"), "axis_labels": ("P", "L")}


@pytest.mark.parametrize("name", ["organs.seg.nrrd", "organs_label.nii.gz", "anything.nii.gz"])
def test_label_file_opens_as_named_labels(tmp_path, name):
    from napari.layers import Layer

    data = organ_labels()
    path = save_labels(tmp_path / name, data, classes=CLASSES, **GEOM)
    ((ldata, kwargs, layer_type),) = read_path(str(path))
    assert layer_type == "labels"  # named structures make it labels whatever the name
    assert kwargs["features"] == {"index": [1, 2], "name": ["liver", "tumour"]}
    assert kwargs["units"] == ("mm", "mm", "mm") and "contrast_limits" not in kwargs
    layer = Layer.create(ldata, kwargs, layer_type)
    np.testing.assert_allclose(layer.get_color(1), [0.9, 0.5, 0.1, 1.0], atol=1e-6)
    np.testing.assert_allclose(layer.get_color(2), [1.0, 0.0, 0.0, 1.0], atol=1e-6)
    assert layer.get_color(0) is None  # background stays transparent
    assert layer.get_color(5)[3] == 1.0  # an unnamed label is still visible
    assert list(layer.features["name"]) == ["liver", "tumour"]
    assert layer.axis_labels == ("S", "P", "L")


def test_plain_label_file_without_names(tmp_path):
    path = save_volume(tmp_path / "labels.nii.gz", organ_labels(), kind="labels")
    ((_, kwargs, layer_type),) = read_path(str(path))
    assert layer_type == "labels" and "features" not in kwargs and "colormap" not in kwargs


@pytest.mark.parametrize("ext", [".nrrd", ".nii.gz"])
def test_writer_saves_names_and_colours_of_the_layer(tmp_path, ext):
    from napari.layers import Labels

    data = organ_labels()
    layer = Labels(data, scale=GEOM["spacing"], translate=GEOM["origin"],
                   features={"index": [1, 2, 5], "name": ["liver", "tumour", "cyst"]},
                   colormap={None: [0, 0, 0, 1], 1: [0, 0, 1, 1], 2: [0, 1, 0, 1],
                             5: [1, 1, 0, 1]})
    out = tmp_path / f"edited{ext}"
    assert write_labels(str(out), layer.data, layer.as_layer_data_tuple()[1]) == [str(out)]
    classes = read_volume(out).metadata["label_classes"]
    assert [(c["value"], c["name"], c["color"]) for c in classes] == [
        (1, "liver", [0.0, 0.0, 1.0]), (2, "tumour", [0.0, 1.0, 0.0]), (5, "cyst", [1, 1, 0])]
    assert sidecar_paths(out)[0].is_file() is (ext != ".nrrd")
    ((_, kwargs, _),) = read_path(str(out))  # and the reader shows the same names again
    assert kwargs["features"]["name"] == ["liver", "tumour", "cyst"]


def test_writer_uses_metadata_classes_and_skips_unnamed_layers(tmp_path):
    from napari.layers import Labels

    # the phantom's ground truth carries {"1": "background", ...} in its metadata
    layer = Labels(organ_labels(), metadata={"classes": {"1": "background", "2": "scalp"}})
    classes = classes_from_layer_attributes(layer.as_layer_data_tuple()[1])
    assert [(c["value"], c["name"]) for c in classes] == [(1, "background"), (2, "scalp")]
    colour = layer.colormap.map(np.array([1]))[0][:3]  # what the user sees is saved
    assert classes[0]["color"] == pytest.approx(colour.tolist(), abs=1e-6)

    plain = Labels(organ_labels())
    assert classes_from_layer_attributes(plain.as_layer_data_tuple()[1]) is None
    out = write_labels(str(tmp_path / "plain.nii.gz"), plain.data,
                       plain.as_layer_data_tuple()[1])
    assert [p.name for p in tmp_path.iterdir()] == ["plain.nii.gz"]
    assert "label_classes" not in read_volume(out[0]).metadata


# ------------------------------------------------------------------------ CT and DICOM


def test_ct_folder_opens_with_its_window(tmp_path, notifications):
    from napari.layers import Layer

    write_ct_series(tmp_path, 4, series_uid="2.1", window=(50, 350))
    ((data, kwargs, layer_type),) = read_path(str(tmp_path))
    assert layer_type == "image"
    assert kwargs["contrast_limits"] == [-125.0, 225.0]
    assert kwargs["metadata"]["display_window"]["source"] == "dicom window"
    layer = Layer.create(data, kwargs, layer_type)
    assert list(layer.contrast_limits) == [-125.0, 225.0]
    assert tuple(str(u) for u in layer.units) == ("millimeter",) * 3


def test_single_file_and_file_list_open_the_series(tmp_path, notifications):
    expected = write_ct_series(tmp_path, 4, series_uid="2.2")
    write_ct_series(tmp_path, 2, series_uid="2.3", prefix="X")
    files = sorted(str(p) for p in tmp_path.glob("IM*"))
    assert get_reader(files) is read_path  # several DICOM files: one series
    assert get_reader([files[0], __file__]) is None  # not all DICOM: not ours
    ((data, kwargs, _),) = read_path(files)
    np.testing.assert_array_equal(data, expected)
    assert kwargs["name"] == f"{tmp_path.name} - series 2.2"

    notifications_before = len(notifications["info"])
    _reader._recent_series.clear()
    ((data, kwargs, _),) = read_path(files[2])  # one file: its whole series
    np.testing.assert_array_equal(data, expected)
    assert kwargs["metadata"]["dicom_series"]["n_files"] == 4
    assert len(notifications["info"]) == notifications_before + 1  # "other series: X..."
    # napari's plain "Open Files" then hands over the other files one by one: skipped once
    assert read_path(files[0]) == [(None,)] and read_path(files[1]) == [(None,)]
    assert len(notifications["info"]) == notifications_before + 2
    assert read_path(str(tmp_path / "X0000"))[0][0].shape == (2, 8, 9)  # other series: read


def test_open_files_through_napari(tmp_path, notifications, npe2pm):
    """viewer.open with several DICOM files: one layer, stacked or not.

    napari matches files by name patterns, so through viewer.open the files need a DICOM
    extension (extension-less DICOM is opened through its folder, or get_reader directly).
    """
    from napari.components import ViewerModel
    from npe2 import PluginManifest

    npe2pm.register(PluginManifest.from_file(MANIFEST))
    write_ct_series(tmp_path / "a", 5, series_uid="3.1", prefix="I", window=(40, 80),
                    ext=".dcm")
    files = sorted(str(p) for p in (tmp_path / "a").iterdir())
    viewer = ViewerModel()
    viewer.open(files, plugin="napari-latentseg")  # one by one
    assert len(viewer.layers) == 1 and viewer.layers[0].data.shape == (5, 8, 9)
    assert list(viewer.layers[0].contrast_limits) == [0.0, 80.0]
    assert viewer.dims.axis_labels == ("S", "P", "L")
    _reader._recent_series.clear()
    viewer.open(files, plugin="napari-latentseg", stack=True)  # as a stack: one list
    assert len(viewer.layers) == 2 and viewer.layers[1].data.shape == (5, 8, 9)


def test_layer_geometry_kwargs_matches_reader(tmp_path):
    path = save_volume(tmp_path / "t1.nii.gz", np.ones((2, 3, 4), np.float32), **GEOM)
    vol = read_volume(path)
    kwargs = layer_geometry_kwargs(vol)
    assert kwargs["scale"] == pytest.approx(GEOM["spacing"])
    assert kwargs["axis_labels"] == ("S", "P", "L") and kwargs["units"] == ("mm",) * 3



def test_every_slice_is_on_the_slider_whatever_the_headers_float_noise(tmp_path):
    """A spacing stored as 6.499999999999998 mm (brain1's NRRD) made napari count 24 of 25
    slices (the last one could not be shown or painted); the reader's layer reaches all,
    a flipped axis too, and the files written back keep the scan's geometry."""
    from napari.components import ViewerModel

    geom = {"spacing": (6.499999999999998, 0.7812499999999999, 0.7812499999999999),
            "origin": (-77.99999999999996, 99.60937499999999, -99.60937499999999),
            "direction": np.diag([1.0, -1.0, 1.0])}
    path = save_volume(tmp_path / "thick.nrrd", np.zeros((25, 6, 7), np.float32), **geom)
    (data, kwargs, _), = read_path(str(path))
    viewer = ViewerModel()
    viewer.add_image(data, **kwargs)
    assert viewer.dims.nsteps[0] == 25
    assert kwargs["scale"][0] == pytest.approx(6.5, abs=1e-12)
    layer = viewer.layers[0]
    (out,) = write_labels(str(tmp_path / "seg.nrrd"), np.ones(data.shape, np.uint8),
                          layer.as_layer_data_tuple()[1])
    assert read_volume(out).spacing == read_volume(path).spacing  # the scan's, to the bit
    rng = np.random.default_rng(0)
    for _ in range(40):  # random thick spacings and origins: about one in six lost a slice
        n, s = int(rng.integers(2, 300)), float(rng.uniform(0.3, 7))
        t = float(rng.uniform(-300, 300))
        vol = read_volume(save_volume(tmp_path / f"r{n}_{s}.nrrd", np.zeros((n, 2, 2), np.uint8),
                                      spacing=(s, 1.0, 1.0), origin=(t, 0.0, 0.0)))
        viewer.layers.clear()
        viewer.add_image(vol.data, **layer_geometry_kwargs(vol))
        assert viewer.dims.nsteps[0] == n, (n, s, t)

@pytest.mark.gui
def test_ct_opens_windowed_and_the_user_can_leave_the_window(tmp_path, make_napari_viewer,
                                                            npe2pm):
    """Soft-tissue window at opening; the slider still reaches all HU; the user's window
    survives opening more files."""
    from npe2 import PluginManifest

    npe2pm.register(PluginManifest.from_file(MANIFEST))
    hu = np.full((4, 16, 16), -1000, np.int16)
    hu[:, 4:12, 4:12] = 1500
    path = save_volume(tmp_path / "chest.nrrd", hu)
    viewer = make_napari_viewer()
    (layer,) = viewer.open(str(path), plugin="napari-latentseg")
    assert list(layer.contrast_limits) == [-160.0, 240.0]
    assert list(layer.contrast_limits_range) == [-1000.0, 1500.0]
    layer.contrast_limits = (-1350.0, 150.0)  # the clinician's lung window
    labels = save_volume(tmp_path / "chest_label.nrrd", (hu > 0).astype(np.uint8),
                         kind="labels")
    viewer.open(str(labels), plugin="napari-latentseg")
    viewer.open(str(path), plugin="napari-latentseg")
    assert list(layer.contrast_limits) == [-1350.0, 150.0]
    assert list(viewer.layers[-1].contrast_limits_range) == [-1000.0, 1500.0]


def test_dicom_folder_named_like_labels_is_an_image(tmp_path, notifications):
    write_ct_series(tmp_path / "liver_segmentation", 2, series_uid="4.1")
    assert read_path(str(tmp_path / "liver_segmentation"))[0][2] == "image"
