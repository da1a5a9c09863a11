"""Latent-space segmentation's features: the annotated sample, the VAE ablation, rounds
without a model, the ilastik filters, class prototypes, the CLI's suggestion note."""

from __future__ import annotations

import numpy as np
import pytest

from napari_latentseg.cli import main
from napari_latentseg.engine.segment import segment
from napari_latentseg.io import save_volume


def test_annotated_sample_is_balanced_and_in_volume_order():
    import torch

    from napari_latentseg.engine.segment.annotations import annotated_batches, sample_annotated

    ann = np.zeros((6, 4, 5), dtype=np.uint8)
    ann[1, :, :] = 1  # 20 voxels of class 1
    ann[2, 0, :3] = 2
    ann[4, 1, 1] = 3
    batches = annotated_batches(ann, per=1, spatial_dims=2)
    assert [b.tolist() for b in batches] == [[1], [2], [4]]
    assert [b.tolist() for b in annotated_batches(ann, 4, 2)] == [[1, 2], [4]]
    # Features = the flat voxel index, so the sample says which voxels it took.
    flat = torch.arange(ann.size, dtype=torch.float32)[:, None]

    def rows_of(zs):
        return flat.reshape(ann.shape[0], -1)[zs[0] : zs[-1] + 1].reshape(-1, 1)

    x, y = sample_annotated(ann, rows_of, batches, 5, np.random.default_rng(0), None)
    idx = x[:, 0].numpy().astype(int)
    assert np.bincount(y).tolist() == [0, 5, 3, 1]
    assert (np.diff(idx) > 0).all()  # volume order
    np.testing.assert_array_equal(ann.reshape(-1)[idx], y)


def test_vae_feature_ablation_really_removes_them(tiny_model, small_phantom, annotations,
                                                   tmp_path, capsys):
    import napari_latentseg.engine.segment.forest as forest_module
    from napari_latentseg.engine.segment.forest import ForestFeatures
    from napari_latentseg.engine.segment.runner import FeatureRunner

    run = FeatureRunner(tiny_model, small_phantom.image, "MR")
    zs = np.array([3, 4])
    with_vae = ForestFeatures(run, None, vae=True).compute(zs).numpy()
    without = ForestFeatures(run, None, vae=False).compute(zs).numpy()
    with pytest.MonkeyPatch.context() as mp:  # the benchmark's centre-surround variant
        mp.setattr(forest_module, "CONTRAST_WITHOUT_VAE", True)
        dog = ForestFeatures(run, None, vae=False).compute(zs).numpy()
    run.close()
    assert without.shape[1] == 20 < with_vae.shape[1]  # 5 sigmas x 4 ilastik features
    np.testing.assert_allclose(without, with_vae[:, :20], atol=1e-5)  # the same ilastik set
    # Each smoothed intensity (columns 0, 4, ...) minus the next wider one; nothing of the VAE.
    assert dog.shape[1] == 24
    np.testing.assert_allclose(dog[:, :20], without, atol=1e-5)
    np.testing.assert_allclose(dog[:, 20:], without[:, 0:16:4] - without[:, 4:20:4], atol=1e-5)
    res = segment(tiny_model, small_phantom.image, annotations, vae_features=False)
    forest = next(h for h in res.history if h["stage"] == "forest")
    assert "no VAE" in forest["features"]
    painted = annotations > 0
    np.testing.assert_array_equal(res.labels[painted], annotations[painted])
    with pytest.raises(ValueError, match="vae_features"):
        segment(tiny_model, small_phantom.image, annotations, vae_features=False,
                classifier="mlp")


def _forest_features(res) -> str:
    return next(h for h in res.history if h["stage"] == "forest")["features"]


def test_vae_columns_join_rounds_of_three_or_more_classes(tiny_model, small_phantom,
                                                          annotations):
    """``vae_features="auto"`` (the default): the VAE's columns where they paid on the
    benchmark, tissues told apart, and not for one object against its background."""
    from napari_latentseg.engine.segment import SegmentOptions

    vol = small_phantom.image
    assert len(np.unique(annotations[annotations > 0])) >= 3
    assert "VAE latent" in _forest_features(segment(tiny_model, vol, annotations))
    two = np.where(annotations == 1, 1, np.where(annotations == 6, 2, 0)).astype(np.uint8)
    auto = segment(tiny_model, vol, two)
    assert "no VAE features" in _forest_features(auto)
    assert "VAE latent" in _forest_features(segment(tiny_model, vol, two, vae_features=True))
    # The same columns as the ablation, so the same labels.
    off = segment(tiny_model, vol, two, vae_features=False)
    np.testing.assert_array_equal(auto.labels, off.labels)
    opts = SegmentOptions()
    assert opts.vae_features == "auto"
    assert not opts.uses_vae(2) and opts.uses_vae(3)
    assert SegmentOptions(finetune_steps=5).uses_vae(2)  # a trained head reads the VAE
    assert SegmentOptions(vae_features=True).uses_vae(2)
    assert not SegmentOptions(vae_features=False).uses_vae(7)
    with pytest.raises(ValueError, match="vae_features"):
        SegmentOptions(vae_features="sometimes")


