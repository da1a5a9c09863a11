"""Writing volumes: geometry checked with nibabel and SimpleITK, dtypes, atomic writes."""

from __future__ import annotations

import re
from pathlib import Path

import nibabel as nib
import nrrd
import numpy as np
import pytest
import SimpleITK as sitk

from napari_latentseg.io import Volume, VolumeIOError, read_volume, save_volume
from napari_latentseg.io import _write as write_mod


def rot(axis: int, deg: float) -> np.ndarray:
    c, s = np.cos(np.radians(deg)), np.sin(np.radians(deg))
    m = np.eye(3)
    a, b = [i for i in range(3) if i != axis]
    m[a, a], m[a, b], m[b, a], m[b, b] = c, -s, s, c
    return m


#: Array-order (z, y, x) directions.
DIRECTIONS = {
    "flipped": np.diag([1.0, -1.0, 1.0]),
    "oblique": rot(0, 25) @ rot(2, -10),
    "oblique_reflected": rot(1, 30) @ np.diag([-1.0, 1.0, 1.0]),
}
SPACING = (3.0, 0.9, 0.7)
ORIGIN = (-20.0, 35.5, -80.25)


def label_data(shape=(5, 7, 9)) -> np.ndarray:
    rng = np.random.default_rng(42)
    return rng.integers(0, 4, size=shape).astype(np.int32)


def expected_lps_itk(spacing, origin, direction) -> np.ndarray:
    """ITK-order LPS index->world matrix from array-order geometry."""
    m = np.eye(4)
    m[:3, :3] = np.asarray(direction)[::-1, ::-1] * np.asarray(spacing)[::-1]
    m[:3, 3] = np.asarray(origin)[::-1]
    return m


@pytest.mark.parametrize("ext", [".nii.gz", ".nrrd", ".nii", ".mha"])
@pytest.mark.parametrize("name", list(DIRECTIONS))
def test_labels_geometry_read_back_everywhere(tmp_path, ext, name):
    direction = DIRECTIONS[name]
    data = label_data()
    path = tmp_path / f"labels{ext}"
    out = save_volume(
        path, data, spacing=SPACING, origin=ORIGIN, direction=direction, kind="labels"
    )
    assert out == path and path.exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temp left
    m_itk = expected_lps_itk(SPACING, ORIGIN, direction)

    # SimpleITK: LPS, x/y/z order
    img = sitk.ReadImage(str(path))
    np.testing.assert_array_equal(sitk.GetArrayFromImage(img), data)
    np.testing.assert_allclose(img.GetSpacing(), SPACING[::-1], rtol=1e-6)
    np.testing.assert_allclose(img.GetOrigin(), ORIGIN[::-1], atol=1e-4)
    np.testing.assert_allclose(
        np.reshape(img.GetDirection(), (3, 3)), direction[::-1, ::-1], atol=1e-5
    )
    assert img.GetPixelIDTypeAsString() == "8-bit unsigned integer"

    # nibabel: RAS affine of the (i, j, k) array
    if ext.startswith(".nii"):
        nimg = nib.load(str(path))
        np.testing.assert_allclose(nimg.affine, np.diag([-1, -1, 1, 1]) @ m_itk, atol=1e-5)
        np.testing.assert_array_equal(np.asanyarray(nimg.dataobj), data.transpose(2, 1, 0))
        assert nimg.get_data_dtype() == np.uint8
        assert int(nimg.header["sform_code"]) == 1 and int(nimg.header["qform_code"]) == 1
        np.testing.assert_allclose(nimg.get_qform(), nimg.get_sform(), atol=1e-5)
    if ext == ".nrrd":
        _, header = nrrd.read(str(path), index_order="C")
        assert header["space"] == "left-posterior-superior"
        np.testing.assert_allclose(header["space directions"], m_itk[:3, :3].T, atol=1e-9)

    # our reader: identical array and geometry
    vol = read_volume(path)
    np.testing.assert_array_equal(vol.data, data)
    assert vol.data.dtype == np.uint8
    np.testing.assert_allclose(vol.spacing, SPACING, rtol=1e-6)
    np.testing.assert_allclose(vol.origin, ORIGIN, atol=1e-4)
    np.testing.assert_allclose(vol.direction, direction, atol=1e-5)


