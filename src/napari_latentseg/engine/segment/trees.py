"""A random forest grown and applied without scikit-learn's per-tree Python overhead.

A correction round fits one or two forests on a few thousand rows. There,
``RandomForestClassifier`` spends more time per tree on cloning estimators, validating
inputs and dispatching jobs than on growing the tree (about 1.2 ms of Python against
0.5 ms of Cython for 2000 rows; session 19). :class:`LeanForest` drives scikit-learn's own
Cython tree builder directly, with the same random draws, so its trees and probabilities are
bit-identical to ``RandomForestClassifier(n_estimators, max_depth, max_samples,
random_state=seed)`` (a test checks it). When the private API it uses is missing (another
scikit-learn), :func:`fit_lean_forest` returns None and the caller falls back to the public
class.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import numpy as np

__all__ = ["LeanForest", "fit_lean_forest"]

_MAX_INT = np.iinfo(np.int32).max
# Rows a thread predicts at a time when several threads share a prediction.
_THREAD_ROWS = 1 << 15
# Trees are grown in threads only when each draws at least this many rows: a stroke round's
# trees (300-500 rows, under a millisecond each) grew slower in two threads than in one
# (breast1: 0.034 against 0.024 s for 50 trees), 20 000 drawn rows twice as fast.
_THREAD_BOOTSTRAP = 1000


class LeanForest:
    """Scikit-learn ``Tree`` objects with the forest's ``classes_`` and ``predict_proba``.

    Parameters
    ----------
    classes : numpy.ndarray
        The sorted class values (``classes_``).
    trees : list
        ``sklearn.tree._tree.Tree`` objects, in the order the forest grew them.
    threads : int
        Threads for :meth:`predict_proba` on many rows.
    """

    def __init__(self, classes: np.ndarray, trees: list, threads: int = 1,
                 draws: tuple | None = None) -> None:
        self.classes_ = classes
        self.trees = trees
        self.threads = max(1, int(threads))
        self._draws = draws  # (tree seeds, rows, rows a tree draws, draw probabilities)

    @property
    def n_estimators(self) -> int:
        return len(self.trees)

    @property
    def estimators_samples_(self) -> list[np.ndarray]:
        """The rows each tree drew (with repeats), as scikit-learn's forest reports them."""
        seeds, n, n_boot, p = self._draws
        return [_bootstrap(s, n, n_boot, p) for s in seeds]

    def _proba(self, x: np.ndarray) -> np.ndarray:
        k = len(self.classes_)
        out = np.zeros((len(x), k), dtype=np.float64)
        for t in self.trees:  # summed in the forest's order, as scikit-learn does with 1 job
            out += t.predict(x).reshape(len(x), -1)[:, :k]
        out /= len(self.trees)
        return out

    def predict_proba(self, x: np.ndarray) -> np.ndarray:
        """(rows, n_classes) mean of the trees' leaf class fractions (float64)."""
        x = np.ascontiguousarray(x, dtype=np.float32)
        if self.threads == 1 or len(x) < 2 * _THREAD_ROWS:
            return self._proba(x)
        # Rows, not trees, across threads: each row's sum keeps the trees' order, so the
        # result does not depend on the number of threads (the Cython traversal drops the GIL).
        parts = [x[i : i + _THREAD_ROWS] for i in range(0, len(x), _THREAD_ROWS)]
        with ThreadPoolExecutor(self.threads) as pool:
            return np.concatenate(list(pool.map(self._proba, parts)))


def _bootstrap(tree_seed: int, n: int, n_boot: int, p: np.ndarray | None) -> np.ndarray:
    """The rows a tree draws, as scikit-learn's ``_generate_sample_indices`` draws them."""
    draw = np.random.RandomState(tree_seed)
    idx = draw.randint(0, n, n_boot) if p is None else draw.choice(n, n_boot, replace=True, p=p)
    return idx.astype(np.int32)


def _grow(tree_seed: int, x, y2, n_classes, max_features, max_depth, n_boot, p, builders):
    """One tree: its bootstrap draw (as sample counts) and its build, as scikit-learn's
    ``_parallel_build_trees`` and ``DecisionTreeClassifier._fit`` do them."""
    tree_cls, builder_cls, splitter_cls, criterion_cls = builders
    n = len(y2)
    counts = np.bincount(_bootstrap(tree_seed, n, n_boot, p), minlength=n).astype(np.float64)
    criterion = criterion_cls(1, n_classes)
    splitter = splitter_cls(criterion, max_features, 1, 0.0, np.random.RandomState(tree_seed),
                            None)
    tree = tree_cls(x.shape[1], n_classes, 1)
    # min_samples_split 2, min_samples_leaf 1, min_weight_leaf 0, no impurity threshold.
    builder_cls(splitter, 2, 1, 0.0, max_depth, 0.0).build(tree, x, y2, counts, None)
    return tree


def fit_lean_forest(x: np.ndarray, y: np.ndarray, seed: int, n_estimators: int,
                    max_depth: int | None, max_samples: int | float,
                    sample_weight: np.ndarray | None = None,
                    threads: int = 1) -> LeanForest | None:
    """The forest ``RandomForestClassifier(n_estimators=n_estimators, max_depth=max_depth,
    max_samples=max_samples, random_state=seed).fit(x, y, sample_weight)`` would grow
    (gini, square-root feature draws, bootstrap), or None when this scikit-learn lacks the
    private builder API or the rows hold non-finite values (the caller then uses the public
    class).
    """
    try:
        from sklearn.tree._criterion import Gini
        from sklearn.tree._splitter import BestSplitter
        from sklearn.tree._tree import DepthFirstTreeBuilder, Tree
    except ImportError:
        return None
    x = np.ascontiguousarray(x, dtype=np.float32)
    if x.ndim != 2 or len(x) != len(y) or not np.isfinite(x).all():
        return None
    classes, encoded = np.unique(np.asarray(y), return_inverse=True)
    y2 = np.ascontiguousarray(encoded.reshape(-1, 1), dtype=np.float64)
    n = len(y2)
    w = None if sample_weight is None else np.asarray(sample_weight, dtype=np.float64)
    if isinstance(max_samples, (int, np.integer)):
        n_boot = int(max_samples)
    else:
        n_boot = max(int(max_samples * (n if w is None else w.sum())), 1)
    p = None if w is None else w / np.sum(w)
    draws = np.random.RandomState(seed)
    seeds = [int(draws.randint(_MAX_INT)) for _ in range(n_estimators)]
    n_classes = np.array([len(classes)], dtype=np.intp)
    max_features = max(1, int(np.sqrt(x.shape[1])))
    depth = _MAX_INT if max_depth is None else int(max_depth)
    builders = (Tree, DepthFirstTreeBuilder, BestSplitter, Gini)

    def grow(s):
        return _grow(s, x, y2, n_classes, max_features, depth, n_boot, p, builders)

    try:
        if threads > 1 and n_estimators > 1 and n_boot >= _THREAD_BOOTSTRAP:
            # One task per thread, trees kept in their order.
            parts = [seeds[i::threads] for i in range(threads)]
            with ThreadPoolExecutor(threads) as pool:
                grown = list(pool.map(lambda part: [grow(s) for s in part], parts))
            trees = [None] * n_estimators
            for i, part in enumerate(grown):
                trees[i::threads] = part
        else:
            trees = [grow(s) for s in seeds]
    except TypeError:  # another scikit-learn's constructor signatures
        return None
    return LeanForest(classes, trees, threads, (seeds, n, n_boot, p))
