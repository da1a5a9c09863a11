"""Latent-space segmentation: clusters, few-shot, fine-tuning, suggestions, bad input."""

from __future__ import annotations

import threading

import numpy as np
import pytest

from napari_latentseg.cli import main
from napari_latentseg.engine.segment import (
    FeatureCache,
    cluster,
    keep_connected,
    segment,
    segment_iter,
    suggest_slices,
)
from napari_latentseg.engine.segment.suggest import object_end_slice, toward_the_object
from napari_latentseg.io import read_volume, save_volume
from napari_latentseg.models.checkpoint import load_model, save_model

ANNOTATED = [4, 8]  # the slices conftest's `annotations` fixture paints


def _dice(a, b, c):
    return 2 * ((a == c) & (b == c)).sum() / max(1, (a == c).sum() + (b == c).sum())


def _unannotated(n):
    keep = np.ones(n, dtype=bool)
    keep[ANNOTATED] = False
    return keep


def test_few_shot_is_far_above_chance(few_shot, small_phantom):
    keep = _unannotated(small_phantom.image.shape[0])
    truth, pred = small_phantom.labels[keep], few_shot.labels[keep]
    dice = [_dice(pred, truth, c) for c in few_shot.classes]
    # Six classes: chance is ~1/6; the big tissues must be clearly segmented. (Mean Dice is
    # 0.70-0.72 over seeds here, moving by 0.01 with float rounding: a bound with margin.)
    assert np.mean(dice) > 0.65, dice
    assert sorted(dice)[-3] > 0.8, dice
    assert (pred == truth).mean() > 0.8


def test_outputs_are_consistent(few_shot, annotations, small_phantom):
    res = few_shot
    assert res.classes == sorted(int(c) for c in np.unique(annotations) if c)
    assert res.labels.shape == small_phantom.image.shape
    # Ids are the annotation's ids; annotated voxels keep the user's label.
    assert set(np.unique(res.labels)) <= set(res.classes)
    painted = annotations > 0
    np.testing.assert_array_equal(res.labels[painted], annotations[painted])
    np.testing.assert_allclose(res.probabilities.sum(0), 1.0, atol=1e-4)
    assert res.uncertainty.min() >= 0 and res.uncertainty.max() <= 1 + 1e-6
    assert np.all(res.uncertainty[painted] < 1e-3)


def test_suggestion_is_an_unannotated_slice(few_shot):
    sgt = few_shot.suggestion
    assert sgt["axis"] == 0
    assert sgt["index"] is not None and sgt["index"] not in ANNOTATED
    assert sgt["score"] > 0


def test_suggest_slices_per_axis():
    unc = np.zeros((4, 5, 6), dtype=np.float32)
    unc[2] = 0.9
    unc[:, :, 5] = 0.5
    ann = np.zeros(unc.shape, dtype=np.uint8)
    ann[1, 0, 0] = 1
    s = suggest_slices(unc, ann)
    assert (s["axis"], s["index"]) == (0, 2)
    assert s["per_axis"][2]["index"] == 5
    ann[2, 1, 1] = 2
    assert suggest_slices(unc, ann)["per_axis"][0]["index"] != 2
    full = np.ones(unc.shape, dtype=np.uint8)
    assert suggest_slices(unc, full)["index"] is None


def test_suggestion_goes_past_the_objects_end_when_far_from_it():
    """An object that ends on an annotated slice: a suggestion far from it moves to the
    next slice past that end; one within a slice of the object stays."""
    labels = np.ones((12, 8, 8), np.uint8)
    labels[6, 2:6, 2:6] = 2  # predicted object on slice 6 only
    labels[5, 3:5, 3:5] = 2  # ...and a little on slice 5
    ann = np.zeros_like(labels)
    ann[6] = labels[6]  # slice 6 annotated whole: the object's upper end
    far = {"axis": 0, "index": 1, "score": 0.4}
    out = toward_the_object(far, labels, ann, [1, 2])
    assert out["index"] == 7 and out["axis"] == 0 and "ends on a slice" in out["reason"]
    near = {"axis": 0, "index": 4, "score": 0.4}  # next to slice 5's object
    assert toward_the_object(near, labels, ann, [1, 2]) is near
    assert object_end_slice(labels, ann, [1, 2]) == 7  # the lower end (5) is not annotated
    ann[7] = 1  # slice 7 annotated too: that end is closed
    assert toward_the_object(far, labels, ann, [1, 2]) is far
    assert object_end_slice(np.ones_like(labels), ann, [1, 2]) is None  # no object


