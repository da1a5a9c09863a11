"""What makes a round fast changes no result: the forest walked as tensors (on a GPU in the
product; here on the CPU) predicts as the CPU trees do, the boxed post-processing equals the
whole-volume one, and batches and slabs in threads equal one at a time."""

from __future__ import annotations

import time

import numpy as np
import pytest
import torch
from scipy import ndimage as ndi
from sklearn.ensemble import ExtraTreesClassifier, RandomForestClassifier

from napari_latentseg.engine.segment import FeatureCache, fewshot, gpu_forest, live, segment
from napari_latentseg.engine.segment import forest as forest_mod
from napari_latentseg.engine.segment.gpu_forest import DeviceForest, on_device
from napari_latentseg.engine.segment.postprocess import unanchored
from napari_latentseg.engine.segment.suggest import object_region
from napari_latentseg.engine.segment.trees import fit_lean_forest
from napari_latentseg.runtime.parallel import each_in_threads, map_slabs


def _data(n: int, k: int, seed: int = 0):
    rng = np.random.default_rng(seed)
    y = rng.integers(0, k, n) * 2 + 1
    x = rng.normal(size=(n, 10)).astype(np.float32)
    x[:, 0] += y
    x[:, 1] = np.round(x[:, 1])  # ties at split thresholds
    return x, y, rng


@pytest.mark.parametrize("k", [2, 5])
@pytest.mark.parametrize("kind", ["lean", "random", "extra"])
def test_device_forest_predicts_as_the_cpu_trees(k, kind):
    x, y, rng = _data(800, k)
    if kind == "lean":
        cpu = fit_lean_forest(x, y, 1, 15, 7, 0.3)
    else:
        cls = RandomForestClassifier if kind == "random" else ExtraTreesClassifier
        cpu = cls(n_estimators=15, max_depth=7, random_state=1).fit(x, y)
    test = rng.normal(size=(5000, 10)).astype(np.float32)
    test[:, 0] += rng.integers(0, k, len(test)) * 2 + 1
    test[:, 1] = np.round(test[:, 1])
    dev = DeviceForest(cpu, "cpu")
    assert list(dev.classes_) == list(cpu.classes_) and dev.n_estimators == 15
    np.testing.assert_allclose(dev.predict_proba(test), cpu.predict_proba(test), atol=1e-12)


def test_device_forest_chunks_rows(monkeypatch):
    x, y, rng = _data(600, 3)
    cpu = fit_lean_forest(x, y, 0, 8, 5, 0.5)
    monkeypatch.setattr(gpu_forest, "_PAIRS", 8 * 37)  # 37 rows a chunk
    test = rng.normal(size=(1000, 10)).astype(np.float32)
    np.testing.assert_allclose(DeviceForest(cpu, "cpu").predict_proba(test),
                               cpu.predict_proba(test), atol=1e-12)


def test_only_cuda_rounds_move_the_forest(monkeypatch):
    x, y, _ = _data(300, 2)
    cpu = fit_lean_forest(x, y, 0, 4, 4, 0.5)
    assert on_device(cpu, torch.device("cpu")) is cpu
    assert on_device(cpu, None) is cpu
    monkeypatch.setattr(gpu_forest, "GPU_FOREST", False)
    assert on_device(cpu, torch.device("cuda")) is cpu  # the ablation: no tensors made


def test_a_round_with_the_walked_forest_equals_the_cpu_round(monkeypatch, tiny_model,
                                                             small_phantom, annotations):
    """The engine hands its forest to the device walker (here on the CPU): same labels."""
    ref = segment(tiny_model, small_phantom.image, annotations)
    used = []

    def walk(forest, device):
        used.append(device)
        return DeviceForest(forest, "cpu")

    monkeypatch.setattr(forest_mod, "on_device", walk)
    monkeypatch.setattr(live, "on_device", walk)
    res = segment(tiny_model, small_phantom.image, annotations)
    assert used
    np.testing.assert_array_equal(res.labels, ref.labels)
    np.testing.assert_allclose(res.probabilities, ref.probabilities, atol=1e-6)


def _unanchored_whole(mask, anchor):
    comp, n = ndi.label(mask)
    keep = np.zeros(n + 1, bool)
    keep[0] = True
    keep[comp[anchor & (comp > 0)]] = True
    return ~keep[comp]


