"""Reading NIfTI, NRRD and MetaImage: geometry conventions checked against SimpleITK/nibabel."""

from __future__ import annotations

import gzip
import os
from pathlib import Path

import nibabel as nib
import nrrd
import numpy as np
import pytest
import SimpleITK as sitk
from nibabel.testing import data_path as NIB_DATA

from napari_latentseg.io import (
    Volume,
    VolumeIOError,
    geometry_from_dict,
    is_supported_path,
    read_volume,
)
from napari_latentseg.io._volume import describe_direction

REQUIRED_KEYS = {
    "modality",
    "source_path",
    "format",
    "original_dtype",
    "intensity_range",
    "latentseg_geometry",
    "direction_note",
}


def rotation(ax: str, deg: float) -> np.ndarray:
    c, s = np.cos(np.radians(deg)), np.sin(np.radians(deg))
    if ax == "x":
        return np.array([[1, 0, 0], [0, c, -s], [0, s, c]])
    if ax == "y":
        return np.array([[c, 0, s], [0, 1, 0], [-s, 0, c]])
    return np.array([[c, -s, 0], [s, c, 0], [0, 0, 1]])


#: ITK-order (x, y, z) LPS direction matrices used throughout.
DIRECTIONS_ITK = {
    "identity": np.eye(3),
    "yflip": np.diag([1.0, -1.0, 1.0]),
    "oblique": rotation("z", 20) @ rotation("x", -35),
    "oblique_reflected": rotation("y", 15) @ np.diag([1.0, 1.0, -1.0]),
}


def ramp(shape: tuple[int, ...], dtype=np.int16) -> np.ndarray:
    return (np.arange(int(np.prod(shape))) % 251).reshape(shape).astype(dtype)


def sitk_geometry(path: Path) -> tuple[np.ndarray, tuple, tuple, np.ndarray]:
    img = sitk.ReadImage(str(path))
    d = img.GetDimension()
    return (
        sitk.GetArrayFromImage(img),
        img.GetSpacing(),
        img.GetOrigin(),
        np.asarray(img.GetDirection()).reshape(d, d),
    )


def assert_matches_sitk(vol: Volume, path: Path) -> None:
    arr, spacing, origin, direction = sitk_geometry(path)
    np.testing.assert_array_equal(vol.data, arr)
    np.testing.assert_allclose(vol.spacing, spacing[::-1], rtol=1e-6)
    np.testing.assert_allclose(vol.origin, origin[::-1], atol=1e-4)
    np.testing.assert_allclose(vol.direction, direction[::-1, ::-1], atol=1e-5)


def world_zyx(vol: Volume, index) -> np.ndarray:
    return np.asarray(vol.origin) + vol.direction @ (np.asarray(vol.spacing) * np.asarray(index))


# ----------------------------------------------------------------------------- NIfTI


def write_nifti_ras(path: Path, arr_ijk: np.ndarray, affine_ras: np.ndarray, **codes) -> None:
    img = nib.Nifti1Image(arr_ijk, affine_ras)
    img.header.set_data_dtype(arr_ijk.dtype)
    img.set_sform(affine_ras, code=codes.get("sform", 1))
    img.set_qform(affine_ras, code=codes.get("qform", 1))
    nib.save(img, str(path))


