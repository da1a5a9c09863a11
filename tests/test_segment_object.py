"""One object among three or more classes from a two-class round
(``SegmentOptions.object_class``, engine/segment/objectround.py)."""

from __future__ import annotations

import numpy as np
import pytest

from napari_latentseg.cli import main
from napari_latentseg.engine.segment import SegmentOptions, fewshot, segment
from napari_latentseg.io import save_volume


@pytest.fixture(scope="module")
def three(small_phantom):
    """The small phantom as the air (1), its white matter (2: the object, large enough that
    the two rounds disagree on hundreds of voxels) and the rest of the head (3), with one disk
    of radius 3 per class on the middle slice of the class."""
    t = small_phantom.labels
    truth = np.where(t == 1, 1, np.where(t == 6, 2, 3)).astype(np.int64)
    ann = np.zeros(truth.shape, np.uint8)
    for c in (1, 2, 3):
        z = int(np.median(np.flatnonzero((truth == c).any((1, 2)))))
        ys, xs = np.nonzero(truth[z] == c)
        i = len(ys) // 2
        yy, xx = np.mgrid[: truth.shape[1], : truth.shape[2]]
        disk = (yy - ys[i]) ** 2 + (xx - xs[i]) ** 2 <= 9
        ann[z][disk & (truth[z] == c)] = c
    return truth, ann


def _two(ann):
    return np.where(ann == 0, 0, np.where(ann == 2, 2, 1)).astype(np.uint8)


def test_the_object_is_the_two_class_rounds_and_the_rest_the_full_rounds(small_phantom, three):
    truth, ann = three
    img, sp = small_phantom.image, small_phantom.spacing
    res = segment(None, img, ann, SegmentOptions(object_class=2), spacing=sp)
    two = fewshot.segment(None, img, _two(ann), SegmentOptions(background=1), spacing=sp)
    full = fewshot.segment(None, img, ann, spacing=sp)
    assert res.classes == [1, 2, 3]
    np.testing.assert_array_equal(res.labels == 2, two.labels == 2)
    # Elsewhere the full round's labels, except what it gave the object beyond the two-class
    # round's object: that goes to the other classes.
    same = (full.labels != 2) & (two.labels != 2)
    np.testing.assert_array_equal(res.labels[same], full.labels[same])
    let_go = (full.labels == 2) & (two.labels != 2)
    assert let_go.sum() > 100 and (two.labels == 2).sum() > 100  # the rule is exercised
    assert not np.any(res.labels[let_go] == 2)
    # ... each to the full round's most probable class among the others there.
    others = full.probabilities[[0, 2]][:, let_go]
    np.testing.assert_array_equal(res.labels[let_go], np.array([1, 3])[others.argmax(0)])
    # Painted voxels keep their class; probabilities stay a distribution with the object's
    # from the two-class round.
    painted = ann > 0
    np.testing.assert_array_equal(res.labels[painted], ann[painted])
    np.testing.assert_allclose(res.probabilities.sum(0), 1.0, atol=1e-5)
    np.testing.assert_allclose(res.probabilities[1], two.probabilities[1], atol=1e-6)
    assert res.uncertainty.shape == img.shape
    assert res.object_parts is not None and res.object_parts[0].classes == [1, 2]
    assert any("two-class round" in n for n in res.notes)
    assert res.history[-1]["stage"] == "object"


def test_each_round_continues_its_own_last_round(small_phantom, three):
    truth, ann = three
    img, sp = small_phantom.image, small_phantom.spacing
    opts = SegmentOptions(object_class=2)
    first = segment(None, img, ann, opts, spacing=sp)
    more = ann.copy()
    z = int(np.flatnonzero((truth == 3).any((1, 2)))[2])
    more[z][truth[z] == 3] = 3  # a body correction on another slice
    second = segment(None, img, more, opts, spacing=sp, previous=first)
    r2, rm = first.object_parts
    two = fewshot.segment(None, img, _two(more), SegmentOptions(background=1), spacing=sp,
                          previous=r2)
    full = fewshot.segment(None, img, more, spacing=sp, previous=rm)
    np.testing.assert_array_equal(second.labels == 2, two.labels == 2)
    np.testing.assert_array_equal(second.object_parts[1].labels, full.labels)
    assert second.round_no == 2


