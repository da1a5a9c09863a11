"""Reading and writing medical volumes (NIfTI, NRRD, MetaImage, DICOM) with their geometry.

See :mod:`napari_latentseg.io._volume` for the axis and world-frame conventions.
Importing this package does not import napari, Qt or torch.
"""

from __future__ import annotations

from ._dicom import list_dicom_series
from ._read import is_supported_path, read_volume
from ._volume import Volume, VolumeIOError, check_same_grid, geometry_from_dict
from ._write import save_labels, save_volume
from .contrast import default_contrast_limits
from .labels_meta import looks_like_label_path, normalize_classes

__all__ = [
    "Volume",
    "VolumeIOError",
    "check_same_grid",
    "default_contrast_limits",
    "geometry_from_dict",
    "is_supported_path",
    "list_dicom_series",
    "looks_like_label_path",
    "normalize_classes",
    "read_volume",
    "save_labels",
    "save_volume",
]