@pytest.mark.parametrize("name", list(DIRECTIONS_ITK))
def test_nifti_geometry_matches_sitk_and_nibabel(tmp_path, name):
    d_itk = DIRECTIONS_ITK[name]
    spacing_itk = np.array([0.8, 1.1, 2.5])
    origin_itk = np.array([-40.0, 12.5, 7.0])
    lps = np.eye(4)
    lps[:3, :3] = d_itk * spacing_itk
    lps[:3, 3] = origin_itk
    ras = np.diag([-1, -1, 1, 1]) @ lps
    arr_ijk = ramp((6, 5, 4))
    path = tmp_path / "vol.nii.gz"
    write_nifti_ras(path, arr_ijk, ras)

    vol = read_volume(path)
    assert vol.shape == (4, 5, 6)
    np.testing.assert_array_equal(vol.data, arr_ijk.transpose(2, 1, 0))
    assert_matches_sitk(vol, path)
    np.testing.assert_allclose(vol.spacing, spacing_itk[::-1], rtol=1e-6)
    np.testing.assert_allclose(vol.origin, origin_itk[::-1], atol=1e-5)
    np.testing.assert_allclose(vol.direction, d_itk[::-1, ::-1], atol=1e-6)
    # voxel (i, j, k) = (5, 1, 3): nibabel's RAS point, converted to LPS, in z, y, x order
    ras_pt = nib.affines.apply_affine(ras, [5, 1, 3])
    lps_pt = ras_pt * [-1, -1, 1]
    np.testing.assert_allclose(world_zyx(vol, [3, 1, 5]), lps_pt[::-1], atol=1e-4)
    np.testing.assert_allclose(vol.affine @ [3, 1, 5, 1], np.r_[lps_pt[::-1], 1], atol=1e-4)
    meta = vol.metadata
    assert REQUIRED_KEYS <= set(meta)
    assert meta["format"] == "nifti"
    assert meta["modality"] is None
    assert meta["original_dtype"] == "int16"
    assert meta["intensity_range"] == [float(arr_ijk.min()), float(arr_ijk.max())]
    assert meta["latentseg_geometry"] == vol.geometry()
    assert meta["nifti"]["affine_used"] == "sform"
    if name == "identity":
        assert meta["direction_note"] is None
        assert "rotate" not in vol.layer_kwargs()
    else:
        assert meta["direction_note"].startswith("flip" if name == "yflip" else "oblique")
        np.testing.assert_allclose(vol.layer_kwargs()["rotate"], vol.direction)


def test_nifti_sform_preferred_then_qform(tmp_path):
    arr = ramp((3, 4, 5))
    q = np.diag([-2.0, -2.0, 2.0, 1.0])
    s = np.diag([-3.0, -3.0, 3.0, 1.0])
    s[:3, 3] = [10, 20, 30]
    img = nib.Nifti1Image(arr, None)
    img.set_qform(q, code=1)
    img.set_sform(s, code=2)
    nib.save(img, str(tmp_path / "both.nii"))
    vol = read_volume(tmp_path / "both.nii")
    assert vol.spacing == pytest.approx((3, 3, 3))
    assert vol.origin == pytest.approx((30, -20, -10))
    assert vol.metadata["nifti"] == {"sform_code": 2, "qform_code": 1, "affine_used": "sform"}

    img.set_sform(s, code=0)
    nib.save(img, str(tmp_path / "qonly.nii"))
    vol = read_volume(tmp_path / "qonly.nii")
    assert vol.spacing == pytest.approx((2, 2, 2))
    assert vol.metadata["nifti"]["affine_used"] == "qform"


def test_nifti_scaling_applied(tmp_path):
    arr = ramp((4, 3, 2))
    img = nib.Nifti1Image(arr, np.eye(4))
    img.header.set_data_dtype(np.int16)
    img.header.set_slope_inter(0.5, -10)
    path = tmp_path / "scaled.nii.gz"
    nib.save(img, str(path))
    vol = read_volume(path)
    assert vol.data.dtype.kind == "f"
    np.testing.assert_allclose(vol.data, arr.transpose(2, 1, 0) * 0.5 - 10)
    assert vol.metadata["original_dtype"] == "int16"


def test_nifti_squeezes_singleton_4th_dim(tmp_path):
    arr = ramp((5, 4, 3, 1))
    path = tmp_path / "t1.nii.gz"
    write_nifti_ras(path, arr, np.diag([-1.0, -1.0, 2.0, 1.0]))
    vol = read_volume(path)
    assert vol.shape == (3, 4, 5)
    np.testing.assert_array_equal(vol.data, arr[..., 0].transpose(2, 1, 0))


def test_nifti_real_4d_rejected(tmp_path):
    with pytest.raises(VolumeIOError, match=r"example4d\.nii\.gz.*4D"):
        read_volume(Path(NIB_DATA) / "example4d.nii.gz")


def test_nibabel_test_data_matches_sitk():
    path = Path(NIB_DATA) / "anatomical.nii"  # big-endian int16, sform & qform code 2
    vol = read_volume(path)
    assert vol.shape == (25, 41, 33)
    assert vol.data.dtype.byteorder in ("=", "|", "<")  # native after reading
    assert_matches_sitk(vol, path)