def test_segment_without_a_model_uses_the_ilastik_features(small_phantom, annotations,
                                                           tmp_path, capsys):
    res = segment(None, small_phantom.image, annotations, modality="MR")
    assert any("no model" in n for n in res.notes)
    forest = next(h for h in res.history if h["stage"] == "forest")
    assert "no VAE" in forest["features"]
    painted = annotations > 0
    np.testing.assert_array_equal(res.labels[painted], annotations[painted])
    keep = np.ones(small_phantom.image.shape[0], dtype=bool)
    keep[[4, 8]] = False  # the slices the annotations paint
    a, b = res.labels[keep] == 6, small_phantom.labels[keep] == 6
    wm = 2 * (a & b).sum() / (a.sum() + b.sum())  # white matter, no fit at all
    assert wm > 0.5
    with pytest.raises(ValueError, match="fitted model"):
        segment(None, small_phantom.image, annotations, finetune_steps=2)
    img = save_volume(tmp_path / "img.nii.gz", small_phantom.image, spacing=(4.0, 4.0, 4.0))
    ann = save_volume(tmp_path / "ann.nii.gz", annotations, spacing=(4.0, 4.0, 4.0),
                      kind="labels")
    assert main(["segment", str(img), "-a", str(ann), "-o", str(tmp_path / "s.nii.gz"),
                 "-q"]) == 0
    captured = capsys.readouterr()
    assert "features: ilastik multiscale set only" in captured.out
    assert "no model" in captured.err
    assert main(["segment", str(img), "-a", str(ann), "-o", str(tmp_path / "s2.nii.gz"),
                 "--finetune-steps", "5", "-q"]) == 2
    assert "need a fitted model" in capsys.readouterr().err


