"""Columns a caller adds to the forest (the scan's anomaly score): used, cached apart, checked."""

from __future__ import annotations

import numpy as np
import pytest

from napari_latentseg.engine.segment import FeatureCache, SegmentOptions, segment
from test_segment_prior import SPACING, assert_live_matches_full_round


@pytest.fixture(scope="module")
def hidden():
    """An object the image does not show (same noise inside and out) but a given column
    does: only a forest that reads the column can find it."""
    rng = np.random.default_rng(1)
    vol = rng.normal(0, 1.0, (6, 48, 48)).astype(np.float32)
    truth = np.zeros(vol.shape, bool)
    truth[1:5, 14:30, 14:30] = True
    score = np.where(truth, 3.0, 0.0).astype(np.float32) + rng.normal(0, 0.3, vol.shape)
    ann = np.zeros(vol.shape, np.uint8)
    ann[2:4, 18:26, 18:26] = 2
    ann[2:4, 36:44, 36:44] = 1
    ann[2:4, 4:10, 30:40] = 1
    return vol, ann, truth, score.astype(np.float32)


def _dice(a: np.ndarray, b: np.ndarray) -> float:
    return float(2 * (a & b).sum() / max(1, a.sum() + b.sum()))


def test_the_forest_reads_the_given_column(hidden):
    vol, ann, truth, score = hidden
    cache, opts = FeatureCache(), SegmentOptions(background=None)  # the forest alone
    without = segment(None, vol, ann, opts, cache=cache, spacing=SPACING)
    with_col = segment(None, vol, ann, opts, cache=cache, spacing=SPACING,
                       extra_features=score)
    d0, d1 = _dice(without.labels == 2, truth), _dice(with_col.labels == 2, truth)
    assert d1 > 0.85 and d1 > d0 + 0.3, (d0, d1)
    # Its own cached features: the round with the column did not reuse the plain ones.
    assert not with_col.cache_hit
    again = segment(None, vol, ann, opts, cache=cache, spacing=SPACING, extra_features=score)
    assert again.cache_hit
    np.testing.assert_array_equal(again.labels, with_col.labels)
    # Another column on the same scan is another set of features.
    other = segment(None, vol, ann, opts, cache=cache, spacing=SPACING,
                    extra_features=np.stack([score, -score], -1))
    assert not other.cache_hit
    forest = next(h for h in with_col.history if h["stage"] == "forest")
    assert "+ 1 given column" in forest["features"]
    assert "+ 2 given columns" in next(h for h in other.history
                                       if h["stage"] == "forest")["features"]
    # Values past float16's range are clipped in the forest's copy, not in the caller's.
    big = score * 3e4  # the object past 6e4
    kept = big.copy()
    huge = segment(None, vol, ann, opts, spacing=SPACING, extra_features=big)
    np.testing.assert_array_equal(big, kept)
    assert _dice(huge.labels == 2, truth) > 0.8


def test_with_a_vae_the_column_joins_its_columns(tiny_model, small_phantom, annotations):
    vol = small_phantom.image
    score = (annotations == 2).astype(np.float32)
    res = segment(tiny_model, vol, annotations, extra_features=score)
    forest = next(h for h in res.history if h["stage"] == "forest")
    assert forest["features"].startswith("ilastik multiscale set + VAE latent")
    assert "VAE latent and encoder components + 1 given column" in forest["features"]
    assert res.labels.shape == vol.shape


def test_live_slice_equals_the_full_round_with_the_column(hidden):
    vol, ann, _, score = hidden
    assert_live_matches_full_round(vol, ann, (1, 3), extra_features=score)


def test_a_2d_image_takes_a_2d_column(hidden):
    vol, ann, truth, score = hidden
    opts = SegmentOptions(background=None)
    res = segment(None, vol[3], ann[3], opts, extra_features=score[3])
    plain = segment(None, vol[3], ann[3], opts)
    assert res.labels.shape == vol.shape[1:]
    d0, d1 = _dice(plain.labels == 2, truth[3]), _dice(res.labels == 2, truth[3])
    assert d1 > d0, (d0, d1)  # one slice: few rows for the forest, a smaller gain


@pytest.mark.parametrize("bad, message", [
    (np.zeros((6, 48, 47), np.float32), "must be on the image's grid"),
    (np.zeros((5, 48, 48, 1), np.float32), "must be on the image's grid"),
    (np.full((6, 48, 48), np.nan, np.float32), "NaN or infinite"),
    (np.zeros((6, 48, 48), complex), "real numbers"),
])
def test_bad_columns_are_refused(hidden, bad, message):
    vol, ann, _, _ = hidden
    with pytest.raises(ValueError, match=message):
        segment(None, vol, ann, extra_features=bad)


def test_the_mlp_head_takes_no_columns(tiny_model, small_phantom, annotations):
    with pytest.raises(ValueError, match="columns of the forest"):
        segment(tiny_model, small_phantom.image, annotations,
                SegmentOptions(classifier="mlp", head_steps=1),
                extra_features=np.zeros(small_phantom.image.shape, np.float32))


def test_cli_segment_reads_the_anomaly_map(hidden, tmp_path, capsys):
    """`latentseg segment --anomaly-map SCORE` reads the map as a column (never writes it);
    a map on another grid is refused with one line."""
    from napari_latentseg.cli import main
    from napari_latentseg.io import read_volume, save_volume

    vol, ann, truth, score = hidden
    img = save_volume(tmp_path / "img.nii.gz", vol, spacing=SPACING[::-1])
    a = save_volume(tmp_path / "ann.nii.gz", ann, spacing=SPACING[::-1], kind="labels")
    s = save_volume(tmp_path / "score.nii.gz", score, spacing=SPACING[::-1])
    before = s.read_bytes()
    base = ["segment", str(img), "-a", str(a), "--background", "none", "-q"]
    assert main(base + ["-o", str(tmp_path / "plain.nii.gz")]) == 0
    assert main(base + ["-o", str(tmp_path / "col.nii.gz"), "--anomaly-map", str(s)]) == 0
    assert "+ 1 given column" in capsys.readouterr().out
    assert s.read_bytes() == before
    plain = read_volume(tmp_path / "plain.nii.gz").data == 2
    col = read_volume(tmp_path / "col.nii.gz").data == 2
    assert _dice(col, truth) > _dice(plain, truth) + 0.3
    # On a CT (HU values) the command says the score was measured to help on MR only.
    ct = save_volume(tmp_path / "ct.nii.gz", vol * 100.0 - 1000.0, spacing=SPACING[::-1])
    assert main(["segment", str(ct), "-a", str(a), "-o", str(tmp_path / "ct-seg.nii.gz"),
                 "--anomaly-map", str(s)]) == 0
    assert "on CT the anomaly score" in capsys.readouterr().err
    other = save_volume(tmp_path / "other.nii.gz", score, spacing=(1.0, 1.0, 2.0))
    assert main(base + ["-o", str(tmp_path / "x.nii.gz"), "--anomaly-map", str(other)]) == 2
    assert "the anomaly map" in capsys.readouterr().err and not (tmp_path / "x.nii.gz").exists()