def test_nifti_truncated_gzip(tmp_path):
    src = tmp_path / "full.nii.gz"
    write_nifti_ras(src, ramp((40, 40, 20)), np.eye(4))
    raw = src.read_bytes()
    bad = tmp_path / "cut.nii.gz"
    bad.write_bytes(raw[: len(raw) // 2])
    with pytest.raises(VolumeIOError, match=r"cut\.nii\.gz.*(corrupt|truncated|readable)"):
        read_volume(bad)


def test_nifti_random_bytes(tmp_path):
    bad = tmp_path / "noise.nii"
    bad.write_bytes(os.urandom(500))
    with pytest.raises(VolumeIOError, match=r"noise\.nii"):
        read_volume(bad)


def test_nifti_2d_stays_2d(tmp_path):
    arr = ramp((6, 4))
    aff = np.diag([-0.5, -2.0, 1.0, 1.0])
    aff[:2, 3] = [3.0, -4.0]
    path = tmp_path / "slice.nii"
    write_nifti_ras(path, arr, aff)
    vol = read_volume(path)
    assert vol.shape == (4, 6)
    assert vol.spacing == pytest.approx((2.0, 0.5))
    assert vol.origin == pytest.approx((4.0, -3.0))
    assert vol.affine.shape == (3, 3)


# ----------------------------------------------------------------------------- NRRD


def test_nrrd_lps_flipped_matches_sitk(tmp_path):
    arr = ramp((5, 6, 7))  # (k, j, i)
    header = {
        "space": "left-posterior-superior",
        "space directions": np.array([[0.7, 0, 0], [0, -0.7, 0], [0, 0, 3.0]]),
        "space origin": np.array([-50.0, 40.0, -10.0]),
        "kinds": ["domain"] * 3,
    }
    path = tmp_path / "flip.nrrd"
    nrrd.write(str(path), arr, header, index_order="C")
    vol = read_volume(path)
    np.testing.assert_array_equal(vol.data, arr)
    assert_matches_sitk(vol, path)
    assert vol.spacing == pytest.approx((3.0, 0.7, 0.7))
    assert vol.origin == pytest.approx((-10.0, 40.0, -50.0))
    np.testing.assert_allclose(vol.direction, np.diag([1.0, -1.0, 1.0]))
    assert vol.metadata["nrrd_space"] == "left-posterior-superior"
    assert vol.metadata["direction_note"].startswith("flip")
    assert vol.metadata["format"] == "nrrd"


def test_nrrd_ras_space_converted(tmp_path):
    arr = ramp((3, 4, 5))
    rot = rotation("z", 30)
    header = {
        "space": "right-anterior-superior",
        "space directions": (rot * [1.0, 2.0, 3.0]).T,
        "space origin": np.array([10.0, 20.0, 30.0]),
    }
    path = tmp_path / "ras.nrrd"
    nrrd.write(str(path), arr, header, index_order="C")
    vol = read_volume(path)
    assert_matches_sitk(vol, path)  # ITK converts RAS to LPS as well
    assert vol.origin == pytest.approx((30.0, -20.0, -10.0))
    assert vol.spacing == pytest.approx((3.0, 2.0, 1.0))


def test_nrrd_without_space_directions_uses_spacings(tmp_path):
    arr = ramp((3, 4, 5))
    path = tmp_path / "plain.nrrd"
    nrrd.write(str(path), arr, {"spacings": np.array([0.5, 0.25, 4.0])}, index_order="C")
    vol = read_volume(path)
    assert vol.spacing == pytest.approx((4.0, 0.25, 0.5))
    assert vol.origin == (0.0, 0.0, 0.0)
    assert "spacings" in vol.metadata["geometry_note"]

    nrrd.write(str(tmp_path / "bare.nrrd"), arr, {}, index_order="C")
    assert read_volume(tmp_path / "bare.nrrd").spacing == (1.0, 1.0, 1.0)


def test_nrrd_scanner_xyz_noted(tmp_path):
    arr = ramp((3, 4, 5))
    header = {
        "space": "scanner-xyz",
        "space directions": np.diag([1.0, 1.0, 2.0]),
        "space origin": np.zeros(3),
    }
    nrrd.write(str(tmp_path / "scanner.nrrd"), arr, header, index_order="C")
    vol = read_volume(tmp_path / "scanner.nrrd")
    assert "scanner-xyz" in vol.metadata["geometry_note"]
    assert vol.metadata["modality"] is None

    nrrd.write(str(tmp_path / "ct.nrrd"), arr, {"modality": "CT"}, index_order="C")
    assert read_volume(tmp_path / "ct.nrrd").metadata["modality"] == "CT"
    assert vol.spacing == pytest.approx((2.0, 1.0, 1.0))


def test_nrrd_detached_header(tmp_path):
    arr = ramp((3, 4, 5), np.float32)
    header = {
        "space": "left-posterior-superior",
        "space directions": np.diag([1.5, 1.5, 2.0]),
        "space origin": np.array([1.0, 2.0, 3.0]),
        "encoding": "raw",
    }
    path = tmp_path / "detached.nhdr"
    nrrd.write(str(path), arr, header, index_order="C")
    assert (tmp_path / "detached.raw").exists()
    vol = read_volume(path)
    np.testing.assert_array_equal(vol.data, arr)
    assert vol.origin == pytest.approx((3.0, 2.0, 1.0))
    assert vol.data.dtype == np.float32


def test_nrrd_vector_axis_rejected_singleton_squeezed(tmp_path):
    header = {
        "space": "left-posterior-superior",
        "space directions": np.array([[np.nan] * 3, [1.0, 0, 0], [0, 1.0, 0], [0, 0, 1.0]]),
        "kinds": ["vector", "domain", "domain", "domain"],
    }
    vec = np.zeros((4, 5, 6, 3), np.float32)  # C order: (k, j, i, component)
    nrrd.write(str(tmp_path / "vec.nrrd"), vec, header, index_order="C")
    with pytest.raises(VolumeIOError, match=r"vec\.nrrd.*vector"):
        read_volume(tmp_path / "vec.nrrd")
    nrrd.write(str(tmp_path / "one.nrrd"), vec[..., :1], header, index_order="C")
    assert read_volume(tmp_path / "one.nrrd").shape == (4, 5, 6)


def test_nrrd_random_bytes(tmp_path):
    bad = tmp_path / "noise.nrrd"
    bad.write_bytes(os.urandom(300))
    with pytest.raises(VolumeIOError, match=r"noise\.nrrd.*not a readable NRRD"):
        read_volume(bad)


def test_nrrd_truncated_gzip(tmp_path):
    path = tmp_path / "cut.nrrd"
    nrrd.write(str(path), np.random.default_rng(0).random((10, 20, 20)), index_order="C")
    raw = path.read_bytes()
    path.write_bytes(raw[: len(raw) * 2 // 3])
    with pytest.raises(VolumeIOError, match=r"cut\.nrrd"):
        read_volume(path)


# ----------------------------------------------------------------------------- MetaImage


@pytest.mark.parametrize("ext", [".mha", ".mhd"])
def test_metaimage_oblique(tmp_path, ext):
    arr = ramp((4, 5, 6), np.float32)
    img = sitk.GetImageFromArray(arr)
    img.SetSpacing((0.5, 0.6, 2.0))
    img.SetOrigin((1.0, -2.0, 3.0))
    img.SetDirection(DIRECTIONS_ITK["oblique"].ravel().tolist())
    path = tmp_path / f"img{ext}"
    sitk.WriteImage(img, str(path))
    vol = read_volume(path)
    assert_matches_sitk(vol, path)
    assert vol.metadata["format"] == "metaimage"
    assert vol.metadata["direction_note"].startswith("oblique")


def test_metaimage_modality(tmp_path):
    img = sitk.GetImageFromArray(ramp((2, 3, 4)))
    path = tmp_path / "ct.mha"
    sitk.WriteImage(img, str(path))
    text = path.read_bytes().replace(b"ElementSpacing", b"Modality = MET_MOD_CT\nElementSpacing")
    path.write_bytes(text)
    assert read_volume(path).metadata["modality"] == "CT"


def test_metaimage_corrupt(tmp_path):
    bad = tmp_path / "bad.mha"
    bad.write_bytes(
        b"ObjectType = Image\nNDims = 3\nDimSize = 10 10 10\nElementType = MET_SHORT\n"
        b"ElementDataFile = LOCAL\n" + b"\0" * 10
    )
    with pytest.raises(VolumeIOError, match=r"bad\.mha"):
        read_volume(bad)


# ----------------------------------------------------------------------------- common errors


def test_missing_file(tmp_path):
    with pytest.raises(VolumeIOError, match=r"nothere\.nii\.gz: no such file"):
        read_volume(tmp_path / "nothere.nii.gz")


def test_unsupported_extension(tmp_path):
    f = tmp_path / "picture.png"
    f.write_bytes(b"\x89PNG\r\n\x1a\n" + b"\0" * 100)
    with pytest.raises(VolumeIOError, match=r"picture\.png: unsupported file type"):
        read_volume(f)
    assert not is_supported_path(f)


def test_empty_folder_and_folder_without_dicom(tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(VolumeIOError, match=r"empty: folder contains no DICOM"):
        read_volume(empty)
    other = tmp_path / "other"
    other.mkdir()
    (other / "notes.txt").write_text("hello")
    with pytest.raises(VolumeIOError, match=r"other: folder contains no DICOM"):
        read_volume(other)
    assert not is_supported_path(empty)
    assert not is_supported_path(other)


def test_nan_and_inf_counted(tmp_path):
    arr = np.ones((3, 4, 5), np.float32)
    arr[0, 0, :3] = np.nan
    arr[1, 1, 1] = np.inf
    path = tmp_path / "nan.nrrd"
    nrrd.write(str(path), arr, index_order="C")
    with pytest.raises(VolumeIOError, match=r"nan\.nrrd: image contains 3 NaN and 1 infinite"):
        read_volume(path)


def test_is_supported_path(tmp_path):
    for name in ("a.nii", "a.NII.GZ", "a.nrrd", "a.nhdr", "a.mha", "a.mhd", "a.dcm"):
        assert is_supported_path(tmp_path / name)
    assert not is_supported_path(tmp_path / "a.tif")
    assert not is_supported_path(tmp_path / "missing_folder_or_file")


def test_gzip_nifti_that_is_plain_text(tmp_path):
    bad = tmp_path / "text.nii.gz"
    with gzip.open(bad, "wb") as fh:
        fh.write(b"just text, not a nifti header" * 3)
    with pytest.raises(VolumeIOError, match=r"text\.nii\.gz"):
        read_volume(bad)


# ----------------------------------------------------------------------------- Volume API


def test_geometry_dict_round_trip():
    d = np.diag([1.0, -1.0, 1.0])
    vol = Volume(np.zeros((2, 3, 4), np.uint8), (2.0, 1.0, 0.5), (1.0, 2.0, 3.0), d, {})
    g = vol.geometry()
    assert g == {
        "spacing": [2.0, 1.0, 0.5],
        "origin": [1.0, 2.0, 3.0],
        "direction": [[1.0, 0.0, 0.0], [0.0, -1.0, 0.0], [0.0, 0.0, 1.0]],
        "shape": [2, 3, 4],
    }
    spacing, origin, direction = geometry_from_dict(g)
    assert spacing == vol.spacing and origin == vol.origin
    np.testing.assert_array_equal(direction, d)
    with pytest.raises(ValueError, match="missing"):
        geometry_from_dict({"spacing": [1, 1, 1]})
    with pytest.raises(ValueError, match="disagree"):
        geometry_from_dict({"spacing": [1, 1, 1], "origin": [0, 0], "direction": np.eye(3)})
    kw = vol.layer_kwargs()
    assert kw["scale"] == (2.0, 1.0, 0.5)
    assert kw["translate"] == (1.0, 2.0, 3.0)
    np.testing.assert_array_equal(kw["rotate"], d)
    assert kw["name"] == "volume"


def test_describe_direction():
    assert describe_direction(np.eye(3)) is None
    assert describe_direction(np.diag([1.0, -1.0, 1.0])).startswith("flip")
    perm = np.array([[0, 0, 1], [1, 0, 0], [0, 1, 0]], float)
    assert describe_direction(perm).startswith("permutation")
    assert describe_direction(rotation("x", 10)).startswith("oblique")