@pytest.mark.parametrize("ext", [".nii.gz", ".nrrd"])
@pytest.mark.parametrize("name", list(DIRECTIONS))
def test_round_trip_read_write_read(tmp_path, ext, name):
    """read -> save_volume(geometry from metadata) -> read gives the same array/geometry."""
    direction = DIRECTIONS[name]
    img = sitk.GetImageFromArray(np.linspace(-5, 5, 4 * 5 * 6, dtype=np.float32).reshape(4, 5, 6))
    img.SetSpacing(SPACING[::-1])
    img.SetOrigin(ORIGIN[::-1])
    img.SetDirection(direction[::-1, ::-1].ravel().tolist())
    src = tmp_path / "src.mha"
    sitk.WriteImage(img, str(src))
    first = read_volume(src)
    out = save_volume(tmp_path / f"copy{ext}", first.data, first.metadata["latentseg_geometry"])
    second = read_volume(out)
    np.testing.assert_array_equal(second.data, first.data)
    assert second.data.dtype == np.float32
    np.testing.assert_allclose(second.spacing, first.spacing, rtol=1e-6)
    np.testing.assert_allclose(second.origin, first.origin, atol=1e-4)
    np.testing.assert_allclose(second.direction, first.direction, atol=1e-5)
    assert second.metadata["direction_note"] == first.metadata["direction_note"]


def test_2d_round_trip(tmp_path):
    data = label_data((6, 8))[..., :7]
    for ext in (".nii.gz", ".nrrd"):
        out = save_volume(
            tmp_path / f"flat{ext}",
            data,
            spacing=(0.5, 2.0),
            origin=(1.0, -3.0),
            direction=np.diag([-1.0, 1.0]),
            kind="labels",
        )
        vol = read_volume(out)
        assert vol.shape == data.shape
        np.testing.assert_array_equal(vol.data, data)
        assert vol.spacing == pytest.approx((0.5, 2.0))
        assert vol.origin == pytest.approx((1.0, -3.0))
        np.testing.assert_allclose(vol.direction, np.diag([-1.0, 1.0]))


@pytest.mark.parametrize(
    ("max_label", "dtype"), [(1, np.uint8), (255, np.uint8), (256, np.uint16), (70000, np.uint32)]
)
def test_label_dtype_is_smallest_unsigned(tmp_path, max_label, dtype):
    data = np.zeros((2, 3, 4), np.int64)
    data[1, 2, 3] = max_label
    out = save_volume(tmp_path / "l.nrrd", data, kind="labels")
    vol = read_volume(out)
    assert vol.data.dtype == dtype
    assert vol.data.max() == max_label


def test_label_float_integers_and_bool_accepted(tmp_path):
    out = save_volume(tmp_path / "f.nii.gz", np.array([[[0.0, 2.0], [3.0, 1.0]]]), kind="labels")
    assert read_volume(out).data.dtype == np.uint8
    out = save_volume(tmp_path / "b.nii.gz", np.ones((2, 2, 2), bool), kind="labels")
    assert read_volume(out).data.dtype == np.uint8


@pytest.mark.parametrize(
    ("data", "match"),
    [
        (np.array([[[0, -1], [2, 3]]]), "negative"),
        (np.array([[[0.0, 0.5], [2.0, 3.0]]]), "non-integer"),
        (np.array([[[0.0, np.nan], [2.0, 3.0]]]), "NaN"),
    ],
)
def test_bad_labels_rejected(tmp_path, data, match):
    with pytest.raises(VolumeIOError, match=rf"bad\.nii\.gz.*{match}"):
        save_volume(tmp_path / "bad.nii.gz", data, kind="labels")
    assert not list(tmp_path.iterdir())


def test_image_dtypes(tmp_path):
    out = save_volume(tmp_path / "f64.nrrd", np.linspace(0, 1, 24).reshape(2, 3, 4))
    assert read_volume(out).data.dtype == np.float32
    out = save_volume(tmp_path / "i16.nii.gz", np.arange(24, dtype=np.int16).reshape(2, 3, 4) - 5)
    vol = read_volume(out)
    assert vol.data.dtype == np.int16
    assert vol.metadata["intensity_range"] == [-5.0, 18.0]


def test_defaults_are_unit_spacing_zero_origin_identity(tmp_path):
    vol = read_volume(save_volume(tmp_path / "d.nrrd", np.zeros((2, 3, 4), np.uint8)))
    assert vol.spacing == (1.0, 1.0, 1.0) and vol.origin == (0.0, 0.0, 0.0)
    np.testing.assert_array_equal(vol.direction, np.eye(3))


