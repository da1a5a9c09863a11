"""The object's geodesic reach in object-vs-background rounds (engine/segment/reach.py)."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest

from napari_latentseg.engine.segment import SegmentOptions, segment
from napari_latentseg.engine.segment.reach import (
    REACH_MM,
    geodesic_distance,
    reach_gate,
    reach_radius,
)

SPACING = (3.0, 1.0, 1.0)


def test_geodesic_distance_counts_edges_as_distance():
    flat = np.zeros((3, 32, 64), np.float32)
    edged = flat.copy()
    edged[:, :, 32:] = 1.0  # one edge of a normalised unit at x = 32
    seeds = np.zeros(flat.shape, bool)
    seeds[1, 16, 4] = True
    d_flat = geodesic_distance(flat, seeds, (2.0, 1.0, 1.0))
    d_edge = geodesic_distance(edged, seeds, (2.0, 1.0, 1.0))
    assert d_flat.shape == seeds.shape and d_flat.dtype == np.float32
    assert d_flat[1, 16, 4] == 0.0
    # Without an edge: the in-plane distance (grid 4: 56 mm to x = 60); with it, ~50 more.
    assert abs(d_flat[1, 16, 60] - 56.0) < 1.0
    assert d_edge[1, 16, 60] - d_flat[1, 16, 60] > 30.0
    np.testing.assert_allclose(d_edge[1, 16, :28], d_flat[1, 16, :28])  # before the edge
    assert d_flat[0, 16, 4] == pytest.approx(2.0)  # one slice away: the slice spacing
    # The grid: / 4 up to 256-voxel slices, coarser for bigger ones (512: / 8).
    big = np.zeros((2, 512, 512), bool)
    big[0, 100, 100] = True
    d_big = geodesic_distance(np.zeros(big.shape, np.float32), big, (1.0, 1.0, 1.0))
    assert d_big[0, 100, 96:104].max() == 0.0 and d_big[0, 100, 104] == pytest.approx(8.0)


def test_geodesic_distance_on_channels_counts_each_in_its_deviations():
    """(z, y, x, C) input: every channel is scaled to unit standard deviation, so an edge
    costs the same in any channel whatever its units."""
    edged = np.zeros((3, 32, 64), np.float32)
    edged[:, :, 32:] = 1.0
    seeds = np.zeros(edged.shape, bool)
    seeds[1, 16, 4] = True
    one = geodesic_distance(edged[..., None], seeds, (2.0, 1.0, 1.0))
    scaled = geodesic_distance(100.0 * edged[..., None], seeds, (2.0, 1.0, 1.0))
    np.testing.assert_allclose(one, scaled, rtol=1e-5)
    plain = geodesic_distance(edged / edged.std(), seeds, (2.0, 1.0, 1.0))
    np.testing.assert_allclose(one, plain, rtol=1e-5)
    flat = np.zeros_like(edged)
    two = geodesic_distance(np.stack([edged, flat], -1), seeds, (2.0, 1.0, 1.0))
    np.testing.assert_allclose(two, one, rtol=1e-5)  # a flat channel adds no cost


def test_gate_and_radius():
    d = np.array([0.0, 40.0, 60.0, 200.0], np.float32)
    g = reach_gate(d, 40.0)
    np.testing.assert_allclose(g[:2], 1.0)
    assert g[2] == pytest.approx(np.exp(-0.5))  # sigma = R / 2
    assert g[3] < 1e-6
    seeds = np.zeros((4, 200, 200), bool)
    seeds[2, 100, 100] = True
    assert reach_radius(seeds, SPACING) == REACH_MM  # one small stroke: the floor
    seeds[2, 100, 10:190] = True  # a long stroke: 1.5x its spread (90 mm)
    assert reach_radius(seeds, SPACING) == pytest.approx(1.5 * 90, abs=1.0)
    with pytest.raises(ValueError, match="at least one seed"):
        geodesic_distance(np.zeros((2, 8, 8), np.float32), np.zeros((2, 8, 8), bool), SPACING)


@pytest.fixture(scope="module")
def twin():
    """An object block, its twin (the same tissue) 160 mm away joined to it by a bridge of
    that tissue, on a plate; one stroke of each class near the object."""
    rng = np.random.default_rng(0)
    vol = rng.normal(0, 0.2, (6, 48, 240)).astype(np.float32)
    vol[:, 4:44, 4:236] += 1.0  # the plate
    vol[1:5, 16:32, 16:36] += 1.5  # the object
    vol[1:5, 16:32, 196:216] += 1.5  # its twin
    vol[1:5, 22:26, 36:196] += 1.5  # the bridge
    ann = np.zeros(vol.shape, np.uint8)
    ann[3, 22:26, 24:28] = 2
    ann[3, 6:10, 20:24] = 1
    return vol, ann


def test_reach_keeps_the_far_twin_out(twin):
    vol, ann = twin
    far = np.s_[1:5, 18:30, 200:212]
    # A weak prior (the default's here learns the twin from its own draw, as it cannot on a
    # whole CT): without the reach the twin joins the object through the bridge, connected
    # to the stroke, so the connectivity rule keeps it; with it, the twin is background.
    weak = SegmentOptions(background_weight=0.05, background_adaptive=False)
    off = segment(None, vol, ann, replace(weak, object_reach=False), spacing=SPACING)
    on = segment(None, vol, ann, weak, spacing=SPACING)
    assert (off.labels[far] == 2).mean() > 0.9
    assert (on.labels[far] == 2).mean() < 0.1
    near = np.s_[1:5, 18:30, 18:34]
    assert (on.labels[near] == 2).mean() > 0.9  # the object itself stays
    painted = ann > 0
    np.testing.assert_array_equal(on.labels[painted], ann[painted])
    reach = [h for h in on.history if h["stage"] == "reach"]
    assert len(reach) == 1 and reach[0]["radius_mm"] == REACH_MM and reach[0]["faded"] > 0
    assert any("beyond the object's reach (40 mm" in n for n in on.notes)
    assert not [h for h in off.history if h["stage"] == "reach"]
    np.testing.assert_allclose(on.probabilities.sum(0), 1.0, atol=1e-5)


def test_no_reach_without_the_prior_or_with_three_classes(twin):
    vol, ann = twin
    res = segment(None, vol, ann, SegmentOptions(background=None), spacing=SPACING)
    assert not [h for h in res.history if h["stage"] == "reach"]
    three = ann.copy()
    three[3, 40:42, 100:102] = 3
    res = segment(None, vol, three, spacing=SPACING)
    assert not [h for h in res.history if h["stage"] == "reach"]


def test_cli_no_reach(twin, tmp_path, monkeypatch, capsys):
    import napari_latentseg.engine.segment.reach as reach
    from napari_latentseg.cli import main
    from napari_latentseg.io import save_volume

    vol, ann = twin
    calls = []
    # The gate, not the distance: the forest's stroke-distance column computes that anyway
    # (the reach reuses it).
    real = reach.reach_gate
    monkeypatch.setattr(reach, "reach_gate", lambda *a, **k: calls.append(1) or real(*a, **k))
    img = save_volume(tmp_path / "img.nii.gz", vol, spacing=SPACING)
    a = save_volume(tmp_path / "ann.nii.gz", ann, spacing=SPACING, kind="labels")
    assert main(["segment", str(img), "-a", str(a), "-o", str(tmp_path / "on.nii.gz"),
                 "-q"]) == 0
    assert calls == [1]
    assert main(["segment", str(img), "-a", str(a), "-o", str(tmp_path / "off.nii.gz"), "-q",
                 "--no-reach"]) == 0
    assert calls == [1]  # not applied again


def test_cli_snap_edge_and_light_prior(twin, tmp_path, monkeypatch):
    import napari_latentseg.engine.segment.fewshot as fewshot
    from napari_latentseg.cli import main
    from napari_latentseg.io import save_volume

    vol, ann = twin
    seen = []
    real = fewshot.resolve_options
    monkeypatch.setattr(fewshot, "resolve_options",
                        lambda *a, **k: seen.append(real(*a, **k)) or seen[-1])
    img = save_volume(tmp_path / "img.nii.gz", vol, spacing=SPACING)
    a = save_volume(tmp_path / "ann.nii.gz", ann, spacing=SPACING, kind="labels")
    for i, flags in enumerate(([], ["--snap-edge", "--light-prior"], ["--no-snap-edge"])):
        assert main(["segment", str(img), "-a", str(a), "-o", str(tmp_path / f"{i}.nii.gz"),
                     "-q", *flags]) == 0
    assert [(o.boundary_refine, o.fresh_prior_scale) for o in seen] == [
        (True, 1.0), (True, 0.5), (False, 1.0)]  # the edge step is the default
    with pytest.raises(SystemExit):  # argparse: one or the other
        main(["segment", str(img), "-a", str(a), "-o", str(tmp_path / "x.nii.gz"),
              "--snap-edge", "--no-snap-edge"])


def test_geodesic_distance_on_a_grid_of_one_voxel():
    seeds = np.zeros((1, 3, 3), bool)
    seeds[0, 1, 1] = True
    d = geodesic_distance(np.zeros((1, 3, 3), np.float32), seeds, (1.0, 1.0, 1.0))
    np.testing.assert_array_equal(d, np.zeros((1, 3, 3), np.float32))


def test_grid_helpers_equal_the_full_size_upsampling():
    from napari_latentseg.engine.segment import reach

    rng = np.random.default_rng(0)
    cells = rng.random((3, 4, 5)).astype(np.float32)
    target = rng.random((3, 15, 18)).astype(np.float32)  # not a multiple of the grid
    full = reach.upsample_grid(cells, 4, target.shape)
    assert full.shape == target.shape
    np.testing.assert_array_equal(full[:, 4:8, 8:12], np.broadcast_to(cells[:, 1:2, 2:3],
                                                                      (3, 4, 4)))
    expected = target * full
    reach.scale_by_grid(target, cells, 4)
    np.testing.assert_array_equal(target, expected)
    mask = rng.random(target.shape) > 0.5
    low = cells < 0.3
    assert reach.count_by_grid(mask, low, 4) == int(np.count_nonzero(mask & (full < 0.3)))
