"""Decoding one DICOM file's pixels: pydicom first, SimpleITK/GDCM for what it cannot decode."""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any

import numpy as np

from ._dicom_scan import _Entry
from ._volume import VolumeIOError

__all__: list[str] = []


def _decode(entry: _Entry, where: str) -> tuple[np.ndarray, bool]:
    """Pixel array of one file, ``(frames, rows, cols)``; True if already rescaled (GDCM)."""
    import pydicom

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            ds = pydicom.dcmread(str(entry.path), force=True)
    except Exception as exc:
        raise VolumeIOError(f"{entry.path}: cannot read DICOM file ({exc})") from exc
    if "PixelData" not in ds and "FloatPixelData" not in ds and "DoubleFloatPixelData" not in ds:
        raise VolumeIOError(f"{entry.path}: DICOM file has no pixel data")
    samples = int(ds.get("SamplesPerPixel", 1) or 1)
    if samples != 1:
        raise VolumeIOError(
            f"{entry.path}: colour DICOM ({samples} samples per pixel, "
            f"{ds.get('PhotometricInterpretation', '?')}) is not supported; need grayscale"
        )
    already_rescaled = False
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            arr = np.asarray(ds.pixel_array)
    except Exception as exc:  # missing decoder plugin, truncated data ...
        arr = _decode_with_sitk(entry.path, ds, exc)
        already_rescaled = True
    if arr.ndim == 2:
        arr = arr[None]
    expected = (entry.n_frames, entry.rows, entry.cols)
    if arr.shape != expected:
        raise VolumeIOError(
            f"{entry.path}: pixel data has shape {arr.shape}, header says {expected}"
        )
    return arr, already_rescaled


def _decode_with_sitk(path: Path, ds: Any, original: Exception) -> np.ndarray:
    import SimpleITK as sitk

    syntax = getattr(getattr(ds, "file_meta", None), "TransferSyntaxUID", None)
    syntax_name = f"{syntax.name} ({syntax})" if syntax is not None else "unknown"
    try:
        reader = sitk.ImageFileReader()
        reader.SetImageIO("GDCMImageIO")
        reader.SetFileName(str(path))
        img = reader.Execute()
        if img.GetNumberOfComponentsPerPixel() != 1:
            raise RuntimeError("GDCM returned a multi-component image")
        return sitk.GetArrayFromImage(img)
    except Exception as exc:
        gdcm_msg = str(exc).strip().splitlines()[-1] if str(exc).strip() else type(exc).__name__
        details = f"pydicom: {str(original).splitlines()[0]}; SimpleITK/GDCM: {gdcm_msg}"
        compressed = syntax is not None and syntax.is_compressed
        if compressed or syntax is None:
            problem = f"transfer syntax {syntax_name} is not supported"
        else:
            problem = f"pixel data is corrupt or truncated ({syntax_name})"
        raise VolumeIOError(f"{path}: cannot decode the pixel data, {problem} ({details})") from exc
