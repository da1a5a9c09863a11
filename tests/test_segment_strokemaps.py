"""The geodesic distance from the object's strokes as a forest column (object-vs-background
rounds)."""

from __future__ import annotations

import numpy as np
import pytest

from napari_latentseg.engine.segment import FeatureCache, SegmentOptions, segment
from napari_latentseg.engine.segment.strokemaps import (
    CLIP_MM,
    StrokeDistances,
    has_annotated_slice,
)

SPACING = (2.0, 1.0, 1.0)


def _features_line(res) -> str:
    return next(h for h in res.history if h.get("stage") == "forest")["features"]


@pytest.fixture(scope="module")
def twins():
    """Two blobs of the same tissue, far apart: the object is the left one. Its look alone
    cannot tell them apart; where the strokes are can."""
    rng = np.random.default_rng(0)
    vol = rng.normal(0.0, 0.3, (8, 64, 160)).astype(np.float32)
    truth = np.zeros(vol.shape, bool)
    truth[1:7, 24:40, 8:24] = True
    twin = np.zeros(vol.shape, bool)
    twin[1:7, 24:40, 104:120] = True
    vol[truth | twin] += 3.0
    ann = np.zeros(vol.shape, np.uint8)
    ann[3:5, 29:35, 13:19] = 2  # the object, inside the left blob
    ann[3:5, 29:35, 109:115] = 1  # the background, inside its twin
    ann[3:5, 2:6, 24:104] = 1  # and between them
    return vol, ann, truth, twin


def test_distances_are_geodesic_zero_at_the_strokes_and_clipped():
    vol = np.zeros((3, 32, 64), np.float32)
    vol[:, :, 40:] = 10.0  # an edge across the slice
    ann = np.zeros(vol.shape, np.uint8)
    ann[1, 14:18, 2:6] = 1
    ann[1, 14:18, 56:60] = 2
    d = StrokeDistances(vol, ann, [1, 2], (1.0, 1.0, 1.0))
    rows = d.slices(np.arange(3)).reshape(vol.shape + (2,))
    assert rows.dtype == np.float32 and d.k == 2
    # On the coarse grid (4 voxels here) a stroke's cells are 0 or a cell away.
    for i, c in enumerate((1, 2)):
        assert rows[..., i][ann == c].min() == 0 and rows[..., i][ann == c].max() <= 8
    # Along the flat side the distance grows with the mm; across the edge it jumps.
    near, far = rows[1, 16, 12, 0], rows[1, 16, 28, 0]
    assert 0 < near < far < 40
    assert rows[1, 16, 44, 0] > far + 100  # the edge costs more than the 16 mm between
    assert rows.max() <= CLIP_MM
    # Per voxel as per slice.
    flat = np.array([0, 1 * 32 * 64 + 16 * 64 + 44, vol.size - 1])
    np.testing.assert_array_equal(d.at(flat), rows.reshape(-1, 2)[flat])


def test_a_round_reads_where_the_strokes_are(twins):
    vol, ann, truth, twin = twins
    # The forest alone: no reach, no connectivity rule, no edge step to tell the twins apart.
    plain = dict(object_reach=False, keep_connected_regions=False, boundary_refine=False,
                 momentum=0.0)
    cache = FeatureCache()
    on = segment(None, vol, ann, SegmentOptions(**plain), cache=cache, spacing=SPACING)
    off = segment(None, vol, ann, SegmentOptions(stroke_distances=False, **plain),
                  cache=cache, spacing=SPACING)
    assert "+ distance from the object's strokes" in _features_line(on)
    assert "distance" not in _features_line(off)
    obj_on, obj_off = on.labels == 2, off.labels == 2
    # Without the distance the twin's look is the object's too; with it, hardly.
    assert (obj_off & twin).sum() > 10 and 4 * (obj_on & twin).sum() < (obj_off & twin).sum()
    assert (obj_on & truth).sum() > 2 * (obj_off & truth).sum()
    # The painted voxels keep their labels either way.
    np.testing.assert_array_equal(on.labels[ann > 0], ann[ann > 0])


def test_only_object_vs_background_rounds_get_the_columns(twins):
    vol, ann, _, _ = twins
    three = ann.copy()
    three[2:4, 40:44, 40:56] = 3
    res = segment(None, vol, three, spacing=SPACING)
    assert "distance" not in _features_line(res)
    # Two classes without the background prior: not measured, not used.
    res = segment(None, vol, ann, SegmentOptions(background=None), spacing=SPACING)
    assert "distance" not in _features_line(res)


def test_an_annotated_slice_turns_the_column_off(twins):
    """Beside a whole slice's object the painted background lies a voxel away: the column
    would teach that the object is only where it was painted (slices protocol, brain1 0.86
    -> 0.75), so with an annotated slice among the strokes the forest goes without it."""
    vol, ann, truth, _ = twins
    assert not has_annotated_slice(ann)
    whole = ann.copy()
    whole[4] = np.where(truth[4], 2, 1)  # slice 4, every voxel labelled
    assert has_annotated_slice(whole)
    res = segment(None, vol, whole, spacing=SPACING)
    assert "distance" not in _features_line(res)
    # Along the other axes too (a coronal slice).
    side = ann.copy()
    side[:, 30] = np.where(truth[:, 30], 2, 1)
    assert has_annotated_slice(side)


def test_cli_no_stroke_distances(twins, tmp_path, monkeypatch):
    import napari_latentseg.engine.segment.strokemaps as strokemaps
    from napari_latentseg.cli import main
    from napari_latentseg.io import save_volume

    vol, ann, _, _ = twins
    calls = []
    real = strokemaps.StrokeDistances
    monkeypatch.setattr(strokemaps, "StrokeDistances",
                        lambda *a, **k: calls.append(1) or real(*a, **k))
    img = save_volume(tmp_path / "img.nii.gz", vol, spacing=SPACING)
    a = save_volume(tmp_path / "ann.nii.gz", ann, spacing=SPACING, kind="labels")
    assert main(["segment", str(img), "-a", str(a), "-o", str(tmp_path / "on.nii.gz"),
                 "-q"]) == 0
    assert calls == [1]
    assert main(["segment", str(img), "-a", str(a), "-o", str(tmp_path / "off.nii.gz"), "-q",
                 "--no-stroke-distances"]) == 0
    assert calls == [1]  # not computed again


def test_live_strokes_keep_the_objects_distance_until_the_object_is_painted(twins):
    """A background stroke leaves the object's distance map as it was, so live mode keeps
    it; an object stroke computes it again. The slices are those of a fresh segmenter."""
    from napari_latentseg.engine.segment import LiveSegmenter

    vol, ann, _, _ = twins
    live = LiveSegmenter(None, vol, spacing=SPACING)
    live.update(ann)
    first = live._features.stroke_memo[1]
    more_bg = ann.copy()
    more_bg[5, 50:54, 60:70] = 1
    live.update(more_bg)
    assert live._features.stroke_memo[1] is first
    assert not first.raw.flags.writeable  # kept for the next round: nobody writes it
    fresh = LiveSegmenter(None, vol, spacing=SPACING)
    fresh.update(more_bg)
    np.testing.assert_array_equal(live.predict_slice(4).labels, fresh.predict_slice(4).labels)
    more_obj = more_bg.copy()
    more_obj[2, 30:33, 14:17] = 2
    live.update(more_obj)
    assert live._features.stroke_memo[1] is not first
    fresh = LiveSegmenter(None, vol, spacing=SPACING)
    fresh.update(more_obj)
    np.testing.assert_array_equal(live.predict_slice(2).labels, fresh.predict_slice(2).labels)