def test_geometry_errors(tmp_path):
    geom = Volume(np.zeros((2, 3, 4)), (1, 1, 1), (0, 0, 0), np.eye(3)).geometry()
    with pytest.raises(VolumeIOError, match=r"g\.nrrd: data shape \(3, 3, 4\) does not match"):
        save_volume(tmp_path / "g.nrrd", np.zeros((3, 3, 4)), geom)
    with pytest.raises(VolumeIOError, match="either a geometry dict or spacing"):
        save_volume(tmp_path / "g.nrrd", np.zeros((2, 3, 4)), geom, spacing=(1, 1, 1))
    with pytest.raises(VolumeIOError, match=r"3D data .* geometry is 2D"):
        save_volume(tmp_path / "g.nrrd", np.zeros((2, 3, 4)), spacing=(1, 1))
    with pytest.raises(VolumeIOError, match=r"g\.png: cannot write this file type"):
        save_volume(tmp_path / "g.png", np.zeros((2, 3, 4)))
    with pytest.raises(VolumeIOError, match="only 2D and 3D"):
        save_volume(tmp_path / "g.nrrd", np.zeros((2, 2, 3, 4)))
    assert not list(tmp_path.iterdir())


def test_reference_geometry_and_description(tmp_path):
    ref = save_volume(
        tmp_path / "ref.nrrd",
        np.zeros((2, 3, 4), np.int16),
        spacing=(2, 1, 1),
        origin=(5, 6, 7),
        direction=DIRECTIONS["flipped"],
    )
    out = save_volume(tmp_path / "seg.nii.gz", np.ones((2, 3, 4)), kind="labels", reference=ref)
    vol = read_volume(out)
    assert vol.spacing == pytest.approx((2, 1, 1)) and vol.origin == pytest.approx((5, 6, 7))
    np.testing.assert_allclose(vol.direction, DIRECTIONS["flipped"], atol=1e-6)
    assert b"ref=ref.nrrd" in nib.load(str(out)).header["descrip"].tobytes()


# ----------------------------------------------------------------------------- atomic writes


def test_existing_file_not_overwritten_by_default(tmp_path):
    target = tmp_path / "keep.nii.gz"
    target.write_bytes(b"precious")
    with pytest.raises(FileExistsError, match=r"keep\.nii\.gz: file already exists"):
        save_volume(target, np.zeros((2, 2, 2)))
    assert target.read_bytes() == b"precious"
    assert [p.name for p in tmp_path.iterdir()] == ["keep.nii.gz"]
    save_volume(target, np.zeros((2, 2, 2)), overwrite=True)
    assert read_volume(target).shape == (2, 2, 2)


@pytest.mark.parametrize("ext", [".nii.gz", ".nrrd"])
def test_failed_write_leaves_existing_file_and_no_temp(tmp_path, monkeypatch, ext):
    target = tmp_path / f"keep{ext}"
    target.write_bytes(b"precious")
    seen: list[Path] = []
    real = {
        ".nii.gz": "napari_latentseg.io._nifti.write_nifti",
        ".nrrd": "napari_latentseg.io._nrrd.write_nrrd",
    }[ext]

    def broken(path, *args, **kwargs):
        seen.append(Path(path))
        Path(path).write_bytes(b"half a file")
        raise OSError("disk full")

    monkeypatch.setattr(real, broken)
    pattern = re.escape(target.name) + ": writing failed.*disk full"
    with pytest.raises(VolumeIOError, match=pattern):
        save_volume(target, np.zeros((2, 2, 2)), overwrite=True)
    assert target.read_bytes() == b"precious"
    assert [p.name for p in tmp_path.iterdir()] == [target.name]
    # the temporary file was hidden, in the same folder, and kept the real extension
    (tmp,) = seen
    assert tmp.parent == tmp_path and tmp.name.startswith(".keep.tmp-") and tmp.name.endswith(ext)


def test_temp_file_is_renamed_into_place(tmp_path, monkeypatch):
    calls = []
    real_replace = write_mod.os.replace

    def spy(src, dst):
        calls.append((Path(src).name, Path(dst).name))
        return real_replace(src, dst)

    monkeypatch.setattr(write_mod.os, "replace", spy)
    save_volume(tmp_path / "a.nrrd", np.zeros((2, 2, 2)), overwrite=True)
    assert len(calls) == 1
    assert calls[0][0].startswith(".a.tmp-") and calls[0][0].endswith(".nrrd")
    assert calls[0][1] == "a.nrrd"
