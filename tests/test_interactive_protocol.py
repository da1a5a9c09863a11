"""The interactive benchmark's simulated annotator and metrics (benchmarks/_interactive.py)."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
import _interactive as ia  # noqa: E402


@pytest.fixture
def truth() -> np.ndarray:
    """Background 1, a 7x20x20 box of class 2 and a 3x6x6 box of class 3."""
    t = np.ones((9, 40, 40), dtype=np.int64)
    t[1:8, 5:25, 5:25] = 2
    t[3:6, 30:36, 30:36] = 3
    return t


def test_first_strokes_one_disk_per_class_inside_it(truth):
    ann = ia.first_strokes(truth, [1, 2, 3])
    for c in (1, 2, 3):
        z = np.flatnonzero((ann == c).reshape(9, -1).any(1))
        assert z.size == 1  # one axial slice per class
        assert np.all(truth[ann == c] == c)  # painted only over its own class
    # Class 2 spans slices 1..7: its stroke is on slice 4, a full radius-4 disk (49 voxels).
    assert np.flatnonzero((ann == 2).reshape(9, -1).any(1))[0] == 4
    assert (ann == 2).sum() == 49
    # Unequal strokes: radius 1 is 5 voxels, a tenth of the other's.
    small = ia.first_strokes(truth, [1, 2], radii={1: 1})
    assert (small == 1).sum() == 5 and (small == 2).sum() == 49


def test_corrective_stroke_in_largest_error_component_with_true_label(truth):
    pred = truth.copy()
    pred[2:7, 8:22, 8:22] = 1  # a big hole in class 2: 5x14x14
    pred[3:6, 30:36, 30:36] = 1  # class 3 missed: 3x6x6 (smaller)
    corr = ia.corrective_stroke(pred, truth)
    assert corr is not None
    assert corr.component_voxels == 5 * 14 * 14
    assert corr.label == 2 == truth[corr.z, corr.y, corr.x]
    assert 2 <= corr.z < 7 and 8 <= corr.y < 22 and 8 <= corr.x < 22
    assert corr.z == 4  # most interior: the middle slice of the hole
    assert corr.stroke.sum() == 49 and np.all(truth[corr.stroke] == 2)
    assert np.all((pred != truth)[corr.stroke])  # the disk lies inside the error here
    assert ia.corrective_stroke(truth, truth) is None


def test_dice_noc_and_summary():
    t = np.array([1, 1, 2, 2])
    assert ia.dice(np.array([1, 1, 2, 2]), t, [2]) == 1.0
    assert ia.dice(np.array([1, 2, 2, 2]), t, [2]) == pytest.approx(0.8)
    assert ia.dice(np.ones(4, int), np.ones(4, int), [2]) == 1.0  # absent from both
    dices, strokes = [0.5, 0.82, 0.79, 0.91], [2, 3, 4, 5]
    assert ia.noc(dices, strokes, 0.8) == 3
    assert ia.noc(dices, strokes, 0.9) == 5
    assert ia.noc(dices, strokes, 0.95) is None
    s = ia.summarise(dices, strokes, [4.0, 1.0, 2.0, 3.0], 10.0)
    assert s["auc"] == pytest.approx(np.mean(dices), abs=1e-4)
    assert s["max_drop"] == pytest.approx(0.03) and s["drops_over_002"] == 1
    assert s["round_s"] == 2.0 and s["first_result_s"] == 10.0


def test_annotate_slice_and_crop(truth):
    ann = np.zeros_like(truth)
    ia.annotate_slice(ann, truth, 1, 10)
    assert np.array_equal(ann[:, 10], truth[:, 10]) and ann[:, 11].max() == 0
    box = ia.crop_box("brain1", truth, margin=3, zmargin=1)
    assert box == (slice(0, 9), slice(2, 28), slice(2, 28))



def test_object_class_is_the_rarest_class(truth):
    """The bench's objfirst-<method> sets SegmentOptions.object_class to it."""
    assert ia.object_class(truth) == 3
    t = truth.copy()
    t[0] = 0  # unlabelled voxels do not count, however many
    assert ia.object_class(t) == 3
