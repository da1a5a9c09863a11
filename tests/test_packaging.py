"""The package as napari sees it: manifest, contributions, sample data, wheel contents."""

from __future__ import annotations

import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]


def test_top_level_files_are_the_packaged_ones():
    # One source of truth: the top-level napari.yaml and sample_data/ point into the package.
    pkg = ROOT / "src" / "napari_latentseg"
    assert (ROOT / "napari.yaml").resolve() == (pkg / "napari.yaml").resolve()
    assert (ROOT / "sample_data").resolve() == (pkg / "sample_data").resolve()


def test_npe2_discovers_the_plugin_and_its_contributions():
    from npe2 import PluginManager

    pm = PluginManager()
    pm.discover(include_npe1=False)
    mf = pm.get_manifest("napari-latentseg")
    assert mf.contributions.readers and mf.contributions.writers
    assert [s.key for s in mf.contributions.sample_data] == ["phantom"]


def test_npe2_validate_with_imports():
    npe2 = Path(sys.executable).with_name("npe2")
    res = subprocess.run([str(npe2), "validate", "--imports", "napari-latentseg"],
                         capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stdout + res.stderr
    assert "valid" in (res.stdout + res.stderr).lower()


def test_sample_data_through_npe2():
    from npe2 import PluginManager

    pm = PluginManager.instance()  # commands run through the global registry
    pm.discover(include_npe1=False)
    contrib = next(s for s in pm.iter_sample_data() if s[0] == "napari-latentseg")
    sample = contrib[1][0]
    layers = sample.open()
    (img, img_kw, img_t), (lab, lab_kw, lab_t) = layers
    assert (img_t, lab_t) == ("image", "labels")
    assert img.shape == lab.shape == (40, 128, 128)
    assert tuple(img_kw["scale"]) == pytest.approx((4.0, 1.6, 1.6))  # NIfTI stores float32
    assert set(np.unique(lab)) == set(range(1, 8))


def test_shipped_sample_matches_its_generator():
    from napari_latentseg._napari._sample_data import sample_data_dir
    from napari_latentseg.data.phantom import (
        annotation_from_labels,
        default_annotated_slices,
        make_phantom,
    )
    from napari_latentseg.io import read_volume

    ph = make_phantom()
    folder = sample_data_dir()
    np.testing.assert_array_equal(read_volume(folder / "phantom_t1.nii.gz").data, ph.image)
    np.testing.assert_array_equal(read_volume(folder / "phantom_labels.nii.gz").data, ph.labels)
    ann = read_volume(folder / "phantom_annotations.nii.gz").data
    np.testing.assert_array_equal(
        ann, annotation_from_labels(ph.labels, default_annotated_slices(40)))
    size = sum(p.stat().st_size for p in folder.iterdir())
    assert size < 3e6


def test_no_heavy_imports_at_napari_start_up():
    code = ("import sys, napari_latentseg, napari_latentseg._napari._reader, "
            "napari_latentseg._napari._writer, napari_latentseg._napari._sample_data;"
            "bad = [m for m in ('torch', 'monai', 'qtpy', 'PyQt6') if m in sys.modules];"
            "print(bad); sys.exit(1 if bad else 0)")
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         timeout=120)
    assert res.returncode == 0, res.stdout + res.stderr


@pytest.mark.slow
def test_built_wheel_ships_manifest_and_sample_data(tmp_path):
    res = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", str(tmp_path), str(ROOT)],
        capture_output=True, text=True, timeout=600,
    )
    assert res.returncode == 0, res.stderr[-2000:]
    wheel = next(tmp_path.glob("napari_latentseg-*.whl"))
    names = zipfile.ZipFile(wheel).namelist()
    assert "napari_latentseg/napari.yaml" in names
    for f in ("phantom_t1.nii.gz", "phantom_labels.nii.gz", "phantom_annotations.nii.gz",
              "phantom.json"):
        assert f"napari_latentseg/sample_data/{f}" in names
    # Install the wheel on its own (dependencies come from this environment) and let npe2 load
    # the manifest and sample data from the installed copy, not from the source tree.
    target = tmp_path / "site"
    res = subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps",
                          "--target", str(target), str(wheel)], capture_output=True, text=True,
                         timeout=600)
    assert res.returncode == 0, res.stderr[-2000:]
    code = (
        "import sys; sys.path.insert(0, sys.argv[1]);"
        "import napari_latentseg, npe2, pathlib;"
        "from napari_latentseg._napari._sample_data import sample_data_dir, load_phantom;"
        "mf = npe2.PluginManifest.from_distribution('napari-latentseg');"
        "assert str(pathlib.Path(napari_latentseg.__file__)).startswith(sys.argv[1]);"
        "assert str(sample_data_dir()).startswith(sys.argv[1]);"
        "layers = load_phantom(); print(mf.name, len(layers))"
    )
    res = subprocess.run([sys.executable, "-c", code, str(target)], capture_output=True,
                         text=True, timeout=300, cwd=tmp_path)
    assert res.returncode == 0, res.stdout + res.stderr
    assert "napari-latentseg 2" in res.stdout