@pytest.mark.parametrize("shape", [(2, 1, 2, 9), (3, 1, 17, 3), (1, 1, 40, 33)])
def test_multiscale_features_match_the_direct_formulas(shape):
    """The preallocated, concatenation-free feature code equals the textbook formulas
    (torch.gradient, sqrt of the squares) it replaced for speed."""
    import torch
    import torch.nn.functional as F

    from napari_latentseg.engine.features import (
        MULTISCALE_SIGMAS,
        _gradient,
        gaussian_blur,
        multiscale_features,
    )

    x = torch.from_numpy(np.random.default_rng(0).normal(size=shape).astype(np.float32))
    for dim in (2, 3):
        torch.testing.assert_close(_gradient(x, dim), torch.gradient(x, dim=dim)[0])
    ref = []
    h, w = shape[2:]
    for s in MULTISCALE_SIGMAS:
        f = int(max(1, min(s // 2, min(h, w) // 16)))
        xs = F.avg_pool2d(x, f, ceil_mode=True) if f > 1 else x
        sc = s / f
        g = gaussian_blur(xs, sc)
        gy, gx = torch.gradient(g, dim=(2, 3))
        gyy, gyx = torch.gradient(gy, dim=(2, 3))
        gxx = torch.gradient(gx, dim=3)[0]
        root = torch.sqrt((0.5 * (gyy - gxx)) ** 2 + gyx**2)
        lev = torch.cat([g, torch.sqrt(gy**2 + gx**2) * sc, (0.5 * (gyy + gxx) + root) * sc**2,
                         (0.5 * (gyy + gxx) - root) * sc**2], dim=1)
        if f > 1:
            lev = F.interpolate(lev, scale_factor=f, mode="bilinear",
                                align_corners=False)[..., :h, :w]
        ref.append(lev)
    torch.testing.assert_close(multiscale_features(x), torch.cat(ref, dim=1), atol=1e-5,
                               rtol=1e-5)


def test_gaussian_blur_blurs_each_channel_with_its_own_kernel():
    import torch

    from napari_latentseg.engine.features import gaussian_blur

    two = torch.rand(2, 3, 20, 24)
    torch.testing.assert_close(gaussian_blur(two, 2.0), torch.cat(
        [gaussian_blur(two[:, i : i + 1], 2.0) for i in range(3)], dim=1))


def test_class_prototypes_are_columns_of_multiclass_rounds_only(tiny_model, small_phantom,
                                                                  annotations, few_shot):
    from napari_latentseg.engine.segment.prototypes import Prototypes

    rng = np.random.default_rng(0)
    centres = np.array([[0.0, 0.0, 0.0], [4.0, 0.0, 1.0], [0.0, 5.0, -2.0]])
    y = np.repeat([0, 2], 50)  # class 1 painted nowhere
    x = (centres[y] + rng.normal(0, 0.5, (100, 3))).astype(np.float32)
    protos = Prototypes.fit(x, y)
    d = protos.distances(x)
    assert d.shape == (100, 3) and protos.extend(x).shape == (100, 6)
    np.testing.assert_array_equal(np.where(d[:, 0] < d[:, 2], 0, 2), y)  # nearest = own class
    assert d[:, 1].min() > 1e5  # an unpainted class is infinitely far, not NaN
    # The expanded product equals the plain root mean square of standardised differences.
    z = (x - protos.mean) / protos.scale
    direct = np.sqrt(((z[:, None] - protos.centres[[0, 2]]) ** 2).mean(-1))
    np.testing.assert_allclose(d[:, [0, 2]], direct, rtol=1e-4, atol=1e-4)
    # float16 cache rows: converted once, the same columns as from float32 rows.
    x16 = x.astype(np.float16)
    np.testing.assert_allclose(protos.extend(x16), protos.extend(x16.astype(np.float32)))
    # The ilastik columns only: a prototype of the first column ignores the others.
    first = Prototypes.fit(x, y, columns=1)
    np.testing.assert_allclose(first.distances(x), first.distances(x[:, :1] @ np.eye(1, 3)))

    def forest_features(res):
        return next(h for h in res.history if h["stage"] == "forest")["features"]

    assert len(few_shot.classes) >= 3 and "class prototypes" in forest_features(few_shot)
    off = segment(tiny_model, small_phantom.image, annotations, prototypes=False)
    assert "prototypes" not in forest_features(off)
    assert not np.allclose(off.probabilities, few_shot.probabilities)
    painted = annotations > 0
    np.testing.assert_array_equal(few_shot.labels[painted], annotations[painted])
    # Object vs background: the prior's round, no prototypes.
    two = np.where(annotations == 1, 1, np.where(annotations == 5, 2, 0)).astype(np.uint8)
    res = segment(tiny_model, small_phantom.image, two)
    assert "background prior" in forest_features(res)
    assert "prototypes" not in forest_features(res)


def test_cli_prints_why_the_next_slice_was_chosen(capsys):
    from napari_latentseg.cli.segment import _print_suggestion

    _print_suggestion({"axis": 0, "index": 7, "score": 0.2, "reason": "the object ends on a "
                       "slice you annotated: is it on the next one?",
                       "per_axis": [{"axis": 0, "index": 1, "score": 0.4}]})
    out = capsys.readouterr().out
    assert "annotate slice 7 along axis 0" in out and "the object ends" in out
    assert "axis 0: slice 1 (0.400)" in out


def test_features_read_at_some_voxels_equal_the_upsampled_maps():
    """sample_at reads a map at N voxels as F.interpolate upsamples it (any scale)."""
    import torch
    import torch.nn.functional as F

    from napari_latentseg.engine.features import sample_at

    torch.manual_seed(0)
    t = torch.randn(2, 3, 7, 9)
    for size in [(20, 23), (14, 18), (7, 9)]:
        full = F.interpolate(t, size=size, mode="bilinear", align_corners=False)
        mask = torch.rand((2,) + size) < 0.3
        at = mask.nonzero(as_tuple=True)
        torch.testing.assert_close(sample_at(t, size, at), full[at[0], :, at[1], at[2]])


def test_the_head_at_the_band_equals_the_head_everywhere(tiny_model, small_phantom):
    """A fine-tuning round's boundary band goes through the head voxel by voxel; its
    probabilities equal those of the whole slices at the same voxels."""
    import torch

    from napari_latentseg.engine.features import SegmentationHead
    from napari_latentseg.engine.segment.head import HeadProbabilities
    from napari_latentseg.engine.segment.runner import FeatureRunner

    torch.manual_seed(0)
    image = np.ascontiguousarray(small_phantom.image[:, :37, :39])  # padded for the encoder
    run = FeatureRunner(tiny_model, image, "MR")
    head = SegmentationHead(run.n_features, 3, 16, 2)
    head.mean.normal_()
    head.std.uniform_(0.5, 2.0)
    proba = HeadProbabilities(head, run, 3)
    zs = np.array([3, 4, 5])
    mask = np.random.default_rng(0).random((3,) + image.shape[1:]) < 0.2
    mask[1] = False  # a slice without band voxels
    at = proba.at(zs, mask)
    assert at.shape == (3, int(mask.sum()))
    np.testing.assert_allclose(at, proba(zs)[:, mask], atol=1e-5)
    assert proba.at(zs, np.zeros_like(mask)).shape == (3, 0)
    run.close()
