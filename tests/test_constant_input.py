"""A constant image (e.g. all zeros) is refused before any training: nothing to learn."""

from __future__ import annotations

import numpy as np
import pytest

from napari_latentseg.cli import main
from napari_latentseg.engine.stream import VolumeSource
from napari_latentseg.engine.train import FitOptions, fit, fit_iter
from napari_latentseg.io import save_volume


@pytest.mark.parametrize("value", [0, 7.5])
def test_constant_volume_is_refused(value):
    vol = np.full((6, 32, 32), value, dtype=np.float32)
    with pytest.raises(ValueError, match="constant.*nothing to learn"):
        fit(vol, "tiny", FitOptions(steps=2))


def test_refused_before_any_step():
    steps = []
    with pytest.raises(ValueError, match="the image is constant"):
        for m in fit_iter(np.zeros((6, 32, 32), np.int16), "tiny", FitOptions(steps=2)):
            steps.append(m["stage"])
    assert "fit" not in steps


def test_one_constant_volume_among_several_is_named(rng):
    good = rng.normal(100, 20, (6, 32, 32)).astype(np.float32)
    with pytest.raises(ValueError, match="volume 1 is constant"):
        fit([good, np.zeros_like(good)], "tiny", FitOptions(steps=2))


def test_streamed_constant_scan_is_refused(rng):
    good = rng.normal(100, 20, (6, 32, 32)).astype(np.float32)
    src = VolumeSource([lambda: (good, "MR"), lambda: (np.zeros_like(good), "MR")],
                       max_in_memory=1)
    with pytest.raises(ValueError, match="volume 1 is constant.*nothing to learn"):
        fit(src, "tiny", FitOptions(steps=2))


def test_cli_gives_one_line(tmp_path, capsys):
    scan = save_volume(tmp_path / "blank.nii.gz", np.zeros((6, 32, 32), np.int16))
    code = main(["fit", str(scan), "-o", str(tmp_path / "m.pt"), "--config", "tiny",
                 "--steps", "2", "-q"])
    err = capsys.readouterr().err.strip()
    assert code != 0
    assert len(err.splitlines()) == 1, err
    assert "constant" in err and "nothing to learn" in err
    assert not (tmp_path / "m.pt").exists()