def test_input_model_is_never_modified(tiny_model, small_phantom, annotations):
    before = {k: v.clone() for k, v in tiny_model.net.state_dict().items()}
    res = segment(tiny_model, small_phantom.image, annotations, finetune_steps=3, head_steps=10)
    after = tiny_model.net.state_dict()
    assert all((before[k] == after[k]).all() for k in before)
    assert tiny_model.head is None
    assert res.model.head["rounds"] == 1
    assert res.model.head["finetuned_encoder"]
    changed = [k for k in before if not (before[k] == res.model.net.state_dict()[k]).all()]
    assert any(k.startswith("encoder") for k in changed)


def test_a_forest_round_shares_the_network_but_not_the_model(tiny_model, small_phantom,
                                                             annotations):
    # No head is trained: the round's model holds the input's network (no deep copy), while
    # its own record (provenance) leaves the caller's model as it was.
    import copy

    mine = copy.copy(tiny_model)
    mine.source_path = "saved.pt"
    info = dict(mine.info)
    res = segment(mine, small_phantom.image[:6], annotations[:6])
    assert res.model is not mine and res.model.net is mine.net
    assert res.model.head is None and mine.head is None
    assert res.model.info["parent"] == "saved.pt" and res.model.source_path is None
    assert mine.info == info and mine.source_path == "saved.pt"


def test_next_round_starts_from_the_fine_tuned_model(tiny_model, small_phantom, annotations,
                                                     tmp_path):
    r1 = segment(tiny_model, small_phantom.image, annotations, finetune_steps=2, head_steps=10)
    path = save_model(r1.model, tmp_path / "round1.pt")
    m1 = load_model(path)
    assert m1.head["classes"] == r1.classes
    r2 = segment(m1, small_phantom.image, annotations, head_steps=5)
    assert r2.model.head["rounds"] == 2
    assert not any("new head" in n for n in r2.notes)


def test_fine_tuned_head_is_checked_on_held_out_annotations(tiny_model, small_phantom,
                                                           annotations):
    from napari_latentseg.engine.segment.holdout import holdout as _holdout

    held = _holdout(annotations, seed=0)
    assert held is not None and held.any()
    assert (annotations[held] > 0).all()  # only annotated voxels are held out
    assert 0.05 < held.sum() / (annotations > 0).sum() < 0.5
    # Every class stays on both sides, so the head still learns all of them.
    assert set(np.unique(annotations[held])) == set(np.unique(annotations[annotations > 0]))
    res = segment(tiny_model, small_phantom.image, annotations, finetune_steps=2, head_steps=10)
    check = [h for h in res.history if h["stage"] == "holdout"]
    assert len(check) == 1 and check[0]["voxels"] > 0
    assert check[0]["used"] in (True, False)
    if not check[0]["used"]:
        assert any("forest's result is kept" in n for n in res.notes)
    painted = annotations > 0  # held-out voxels too keep the user's label
    assert (res.labels[painted] == annotations[painted]).all()
    # Too few annotations to hold a tile of each class out: no check, and it is said.
    tiny = np.zeros_like(annotations)
    tiny[6, 2:5, 2:5], tiny[6, 30:33, 30:33] = 1, 2
    assert _holdout(tiny, seed=0) is None
    res = segment(tiny_model, small_phantom.image, tiny, finetune_steps=1, head_steps=5)
    assert any("too few annotations" in n for n in res.notes)


def test_new_classes_train_a_new_head(tiny_model, small_phantom, annotations):
    tuned = segment(tiny_model, small_phantom.image, annotations, finetune_steps=2,
                    head_steps=5).model
    ann = annotations.copy()
    ann[6, 0:3, 0:3] = 9  # a class the head has never seen
    res = segment(tuned, small_phantom.image, ann, head_steps=10)
    assert 9 in res.classes
    assert any("new head" in n for n in res.notes), res.notes


@pytest.mark.parametrize(
    "make, message",
    [
        (lambda a: a[:, :-1], "shape"),
        (lambda a: np.zeros_like(a), "no annotated voxel"),
        (lambda a: (a > 0).astype(a.dtype), "only class 1"),
        (lambda a: a.astype(np.float32) + 0.5, "integer"),
        (lambda a: a.astype(np.int16) - 2, ">= 0"),
    ],
)
def test_bad_annotations(make, message, tiny_model, small_phantom, annotations):
    with pytest.raises(ValueError, match=message):
        segment(tiny_model, small_phantom.image, make(annotations))