def test_boxed_connectivity_equals_whole_volume_labelling():
    """Random masks of every kind: small objects, a class filling most of the volume (the
    box of the rest), boxes spanning two axes whole (the rest split: whole labelling)."""
    rng = np.random.default_rng(5)
    for _ in range(600):
        shape = tuple(int(s) for s in rng.integers(1, 9, 3))
        mask = np.ones(shape, bool)
        for _ in range(int(rng.integers(0, 4))):
            lo = [int(rng.integers(0, s)) for s in shape]
            hi = [int(rng.integers(a + 1, s + 1)) for a, s in zip(lo, shape, strict=True)]
            box = tuple(slice(a, b) for a, b in zip(lo, hi, strict=True))
            mask[box] &= rng.random(tuple(b - a for a, b in zip(lo, hi, strict=True))) > 0.5
        if rng.random() < 0.3:
            mask = ~mask
        anchor = mask & (rng.random(shape) < rng.choice([0.0, 0.02, 0.2]))
        np.testing.assert_array_equal(unanchored(mask, anchor), _unanchored_whole(mask, anchor))
    # A slab across the volume splits the class in two: the side without an anchor goes.
    mask = np.ones((4, 6, 6), bool)
    mask[:, 3] = False
    anchor = np.zeros_like(mask)
    anchor[0, 0, 0] = True
    out = unanchored(mask, anchor)
    assert out[:, 4:].all() and not out[:, :3].any()


def test_object_region_grows_within_its_box_as_over_the_volume():
    rng = np.random.default_rng(2)
    for _ in range(200):
        shape = tuple(int(s) for s in rng.integers(1, 16, 3))
        p0 = np.where(rng.random(shape) < rng.choice([0.0, 0.01, 0.1]), 0.5, 0.95)
        probs = np.stack([p0, 1 - p0]).astype(np.float32)
        ann = np.zeros(shape, np.uint8)
        ann.flat[0] = 1
        body = rng.random(shape) < 0.9
        ref = ndi.binary_dilation(p0 < 0.9, iterations=2) & body
        got = object_region(probs, ann, [1, 2], body)
        np.testing.assert_array_equal(got, ref if ref.any() else body)


def test_slabs_and_items_in_threads_keep_their_order():
    out = np.zeros(50)

    def fill(sl):
        out[sl] = np.arange(sl.start, sl.stop)
        return sl.stop - sl.start

    assert map_slabs(fill, 50, 8, threads=3) == [8, 8, 8, 8, 8, 8, 2]
    np.testing.assert_array_equal(out, np.arange(50))
    done = []
    assert list(each_in_threads(done.append, list(range(7)), 3)) == list(range(7))
    assert sorted(done) == list(range(7))


def test_items_in_threads_raise_at_their_turn_and_stop_the_rest():
    started = []

    def work(i):
        started.append(i)
        time.sleep(0.02)
        if i == 1:
            raise RuntimeError("item 1")

    gen = each_in_threads(work, list(range(40)), 2)
    assert next(gen) == 0
    with pytest.raises(RuntimeError, match="item 1"):
        next(gen)
    assert len(started) < 40  # the items not yet started were cancelled


def test_cached_batches_in_threads_give_the_one_at_a_time_round(monkeypatch, tiny_model,
                                                                small_phantom, annotations):
    cache = FeatureCache()
    segment(tiny_model, small_phantom.image, annotations, cache=cache)  # fills the cache
    monkeypatch.setattr(forest_mod, "PREDICT_VOXELS", 48 * 48 * 3)  # several batches
    monkeypatch.setattr(fewshot, "PREDICT_THREADS", 1)
    one = segment(tiny_model, small_phantom.image, annotations, cache=cache)
    monkeypatch.setattr(fewshot, "PREDICT_THREADS", 3)
    many = segment(tiny_model, small_phantom.image, annotations, cache=cache)
    assert one.cache_hit and many.cache_hit
    np.testing.assert_array_equal(many.labels, one.labels)
    np.testing.assert_array_equal(many.probabilities, one.probabilities)
    np.testing.assert_array_equal(many.uncertainty, one.uncertainty)


def test_the_prior_draws_the_listed_candidates_draw():
    """Unpainted voxels drawn by rank, row by row: the draw of the full candidate list."""
    from napari_latentseg.engine.segment.prior import _draw_true

    pick = np.random.default_rng(0)
    for it in range(300):
        shape = tuple(int(s) for s in pick.integers(1, 25, int(pick.integers(1, 4))))
        mask = pick.random(shape) < pick.choice([0.0, 0.02, 0.5, 0.99])
        n = int(pick.integers(1, 300))
        listed, by_rank = np.random.default_rng(it), np.random.default_rng(it)
        cand = np.flatnonzero(mask)
        ref = np.sort(listed.choice(cand, min(n, cand.size), replace=False)) if cand.size \
            else cand
        np.testing.assert_array_equal(_draw_true(mask, n, by_rank), ref)
        assert listed.random() == by_rank.random()  # the generator is left as it was
