"""A fitted random forest's prediction on a GPU.

A correction round on a CT spends most of its forest time walking 50 trees for hundreds of
thousands of voxels (session 38: 1.2 s of a 3.3 s lung2 round on the CPU, and the GPU machine's
rounds were no faster, since the trees ran on its CPU). Growing the trees stays on the CPU
(a few thousand rows, milliseconds); :class:`DeviceForest` copies the grown trees into flat
tensors and walks all of them at once for a chunk of rows, one tree level per step.

The result equals the CPU forest's: the same split rule (``x <= threshold`` with the float32
feature compared in float64, as scikit-learn's Cython does) and the same leaf values (the
trees' class fractions, averaged over the trees; summed in another order, so equal to about
1e-15).
"""

from __future__ import annotations

import numpy as np

__all__ = ["DeviceForest", "on_device", "GPU_FOREST"]

# True: rounds whose features live on a CUDA device predict there (False: the CPU trees, the
# benchmark's ablation).
GPU_FOREST = True
# (row, tree) pairs walked at a time: 4 int64 / float64 arrays of this size on the device.
_PAIRS = 1 << 24


def _trees_of(forest) -> list:
    """scikit-learn ``Tree`` objects of a :class:`~.trees.LeanForest` or a fitted
    scikit-learn forest."""
    trees = getattr(forest, "trees", None)
    if trees is not None:
        return list(trees)
    return [est.tree_ for est in forest.estimators_]


class DeviceForest:
    """The trees of a fitted forest as tensors on ``device``, with its ``classes_``,
    ``prototypes_`` and ``predict_proba``.

    Parameters
    ----------
    forest
        A :class:`~.trees.LeanForest` or a fitted scikit-learn random / extra-trees forest.
    device
        A torch device (CUDA in the product; the CPU in the tests).
    """

    def __init__(self, forest, device) -> None:
        import torch

        self.torch = torch
        self.device = torch.device(device)
        self.classes_ = forest.classes_
        self.prototypes_ = getattr(forest, "prototypes_", None)
        k = len(self.classes_)
        trees = _trees_of(forest)
        left, right, feature, threshold, value, roots = [], [], [], [], [], []
        start = 0
        for t in trees:
            n = t.node_count
            leaf = t.children_left[:n] < 0
            idx = np.arange(start, start + n)
            # A leaf points to itself both ways: walking on from it changes nothing.
            left.append(np.where(leaf, idx, t.children_left[:n] + start))
            right.append(np.where(leaf, idx, t.children_right[:n] + start))
            feature.append(np.where(leaf, 0, t.feature[:n]))
            threshold.append(t.threshold[:n])
            v = np.asarray(t.value[:n], dtype=np.float64).reshape(n, -1)[:, :k]
            total = v.sum(1, keepdims=True)
            # Fractions (scikit-learn >= 1.4 stores them; older ones store weighted counts).
            value.append(np.divide(v, total, out=np.zeros_like(v), where=total > 0))
            roots.append(start)
            start += n
        dev = self.device

        def tensor(parts, dtype):
            return torch.from_numpy(np.concatenate(parts).astype(dtype)).to(dev)

        self._left = tensor(left, np.int64)
        self._right = tensor(right, np.int64)
        self._feature = tensor(feature, np.int64)
        self._threshold = tensor(threshold, np.float64)
        self._value = tensor(value, np.float64)
        self._roots = torch.tensor(roots, dtype=torch.int64, device=dev)
        self._depth = max(int(t.max_depth) for t in trees)
        self.n_estimators = len(trees)

    def walk(self, x) -> object:
        """(rows, k) float64 mean leaf fractions of float32 rows ``x`` (a tensor on the
        device), ``_PAIRS`` (row, tree) pairs at a time."""
        torch = self.torch
        per = max(1, _PAIRS // self.n_estimators)
        parts = []
        for i in range(0, len(x), per):
            rows = x[i : i + per]
            node = self._roots.expand(len(rows), -1).contiguous()
            for _ in range(self._depth):
                v = torch.gather(rows, 1, self._feature[node]).double()
                node = torch.where(v <= self._threshold[node], self._left[node],
                                   self._right[node])
            parts.append(self._value[node].sum(1) / self.n_estimators)
        if not parts:
            return torch.zeros((0, len(self.classes_)), dtype=torch.float64, device=x.device)
        return parts[0] if len(parts) == 1 else torch.cat(parts)

    def predict_proba(self, x: np.ndarray) -> np.ndarray:
        """(rows, n_classes) mean of the trees' leaf class fractions (float64, numpy)."""
        torch = self.torch
        x = np.ascontiguousarray(x, dtype=np.float32)
        with torch.inference_mode():
            rows = torch.from_numpy(x).to(self.device)
            return self.walk(rows).cpu().numpy()


def on_device(forest, device) -> object:
    """``forest`` as a :class:`DeviceForest` on ``device`` when it is a CUDA device and
    :data:`GPU_FOREST` is on; else ``forest`` itself."""
    if not GPU_FOREST or device is None or getattr(device, "type", str(device)) != "cuda":
        return forest
    return DeviceForest(forest, device)