def test_features_are_cached_between_rounds(tiny_model, small_phantom, annotations):
    cache = FeatureCache()
    a = segment(tiny_model, small_phantom.image, annotations, cache=cache, head_steps=20)
    assert not a.cache_hit
    b = segment(tiny_model, small_phantom.image, annotations, cache=cache, head_steps=20)
    assert b.cache_hit
    # float16 cache vs float32 features: the same prediction almost everywhere.
    assert (a.labels == b.labels).mean() > 0.98


def test_the_feature_cache_follows_the_encoder_not_the_decoder(tiny_model, small_phantom):
    import copy

    import torch

    cache = FeatureCache()
    polished, tuned = copy.deepcopy(tiny_model), copy.deepcopy(tiny_model)
    with torch.no_grad():
        next(polished.net.decoder.parameters()).add_(1.0)  # what the decoder phase changes
        next(tuned.net.encoder.parameters()).add_(1.0)  # what fine-tuning the encoder changes
    key = cache.key(tiny_model, small_phantom.image)
    assert cache.key(polished, small_phantom.image) == key
    assert cache.key(tuned, small_phantom.image) != key


def test_fine_tuning_stops_when_asked(tiny_model, small_phantom, annotations):
    stop = threading.Event()
    gen = segment_iter(tiny_model, small_phantom.image, annotations, finetune_steps=1000,
                       head_steps=5, stop_event=stop)
    steps = 0
    try:
        while True:
            ev = next(gen)
            if ev["stage"] == "segment: fine-tune":
                steps = ev["done"]
                if steps == 3:
                    stop.set()
    except StopIteration as done:
        res = done.value
    assert steps == 3
    assert res.labels.shape == small_phantom.image.shape


def test_clusters_are_stable_and_ordered(tiny_model, small_phantom):
    a = cluster(tiny_model, small_phantom.image, 4, seed=0)
    b = cluster(tiny_model, small_phantom.image, 4, seed=0)
    np.testing.assert_array_equal(a.labels, b.labels)
    assert set(np.unique(a.labels)) <= {1, 2, 3, 4}
    assert a.cluster_intensity == sorted(a.cluster_intensity)
    # Label 1 (darkest) is mostly air, the brightest is mostly white matter or scalp.
    assert np.mean(small_phantom.labels[a.labels == 1] == 1) > 0.8
    g = cluster(tiny_model, small_phantom.image, 3, method="gmm")
    assert set(np.unique(g.labels)) <= {1, 2, 3}
    with pytest.raises(ValueError, match="k must be"):
        cluster(tiny_model, small_phantom.image, 1)


def test_cli_cluster_and_segment(tmp_path, tiny_model, small_phantom, annotations, capsys):
    img = save_volume(tmp_path / "img.nii.gz", small_phantom.image, spacing=(4.0, 4.0, 4.0))
    ann = save_volume(tmp_path / "ann.nii.gz", annotations, spacing=(4.0, 4.0, 4.0),
                      kind="labels")
    model = save_model(tiny_model, tmp_path / "vae.pt")
    model_bytes = model.read_bytes()
    assert main(["cluster", str(img), "-m", str(model), "-k", "3", "-o",
                 str(tmp_path / "cl.nii.gz"), "-q"]) == 0
    assert set(np.unique(read_volume(tmp_path / "cl.nii.gz").data)) <= {1, 2, 3}
    code = main(["segment", str(img), "-m", str(model), "-a", str(ann), "-o",
                 str(tmp_path / "seg.nii.gz"), "--finetune-steps", "2", "--uncertainty",
                 str(tmp_path / "unc.nii.gz"), "--suggest", "-q"])
    assert code == 0
    out = capsys.readouterr().out
    assert "suggestion: annotate slice" in out
    # The fine-tuned model is a new file; the one we started from is untouched.
    assert model.read_bytes() == model_bytes
    v2 = tmp_path / "vae-v2.pt"
    assert v2.is_file() and load_model(v2).head is not None
    seg = read_volume(tmp_path / "seg.nii.gz")
    assert seg.shape == small_phantom.image.shape
    # Annotations on another grid are refused with one line.
    other = save_volume(tmp_path / "ann2.nii.gz", annotations, spacing=(4.0, 4.0, 2.0),
                        kind="labels")
    code = main(["segment", str(img), "-m", str(model), "-a", str(other), "-o",
                 str(tmp_path / "seg2.nii.gz"), "-q"])
    assert code == 2
    assert "grid" in capsys.readouterr().err
    # The ablation from the command line: the output says which features were used.
    assert main(["segment", str(img), "-m", str(model), "-a", str(ann), "-o",
                 str(tmp_path / "seg3.nii.gz"), "--no-vae-features", "-q"]) == 0
    assert "features: ilastik multiscale set only" in capsys.readouterr().out
    # Seven classes: the class prototypes are columns, unless asked not to be.
    assert "+ class prototypes" in out
    assert main(["segment", str(img), "-m", str(model), "-a", str(ann), "-o",
                 str(tmp_path / "seg4.nii.gz"), "--no-prototypes", "-q"]) == 0
    assert "prototypes" not in capsys.readouterr().out
    # One object against its background: the VAE's columns only when asked for.
    two = save_volume(tmp_path / "two.nii.gz", np.where(
        annotations == 1, 1, np.where(annotations == 6, 2, 0)).astype(np.uint8),
        spacing=(4.0, 4.0, 4.0), kind="labels")
    for i, (flag, shown) in enumerate(
            (([], "no VAE features"), (["--vae-features", "always"], "VAE latent"))):
        assert main(["segment", str(img), "-m", str(model), "-a", str(two), "-o",
                     str(tmp_path / f"two{i}.nii.gz"), "-q", *flag]) == 0
        assert shown in capsys.readouterr().out
    assert main(["segment", str(img), "-m", str(model), "-a", str(two), "-o",
                 str(tmp_path / "two2.nii.gz"), "--no-vae-features", "--vae-features",
                 "always", "-q"]) == 2
    assert "contradict" in capsys.readouterr().err


