"""`latentseg demo`: every stage on the embedded sample, results in the sample's geometry."""

from __future__ import annotations

import json

import numpy as np
import pytest

from napari_latentseg._napari._sample_data import sample_data_dir
from napari_latentseg.cli import main
from napari_latentseg.io import read_volume


@pytest.mark.slow
def test_demo_writes_every_result(tmp_path, capsys):
    out = tmp_path / "demo"
    code = main(["demo", "--output", str(out), "--config", "tiny", "--steps", "10", "-q",
                 "--device", "cpu"])
    assert code == 0
    metrics = json.loads((out / "metrics.json").read_text())
    for name in metrics["outputs"]:
        assert (out / name).is_file(), name
    src = read_volume(sample_data_dir() / "phantom_t1.nii.gz")
    for name in ("reconstruction.nii.gz", "segmentation.nii.gz", "clusters.nii.gz"):
        vol = read_volume(out / name)
        assert vol.shape == src.shape
        np.testing.assert_allclose(vol.spacing, src.spacing, rtol=1e-6)
        np.testing.assert_allclose(vol.origin, src.origin, atol=1e-4)
    seg = metrics["segmentation"]
    assert set(seg["dice_finetuned"]) >= {"background", "white matter"}
    assert all(0 <= v <= 1 for v in seg["dice_finetuned"].values())
    assert metrics["reconstruction"]["psnr_db"] > 0
    assert metrics["device"] == "cpu"
    assert (out / "overview.png").stat().st_size > 10_000
    # A second run refuses to replace the results unless asked.
    assert main(["demo", "--output", str(out), "--config", "tiny", "--steps", "2", "-q"]) == 2
    assert "--overwrite" in capsys.readouterr().err


def test_overview_names_clusters_as_clusters(tmp_path, monkeypatch):
    """Without annotations the overview's last panel shows clusters, and is titled so (it
    said "segmentation")."""
    from matplotlib.axes import Axes

    from napari_latentseg.demo import _overview_png

    titles: list[str] = []
    real = Axes.set_title

    def recording(ax, title, *args, **kwargs):
        titles.append(title)
        return real(ax, title, *args, **kwargs)

    monkeypatch.setattr(Axes, "set_title", recording)
    vol = np.random.default_rng(0).random((5, 16, 16)).astype(np.float32)
    labels = (vol > 0.5).astype(np.uint8) + 1
    _overview_png(tmp_path / "o.png", vol, vol, vol, labels, None, (2.0, 1.0, 1.0),
                  "clusters (kmeans)")
    assert titles == ["image", "reconstruction", "error map", "clusters (kmeans)"]
    assert (tmp_path / "o.png").stat().st_size > 1000
