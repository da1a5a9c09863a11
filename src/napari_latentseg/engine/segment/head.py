"""The MLP head on the encoder's hypercolumn: training on annotated voxels, prediction."""

from __future__ import annotations

from collections.abc import Generator
from typing import TYPE_CHECKING

import numpy as np

from ...runtime.progress import check_stop
from .annotations import annotated_batches, sample_annotated
from .runner import FeatureRunner, to_rows
from .state import RoundState

if TYPE_CHECKING:  # torch is imported when a round runs, not with the package
    from ...models.head import SegmentationHead

__all__ = ["train_head", "HeadProbabilities"]


def _class_weights(y, n_classes: int):
    import torch

    counts = torch.bincount(y, minlength=n_classes).float()
    w = counts.sum() / (n_classes * counts.clamp(min=1))
    return w / w.mean()


def _initial_head(st: RoundState, n_features: int, x) -> SegmentationHead:
    """The model's head if it knows exactly the annotated classes, else a new one."""
    from ...models.head import SegmentationHead, head_matches, unpack_head

    classes = st.table.classes
    if head_matches(st.model.head, classes, n_features):
        return unpack_head(st.model.head, st.spatial_dims)
    if st.model.head:
        st.notes.append(
            f"the model's head knows classes {st.model.head.get('classes')}, the annotations "
            f"have {classes}: a new head was trained for {classes} (the encoder is kept)")
    head = SegmentationHead(n_features, len(classes), st.options.hidden, st.spatial_dims)
    head.mean.copy_(x.mean(0).cpu())
    head.std.copy_(x.std(0).cpu() + 1e-4)
    return head


def train_head(st: RoundState, run: FeatureRunner, annotations: np.ndarray, stop_event
               ) -> Generator[dict, None, SegmentationHead]:
    """The MLP head on frozen hypercolumn features of the annotated voxels.

    Continues from the model's head when it knows the annotated classes. Class-weighted
    cross-entropy on a balanced sample of ``annotations`` (which may leave held-out voxels
    out); yields progress, returns the head on the model's device.
    """
    import torch

    batches = annotated_batches(annotations, len(run.batches[0]), st.spatial_dims)
    x, ids = sample_annotated(annotations, lambda zs: to_rows(run.compute(zs), st.spatial_dims),
                              batches, st.options.max_per_class, st.rng, stop_event)
    dev = st.model.device
    x, y = x.to(dev), torch.from_numpy(st.table.index(ids)).to(dev)
    head = _initial_head(st, run.n_features, x).to(dev)
    weights = _class_weights(y, st.n_classes).to(dev)
    opt = torch.optim.Adam(head.parameters(), lr=3e-3, weight_decay=1e-4)
    batch = min(4096, len(y))
    steps = st.options.head_steps
    for step in range(1, steps + 1):
        check_stop(stop_event, "segmentation")
        idx = torch.randint(0, len(y), (batch,), device=dev)
        loss = torch.nn.functional.cross_entropy(head.forward_flat(x[idx]), y[idx], weight=weights)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if step % 50 == 0 or step == steps:
            st.history.append({"stage": "head", "step": step, "loss": float(loss.detach())})
            yield {"stage": "segment: head", "done": step, "total": steps,
                   "loss": float(loss.detach())}
    return head


class HeadProbabilities:
    """The head's class probabilities (n_classes, len(zs), *slice shape) of slice batches."""

    def __init__(self, head: SegmentationHead, run: FeatureRunner, n_classes: int) -> None:
        self.head = head.eval()
        self.run = run
        self.n_classes = n_classes

    def __call__(self, zs: np.ndarray) -> np.ndarray:
        torch = self.run.torch
        ph = torch.softmax(self.run.head_logits(zs, self.head), dim=1)
        shape = (self.n_classes, len(zs)) + self.run.volume.shape[1:]
        return ph.transpose(0, 1).cpu().numpy().reshape(shape)

    def at(self, zs: np.ndarray, mask: np.ndarray) -> np.ndarray:
        """The probabilities (n_classes, N) at the voxels of ``mask`` ((len(zs), *slice)),
        in C order: only those voxels go through the head (2D models)."""
        if self.run.cfg.spatial_dims != 2:
            return self(zs)[:, mask]
        torch = self.run.torch
        return torch.softmax(self.run.head_logits_at(zs, self.head, mask), dim=1).T.cpu().numpy()