def test_keep_connected_moves_regions_on_to_a_class_their_strokes_reach():
    """Three classes: a region moved by the rule must connect to its new class's strokes."""
    labels = np.ones((1, 10, 30), dtype=np.uint8)
    labels[..., 10:20] = 2
    labels[..., 20:] = 3
    labels[0, 4:6, 24:27] = 1  # air in the body, away from the air stroke
    ann = np.zeros_like(labels)
    ann[0, 0, 0], ann[0, 0, 15], ann[0, 0, 29] = 1, 2, 3
    # The runner-up there is class 2, whose strokes do not reach it.
    probs = np.stack([np.full(labels.shape, p, np.float32) for p in (0.5, 0.3, 0.2)])
    out, changed = keep_connected(labels, probs, ann, [1, 2, 3])
    assert changed == 6 and (out[0, 4:6, 24:27] == 3).all()
    # Voxels no class's strokes reach keep their most probable class.
    out, changed = keep_connected(labels, probs, np.zeros_like(ann), [1, 2, 3])
    assert changed == 0 and (out == labels).all()
    # A region whose other classes are all under 5 % there stays in its class.
    sure = np.stack([np.full(labels.shape, p, np.float32) for p in (0.98, 0.01, 0.01)])
    out, changed = keep_connected(labels, sure, ann, [1, 2, 3])
    assert changed == 0 and (out[0, 4:6, 24:27] == 1).all()


def test_keep_connected_drops_regions_away_from_strokes():
    labels = np.ones((5, 20, 20), dtype=np.uint8)
    labels[1:3, 2:6, 2:6] = 2  # the painted object
    labels[1:3, 12:16, 12:16] = 2  # an island nobody painted
    ann = np.zeros_like(labels)
    ann[1, 3, 3] = 2
    ann[0, 0, 0] = 1
    probs = np.stack([(labels == 1), (labels == 2)]).astype(np.float32)
    out, changed = keep_connected(labels, probs, ann, [1, 2])
    assert changed == 2 * 4 * 4
    assert (out[1:3, 2:6, 2:6] == 2).all() and (out[1:3, 12:16, 12:16] == 1).all()
    assert (labels[1:3, 12:16, 12:16] == 2).all()  # the input is not modified


def test_forest_round_and_unpainted_regions(tiny_model, small_phantom, annotations):
    """Forest rounds change no model; ``keep_connected_regions=False`` keeps every region."""
    res = segment(tiny_model, small_phantom.image, annotations, keep_connected_regions=False)
    assert not res.trained_head and res.model.head is None
    kept = segment(tiny_model, small_phantom.image, annotations)
    # The rule only ever removes regions: each class's voxels are a subset, bar reassignments.
    for c in res.classes:
        lost = (res.labels == c) & (kept.labels != c)
        assert not (annotations[lost] == c).any()
    mlp = segment(tiny_model, small_phantom.image, annotations, classifier="mlp", head_steps=30)
    assert mlp.trained_head and mlp.model.head["rounds"] == 1
    with pytest.raises(ValueError, match="classifier"):
        segment(tiny_model, small_phantom.image, annotations, classifier="svm")


