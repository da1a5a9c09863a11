"""Sample data contribution: the synthetic head phantom shipped inside the package."""

from __future__ import annotations

import json

from ..data.phantom import sample_data_dir

__all__ = ["sample_data_dir", "load_phantom"]


def load_phantom() -> list[tuple]:
    """Image and ground-truth labels of the phantom, as napari layer data tuples."""
    from ..io import read_volume

    folder = sample_data_dir()
    info = json.loads((folder / "phantom.json").read_text())
    image = read_volume(folder / "phantom_t1.nii.gz")
    labels = read_volume(folder / "phantom_labels.nii.gz")
    from ._layer_geometry import layer_geometry_kwargs

    img_kw = layer_geometry_kwargs(image)
    img_kw["name"] = "phantom T1"
    img_kw["metadata"]["modality"] = info.get("modality", "MR")
    lab_kw = layer_geometry_kwargs(labels)
    lab_kw["name"] = "phantom ground truth"
    lab_kw["metadata"]["classes"] = info["classes"]
    lab_kw["opacity"] = 0.4
    return [(image.data, img_kw, "image"), (labels.data, lab_kw, "labels")]
