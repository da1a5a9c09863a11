"""The lean forest grows scikit-learn's trees: the same probabilities, bit for bit."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.ensemble import RandomForestClassifier

from napari_latentseg.engine.segment.trees import LeanForest, fit_lean_forest


def _data(n: int, k: int, seed: int = 0):
    rng = np.random.default_rng(seed)
    y = rng.integers(0, k, n) * 3 + 2  # class values that are not indices
    x = rng.normal(size=(n, 12)).astype(np.float32)
    x[:, 0] += y  # one informative column, the rest noise: trees of some depth
    return x, y, rng


@pytest.mark.parametrize("k", [2, 7])
@pytest.mark.parametrize("weighted", [False, True])
@pytest.mark.parametrize("max_samples", [150, 0.2])
def test_lean_forest_matches_scikit_learn(k, weighted, max_samples):
    x, y, rng = _data(900, k)
    w = rng.uniform(0.05, 1.0, len(y)) if weighted else None
    ref = RandomForestClassifier(n_estimators=12, max_depth=6, max_samples=max_samples,
                                 n_jobs=1, random_state=3).fit(x, y, sample_weight=w)
    lean = fit_lean_forest(x, y, 3, 12, 6, max_samples, w)
    assert isinstance(lean, LeanForest)
    assert list(lean.classes_) == list(ref.classes_) and lean.n_estimators == 12
    test = rng.normal(size=(3000, 12)).astype(np.float32)
    test[:, 0] += rng.integers(0, k, len(test)) * 3 + 2
    np.testing.assert_array_equal(lean.predict_proba(test), ref.predict_proba(test))
    for mine, theirs in zip(lean.trees, ref.estimators_, strict=True):
        np.testing.assert_array_equal(mine.threshold, theirs.tree_.threshold)
    for mine, theirs in zip(lean.estimators_samples_, ref.estimators_samples_, strict=True):
        np.testing.assert_array_equal(mine, theirs)


def test_lean_forest_threads_give_the_same_result():
    x, y, rng = _data(600, 3)
    # 1200 draws a tree: enough for the trees to be grown in threads too.
    one = fit_lean_forest(x, y, 1, 8, 8, 1200, None, threads=1)
    two = fit_lean_forest(x, y, 1, 8, 8, 1200, None, threads=2)
    for a, b in zip(one.trees, two.trees, strict=True):
        np.testing.assert_array_equal(a.threshold, b.threshold)
    rows = rng.normal(size=(70_000, 12)).astype(np.float32)  # enough for row chunks
    np.testing.assert_array_equal(one.predict_proba(rows), two.predict_proba(rows))


def test_lean_forest_declines_non_finite_rows():
    x, y, _ = _data(100, 2)
    x[5, 3] = np.nan
    assert fit_lean_forest(x, y, 0, 4, 4, 50) is None