@pytest.mark.parametrize("name", ["tiny", "tiny-3d"])
def test_projections_equal_the_full_hypercolumn(name):
    """PCA projection and the head's first layer, applied per encoder level before upsampling,
    equal the same maps applied to the full hypercolumn (both are linear, bilinear weights
    sum to one)."""
    import torch

    from napari_latentseg.engine.features import Hypercolumn, SegmentationHead
    from napari_latentseg.models.config import CONFIGS, build_network

    torch.manual_seed(0)
    cfg = CONFIGS[name]
    hyper = Hypercolumn(build_network(cfg).eval(), cfg.context_slices)
    shape = (1, 1) + ((24, 40) if cfg.spatial_dims == 2 else (16, 16, 24))
    x = torch.randn(shape)
    n_tap = sum(hyper.tap_channels)
    head = SegmentationHead(hyper.n_features, 3, 16, cfg.spatial_dims)
    head.mean.normal_()
    head.std.uniform_(0.5, 2.0)
    mean, std, comp = torch.randn(n_tap), torch.rand(n_tap) + 0.5, torch.randn(n_tap, 4)
    with torch.inference_mode():
        full = hyper(x)
        lat = full[:, n_tap : n_tap + hyper.latent_channels]
        taps = full[:, :n_tap].movedim(1, -1)
        want = torch.cat([lat, (((taps - mean) / std) @ comp).movedim(-1, 1)], dim=1)
        torch.testing.assert_close(hyper.projected(x, mean, std, comp), want,
                                   atol=1e-4, rtol=1e-4)
        torch.testing.assert_close(hyper.head_logits(x, head), head(full), atol=1e-4,
                                   rtol=1e-4)


def test_suggestion_looks_where_the_object_could_be():
    from napari_latentseg.engine.segment.suggest import object_region as _object_region

    ann = np.zeros((8, 20, 20), dtype=np.uint8)
    ann[0] = 1
    ann[0, 8:12, 8:12] = 2  # class 1 (background) is the most painted
    probs = np.zeros((2, 8, 20, 20), dtype=np.float32)
    probs[0] = 1.0
    probs[0, 3, 5:7, 5:7] = 0.4  # the only place where the object could be
    probs[1] = 1.0 - probs[0]
    body = np.ones(ann.shape, dtype=bool)
    region = _object_region(probs, ann, [1, 2], body)
    assert region[3, 5:7, 5:7].all() and region[3, 3, 5]  # grown by two voxels
    assert not region[3, 15, 15] and not region[6:].any()
    unc = np.where(region, 0.5, 0.0).astype(np.float32)
    unc[7] = 0.9  # very uncertain, but where the object cannot be
    sug = suggest_slices(unc, ann, region)
    assert sug["axis"] != 0 or sug["index"] in (1, 2, 3, 4, 5)
    # Nothing in doubt: the body is the region.
    probs[0] = 1.0
    assert _object_region(probs, ann, [1, 2], body) is body


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"classifier": "svm"}, "classifier"),
        ({"finetune_steps": -1}, "finetune_steps"),
        ({"head_steps": -5}, "head_steps"),
        ({"hidden": 0}, "hidden"),
        ({"max_per_class": 0}, "max_per_class"),
        ({"finetune_lr": 0.0}, "finetune_lr"),
        ({"encoder_lr_factor": -0.1}, "encoder_lr_factor"),
    ],
)
def test_segment_options_are_checked(kwargs, message):
    from napari_latentseg.engine.segment import SegmentOptions

    with pytest.raises(ValueError, match=message):
        SegmentOptions(**kwargs)


def test_options_object_and_keywords_are_the_same_round(tiny_model, small_phantom, annotations,
                                                        few_shot):
    from napari_latentseg.engine.segment import SegmentOptions

    opts = SegmentOptions(keep_connected_regions=False)
    a = segment(tiny_model, small_phantom.image, annotations, opts)
    b = segment(tiny_model, small_phantom.image, annotations, keep_connected_regions=False)
    np.testing.assert_array_equal(a.labels, b.labels)
    # Keywords apply over an options object; the default options give the default round.
    c = segment(tiny_model, small_phantom.image, annotations, opts, keep_connected_regions=True)
    np.testing.assert_array_equal(c.labels, few_shot.labels)
    with pytest.raises(TypeError, match="finetune_step"):
        segment(tiny_model, small_phantom.image, annotations, finetune_step=3)