def test_without_three_classes_or_the_object_it_is_the_plain_round(small_phantom, three):
    truth, ann = three
    img, sp = small_phantom.image, small_phantom.spacing
    plain = segment(None, img, ann, spacing=sp)
    other = segment(None, img, ann, SegmentOptions(object_class=5), spacing=sp)
    np.testing.assert_array_equal(other.labels, plain.labels)
    assert other.object_parts is None
    assert any("object class 5 is not painted" in n for n in other.notes)
    two = _two(ann)
    alone = segment(None, img, two, SegmentOptions(object_class=2), spacing=sp)
    np.testing.assert_array_equal(alone.labels, segment(None, img, two, spacing=sp).labels)


@pytest.mark.parametrize("bad", [0, -1, "tumour", True])
def test_a_bad_object_class_is_refused(bad):
    with pytest.raises(ValueError, match="object_class"):
        SegmentOptions(object_class=bad)


def test_cli_object_class(small_phantom, three, tmp_path, capsys):
    truth, ann = three
    img_path, ann_path = tmp_path / "img.nii.gz", tmp_path / "ann.nii.gz"
    save_volume(img_path, small_phantom.image, spacing=small_phantom.spacing)
    save_volume(ann_path, ann, spacing=small_phantom.spacing)
    out = tmp_path / "seg.nii.gz"
    assert main(["segment", str(img_path), "-a", str(ann_path), "-o", str(out),
                 "--object-class", "2"]) == 0
    err = capsys.readouterr().err
    assert "class 2 from a two-class round" in err
    with pytest.raises(SystemExit):
        main(["segment", str(img_path), "-a", str(ann_path), "-o", str(tmp_path / "x.nii.gz"),
              "--object-class", "0"])


def test_batch_object_class(small_phantom, three, tiny_model, tmp_path, capsys):
    """``latentseg batch --task segment --object-class``: the engine's option on each scan,
    part of the stamp (a run without it is redone), a bad id refused."""
    from napari_latentseg.engine.segment import segment
    from napari_latentseg.io import read_volume
    from napari_latentseg.models.checkpoint import save_model

    truth, ann = three
    scans, anns = tmp_path / "scans", tmp_path / "ann"
    scans.mkdir(), anns.mkdir()
    save_volume(scans / "p0.nii.gz", small_phantom.image, spacing=small_phantom.spacing)
    save_volume(anns / "p0.nii.gz", ann, spacing=small_phantom.spacing)
    model = save_model(tiny_model, tmp_path / "vae.pt")
    out = tmp_path / "out"
    base = ["batch", str(scans), "-a", str(anns), "-m", str(model), "--task", "segment",
            "-o", str(out), "--workers", "0", "-q"]
    assert main(base + ["--object-class", "2"]) == 0
    got = read_volume(out / "p0" / "labels.nii.gz").data
    want = segment(tiny_model, small_phantom.image, ann, SegmentOptions(object_class=2),
                   spacing=small_phantom.spacing)
    np.testing.assert_array_equal(got == 2, want.labels == 2)
    stamp = (out / "p0" / "done.json").stat().st_mtime_ns
    assert main(base + ["--object-class", "2"]) == 0  # finished: skipped
    assert (out / "p0" / "done.json").stat().st_mtime_ns == stamp
    assert main(base) == 0  # without the option: other outputs, redone
    assert (out / "p0" / "done.json").stat().st_mtime_ns != stamp
    capsys.readouterr()
    with pytest.raises(SystemExit):
        main(base + ["--object-class", "0"])
    assert "label id >= 1" in capsys.readouterr().err
    cluster = base[:base.index("--task")] + ["--task", "cluster"] + base[base.index("-o"):]
    assert main(cluster + ["--object-class", "2"]) == 2
    assert "--object-class is an option of --task segment" in capsys.readouterr().err
    from napari_latentseg.batch.worker import BatchOptions

    with pytest.raises(ValueError, match="object_class"):
        BatchOptions(task="segment", object_class=0)
