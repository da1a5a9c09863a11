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