def test_label_ids_above_16_bits_and_float_annotations(tiny_model, small_phantom, annotations,
                                                       few_shot, tmp_path):
    """Ids past 65535 are kept as such (uint32), the same round as with small ids."""
    big = np.where(annotations > 0, annotations.astype(np.int64) + 70_000, 0)
    res = segment(tiny_model, small_phantom.image, big)
    assert res.classes == [c + 70_000 for c in few_shot.classes]
    assert res.labels.dtype == np.uint32
    np.testing.assert_array_equal(res.labels, few_shot.labels.astype(np.uint32) + 70_000)
    # Integer-valued float annotations are the same annotations.
    floats = segment(tiny_model, small_phantom.image, annotations.astype(np.float32))
    np.testing.assert_array_equal(floats.labels, few_shot.labels)
    # keep_connected widens labels whose type cannot hold a class id.
    labels = np.ones((1, 4, 4), dtype=np.uint16)
    ann = np.zeros_like(labels)
    ann[0, 0, 0] = 1
    probs = np.stack([np.full(labels.shape, 0.4), np.full(labels.shape, 0.6)])
    out, changed = keep_connected(labels, probs, ann, [1, 70_000])
    assert changed == 0 and out.dtype == np.uint32
    labels[0, 3, 3] = 5  # no class, no seed: untouched
    labels[0, 2:, :2] = 2  # unpainted class 2 goes to the next most probable class...
    out, changed = keep_connected(labels, np.stack([probs[0], probs[1], probs[1]]), ann,
                                  [1, 2, 70_000])
    # ... and on, to class 1: no stroke of class 70000 reaches it.
    assert changed == 4 and (out[0, 2:, :2] == 1).all() and out[0, 3, 3] == 5
    # The CLI writes them as they are.
    img = save_volume(tmp_path / "img.nii.gz", small_phantom.image, spacing=(4.0, 4.0, 4.0))
    ann_file = save_volume(tmp_path / "ann.nii.gz", big, spacing=(4.0, 4.0, 4.0),
                           kind="labels")
    model = save_model(tiny_model, tmp_path / "vae.pt")
    assert main(["segment", str(img), "-m", str(model), "-a", str(ann_file), "-o",
                 str(tmp_path / "seg.nii.gz"), "-q"]) == 0
    # The file's spacing places the unpainted sample's margin (rounds of three or more classes).
    res = segment(tiny_model, small_phantom.image, big, spacing=(4.0, 4.0, 4.0))
    np.testing.assert_array_equal(read_volume(tmp_path / "seg.nii.gz").data, res.labels)


def test_head_round_trips_through_its_file_format(tiny_model, small_phantom, annotations,
                                                  tmp_path):
    import torch

    from napari_latentseg.models.head import head_matches, pack_head, unpack_head

    res = segment(tiny_model, small_phantom.image, annotations, classifier="mlp", head_steps=5,
                  hidden=16)
    record = load_model(save_model(res.model, tmp_path / "m.pt")).head
    assert record["hidden"] == 16 and record["classes"] == res.classes
    assert record["annotated_voxels"] == int((annotations > 0).sum())
    assert head_matches(record, res.classes, record["n_features"])
    assert not head_matches(record, res.classes[:-1], record["n_features"])
    head = unpack_head(record, tiny_model.config.spatial_dims)
    again = pack_head(head, res.classes, rounds=1, finetuned_encoder=False,
                      annotated_voxels=record["annotated_voxels"])
    assert {k: v for k, v in again.items() if k != "state_dict"} == \
        {k: v for k, v in record.items() if k != "state_dict"}
    for k, v in record["state_dict"].items():
        assert torch.equal(again["state_dict"][k], v)
    # A later round continues the head at its own width, whatever ``hidden`` says, so the
    # round after that still loads it.
    r2 = segment(res.model, small_phantom.image, annotations, classifier="mlp", head_steps=2)
    assert r2.model.head["hidden"] == 16 and r2.model.head["rounds"] == 2
    r3 = segment(r2.model, small_phantom.image, annotations, classifier="mlp", head_steps=2)
    assert r3.model.head["rounds"] == 3 and not any("new head" in n for n in r3.notes)
