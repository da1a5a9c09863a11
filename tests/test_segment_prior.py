"""The background prior: unpainted voxels as weak background in object-vs-background rounds."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from napari_latentseg.cli import main
from napari_latentseg.engine.segment import (
    FeatureCache,
    LiveSegmenter,
    SegmentOptions,
    continues_round,
    segment,
)
from napari_latentseg.engine.segment.prior import (
    background_from_names,
    effective_background,
    resolve_background,
    unpainted_sample,
)
from napari_latentseg.io import save_volume
from napari_latentseg.runtime.progress import drive

SPACING = (3.0, 1.0, 1.0)


def _dice(a: np.ndarray, b: np.ndarray) -> float:
    return float(2 * (a & b).sum() / max(1, a.sum() + b.sum()))


def test_prior_stops_the_object_flooding_the_scan(scene):
    vol, ann, truth = scene
    off = segment(None, vol, ann, SegmentOptions(background=None), spacing=SPACING)
    on = segment(None, vol, ann, spacing=SPACING)  # default "auto": two classes, 1 = bg
    d_off, d_on = _dice(off.labels == 2, truth), _dice(on.labels == 2, truth)
    assert d_on > d_off + 0.3, (d_off, d_on)
    forest = next(h for h in on.history if h["stage"] == "forest")
    assert forest["prior_voxels"] == 2000 and forest["voxels"] == int((ann > 0).sum())
    assert "+ background prior (adaptive: the object ~" in forest["features"]
    painted = ann > 0
    np.testing.assert_array_equal(on.labels[painted], ann[painted])  # strokes are kept
    off_forest = next(h for h in off.history if h["stage"] == "forest")
    assert off_forest["prior_voxels"] == 0


def test_auto_rule_and_names():
    assert effective_background("auto", [1, 2]) == 1
    assert effective_background("auto", [2, 3]) is None  # no class 1
    assert effective_background("auto", [1, 2, 3]) is None  # several structures
    assert effective_background(None, [1, 2]) is None
    assert effective_background(3, [1, 3]) == 3
    names = [{"value": 1, "name": "liver"}, {"value": 4, "name": "Background"}]
    assert background_from_names(names) == 4
    assert resolve_background("auto", names) == 4
    assert resolve_background("auto", None) == "auto"
    assert resolve_background("none", names) is None
    assert resolve_background("liver", names) == 1
    assert resolve_background("2", names) == 2
    with pytest.raises(ValueError, match="no class is named 'tumour'"):
        resolve_background("tumour", names)
    with pytest.raises(ValueError, match=">= 1"):
        resolve_background("0", names)
    for bad in (0, "foo"):
        with pytest.raises(ValueError, match="background"):
            SegmentOptions(background=bad)


def test_unpainted_sample_keeps_away_from_the_object():
    ann = np.zeros((6, 30, 30), np.uint8)
    ann[3, 14:16, 14:16] = 2  # the object
    ann[3, 0:3, 0:3] = 1
    rng = np.random.default_rng(0)
    flat = unpainted_sample(ann, 1, 500, 5.0, (2.0, 1.0, 1.0), rng)
    assert len(flat) == 500 and len(np.unique(flat)) == 500
    z, y, x = np.unravel_index(flat, ann.shape)
    assert (ann.reshape(-1)[flat] == 0).all()  # never a painted voxel
    d = np.sqrt(((z - 3) * 2.0) ** 2 + (np.clip(y, 14, 15) - y) ** 2
                + (np.clip(x, 14, 15) - x) ** 2)
    assert d.min() > 5.0  # none within the margin (mm) of the object's stroke
    only = unpainted_sample(ann, 1, 100, 0.0, None, rng, slices=np.array([0, 5]))
    assert set(np.unravel_index(only, ann.shape)[0]) <= {0, 5}


def test_background_class_not_painted_is_said(scene):
    vol, ann, _ = scene
    res = segment(None, vol, np.where(ann == 1, 3, ann).astype(np.uint8),
                  SegmentOptions(background=1), spacing=SPACING)
    assert any("background class 1 is not painted" in n for n in res.notes)
    assert next(h for h in res.history if h["stage"] == "forest")["prior_voxels"] == 0


def assert_live_matches_full_round(vol, ann, zs, **kw) -> None:
    """Slices ``zs`` of a live segmenter (no model: the ilastik set) equal a full round's on
    the same cache; ``kw`` go to both. Live previews skip the object's reach (a full round's
    geodesic map) and the connectivity rule, so the full round does too."""
    cache = FeatureCache()
    live = LiveSegmenter(None, vol, cache=cache, spacing=SPACING, **kw)
    drive(live.prepare())
    live.update(ann)
    full = segment(None, vol, ann, cache=cache, spacing=SPACING, keep_connected_regions=False,
                   object_reach=False, **kw)
    assert full.cache_hit
    for z in zs:
        pred = live.predict_slice(z)
        np.testing.assert_allclose(pred.probabilities, full.probabilities[:, z], atol=1e-6)
        np.testing.assert_array_equal(pred.labels, full.labels[z])
    live.close()


def test_live_slice_equals_the_full_round_with_the_prior(scene):
    vol, ann, _ = scene
    assert_live_matches_full_round(vol, ann, (1, 4))


def test_live_slice_applies_the_momentum_of_full_rounds(scene):
    """Given the last round's slice, a live preview averages it in where the object shrinks,
    as the full round after it does (without the reach, which live slices skip)."""
    vol, ann, _ = scene
    cache = FeatureCache()
    opts = SegmentOptions(object_reach=False, keep_connected_regions=False)
    first = segment(None, vol, ann, opts, cache=cache, spacing=SPACING)
    ann2 = ann.copy()
    ann2[3, 40:43, 40:43] = 1
    full = segment(None, vol, ann2, opts, cache=cache, spacing=SPACING, previous=first)
    assert any("momentum 0.85" in n for n in full.notes)
    live = LiveSegmenter(None, vol, cache=cache, spacing=SPACING, options=opts)
    drive(live.prepare())
    live.update(ann2)
    assert live.classes == [1, 2]
    for z in (3, 4):
        pred = live.predict_slice(z, previous=first.probabilities[:, z])
        np.testing.assert_allclose(pred.probabilities, full.probabilities[:, z], atol=1e-6)
        np.testing.assert_array_equal(pred.labels, full.labels[z])
    plain = live.predict_slice(3)
    assert not np.allclose(plain.probabilities, full.probabilities[:, 3])
    # A round that continues one with growth lets that growth go; the slice does too.
    ann3 = ann2.copy()
    ann3[3, 30:33, 30:33] = 1
    third = segment(None, vol, ann3, opts, cache=cache, spacing=SPACING, previous=full)
    assert full.grown is not None
    live.update(ann3)
    for z in (3, 4):
        pred = live.predict_slice(z, previous=full.probabilities[:, z], grown=full.grown[z])
        np.testing.assert_allclose(pred.probabilities, third.probabilities[:, z], atol=1e-6)
        np.testing.assert_array_equal(pred.labels, third.labels[z])
    live.close()


def test_cli_background_option(scene, tmp_path, capsys):
    vol, ann, truth = scene
    img = save_volume(tmp_path / "img.nii.gz", vol, spacing=SPACING)
    a = save_volume(tmp_path / "ann.nii.gz", ann, spacing=SPACING, kind="labels")
    out_on, out_off = tmp_path / "on.nii.gz", tmp_path / "off.nii.gz"
    assert main(["segment", str(img), "-a", str(a), "-o", str(out_on), "-q",
                 "--background-prior", "fixed"]) == 0
    out = capsys.readouterr().out
    assert "+ background prior" in out and "adaptive" not in out
    assert main(["segment", str(img), "-a", str(a), "-o", str(out_off), "-q",
                 "--background", "none"]) == 0
    assert "background prior" not in capsys.readouterr().out
    from napari_latentseg.io import read_volume

    on = read_volume(out_on).data == 2
    off = read_volume(out_off).data == 2
    assert _dice(on, truth) > _dice(off, truth) + 0.3
    assert main(["segment", str(img), "-a", str(a), "-o", str(tmp_path / "ad.nii.gz"), "-q",
                 "--background-prior", "adaptive"]) == 0
    assert _dice(read_volume(tmp_path / "ad.nii.gz").data == 2, truth) > 0.6
    assert "background prior (adaptive: the object ~" in capsys.readouterr().out
    assert main(["segment", str(img), "-a", str(a), "-o", str(tmp_path / "x.nii.gz"), "-q",
                 "--background", "lesion"]) == 2
    assert "no class is named 'lesion'" in capsys.readouterr().err


def test_adaptive_prior_weighs_by_the_object_share(scene):
    from napari_latentseg.engine.segment.prior import ADAPT_CAP, adaptive_prior_weight

    assert adaptive_prior_weight(0.5, 10) == 10.0  # big object: no more than the object
    assert adaptive_prior_weight(0.005, 10) == 10 * ADAPT_CAP  # small object: capped
    assert adaptive_prior_weight(0.1, 10) == pytest.approx(10 * (0.9 / 0.1) ** 0.5)  # 3x
    assert adaptive_prior_weight(0.05, 10) > adaptive_prior_weight(0.1, 10)
    vol, ann, truth = scene
    res = segment(None, vol, ann, spacing=SPACING)  # adaptive by default
    forest = next(h for h in res.history if h["stage"] == "forest")
    share = forest["object_share"]
    assert 0 < share < 0.05  # the block is 1.5 % of the scene: the estimate is small
    assert _dice(res.labels == 2, truth) > 0.6
    painted = ann > 0
    np.testing.assert_array_equal(res.labels[painted], ann[painted])


def test_a_fresh_round_weighs_the_prior_lighter(scene):
    """Without ``previous`` the adaptive prior is scaled by ``fresh_prior_scale`` (the object
    comes out larger from the first strokes); a round that continues one weighs it in full."""
    vol, ann, truth = scene
    # The block is small: the root odds pass the 10x cap even at 0.5, so far lighter here.
    # The forest's object, without the edge step that takes both to the block's edges.
    light = segment(None, vol, ann, SegmentOptions(fresh_prior_scale=0.05,
                                                   boundary_refine=False), spacing=SPACING)
    full = segment(None, vol, ann, SegmentOptions(fresh_prior_scale=1.0,
                                                  boundary_refine=False), spacing=SPACING)
    assert (light.labels == 2).sum() >= (full.labels == 2).sum()
    assert not np.array_equal(light.probabilities, full.probabilities)
    assert _dice(light.labels == 2, truth) > 0.6
    ann2 = ann.copy()
    ann2[3, 40:43, 40:43] = 1
    cont = [segment(None, vol, ann2, SegmentOptions(fresh_prior_scale=f, momentum=0.0),
                    spacing=SPACING, previous=light) for f in (0.05, 1.0)]
    np.testing.assert_array_equal(cont[0].probabilities, cont[1].probabilities)
    with pytest.raises(ValueError, match="fresh_prior_scale"):
        SegmentOptions(fresh_prior_scale=0.0)


def test_a_round_continues_the_last_only_when_it_adds_strokes():
    last = np.zeros((2, 4, 4), np.uint8)
    last[0, 0, :2] = 1
    last[1, 3, 3] = 2
    added = last.copy()
    added[1, 0, 0] = 1
    assert continues_round(last, added)
    assert not continues_round(last, last.copy())  # nothing new: its own answer
    erased = added.copy()
    erased[0, 0, 0] = 0
    assert not continues_round(last, erased)
    repainted = added.copy()
    repainted[1, 3, 3] = 1
    assert not continues_round(last, repainted)
    assert not continues_round(None, added) and not continues_round(last, added[:1])


def test_each_tree_sees_enough_painted_voxels_without_the_prior():
    """Strokes of three or more classes (no prior): each tree bootstraps at least
    MIN_TREE_SAMPLES draws (all rows when there are fewer), not 5 % of a few hundred painted
    voxels; with many rows it keeps the 5 %."""
    from napari_latentseg.engine.segment.forest import fit_forest
    from napari_latentseg.engine.segment.prior import MIN_TREE_SAMPLES

    rng = np.random.default_rng(0)
    few = 300  # seven classes of ~43 voxels: a stroke each
    x, y = rng.random((few, 6)), rng.integers(0, 7, few)
    drawn = [len(np.unique(s)) for s in fit_forest(x, y, 0).estimators_samples_]
    assert min(drawn) > 0.5 * few  # a bootstrap of all 300 rows holds ~63 % of them
    many = 40 * MIN_TREE_SAMPLES
    x, y = rng.random((many, 6)), rng.integers(0, 7, many)
    drawn = [len(np.unique(s)) for s in fit_forest(x, y, 0).estimators_samples_]
    assert 0.9 * 0.05 * many < np.mean(drawn) <= 0.05 * many


def test_adaptive_prior_estimates_with_a_small_forest_then_fits_the_full_one(monkeypatch):
    import napari_latentseg.engine.segment.forest as F

    rng = np.random.default_rng(0)
    x = rng.normal(size=(600, 3)).astype(np.float32)
    y = np.r_[np.ones(50, int), np.zeros(550, int)]
    x[:50] += 3.0  # the painted object, well apart
    w = np.r_[np.ones(50), np.full(550, 0.1)]
    sizes = []
    real = F.fit_forest

    def spy(*args, **kwargs):
        forest = real(*args, **kwargs)
        sizes.append(forest.n_estimators)
        return forest

    monkeypatch.setattr(F, "fit_forest", spy)
    ts = F.TrainingSet(x, y, w, prior=500, background_index=0, adaptive=True)
    forest = ts.fit(seed=0)
    assert sizes == [F.ESTIMATE_TREES, F.FOREST["n_estimators"]]
    assert forest.n_estimators == F.FOREST["n_estimators"]
    assert 0 < ts.object_share < 0.1  # the prior's rows are background: a small share


def test_multiclass_prior_tells_the_rarest_class_where_it_is_not():
    """Three classes: the unpainted sample joins as weak rows of the large classes only."""
    import napari_latentseg.engine.segment.multiprior as mp
    from napari_latentseg.engine.segment.forest import TrainingSet, fit_forest

    vol = np.zeros((4, 30, 30), dtype=np.float32)
    vol[:, :, 15:] = 2.0  # two large halves...
    vol[:, 10:13, 5:8] = 1.0  # ...and a small bright blob in the first
    ann = np.zeros(vol.shape, dtype=np.uint8)
    ann[1, 2:5, 2:5], ann[1, 20:23, 20:23], ann[1, 10:13, 5:8] = 1, 3, 2

    class Features:  # one column: the intensity
        def rows_at(self, flat, stop_event=None):
            return vol.reshape(-1, 1)[flat]

        def prior_slices(self):
            return None

    painted = ann > 0
    ts = TrainingSet(vol[painted][:, None], ann[painted].astype(np.int64) - 1)
    opts = SegmentOptions(background_samples=300, background_margin_mm=2.0, seed=0)

    def add(share):
        with pytest.MonkeyPatch.context() as m:
            m.setattr(mp, "SMALL_SHARE", share)
            return mp.add_multiclass_prior(dataclasses.replace(ts), Features(), ann, 3, opts,
                                           np.random.default_rng(0), SPACING, None, fit_forest)

    assert mp.SMALL_SHARE == 0.02 and add(None).prior == 0  # None: off
    out = add(0.02)
    n = len(ts.y)
    assert out.prior == 300 and len(out.y) == n + 300 and "the rarest class learns" in out.note
    assert not np.any(out.y[n:] == 1)  # the blob's class gets none of the sample
    prior_vals = out.x[n:, 0]
    np.testing.assert_array_equal(out.y[n:][prior_vals == 0.0], 0)  # by the first forest
    np.testing.assert_array_equal(out.y[n:][prior_vals == 2.0], 2)
    assert (out.weight[:n] == 1).all() and np.ptp(out.weight[n:]) == 0
    assert 0 < out.weight[n:].sum() <= 10 * 9  # at most ADAPT_CAP times the blob's rows
