"""The segmentation head: a per-voxel MLP on hypercolumn features, and how a model keeps it.

A fine-tuned model holds its head in ``VAEModel.head`` as a plain dict, saved in the model file
as is (:func:`~napari_latentseg.models.checkpoint.save_model`)::

    {"classes": [1, 2, ...],        # the annotation ids, in output-channel order
     "n_features": 123,             # hypercolumn channels the head reads
     "hidden": 64,                  # hidden channels of the MLP
     "state_dict": {...},           # the module's tensors (CPU)
     "finetuned_encoder": True,     # the model's encoder was trained with a head, some round
     "rounds": 2,                   # segmentation rounds that trained this head
     "annotated_voxels": 1234}      # annotated voxels of the last round

Older files may lack any key but ``classes`` and ``state_dict``; readers use the defaults below.
This module imports torch: import it lazily from anything napari loads at start-up.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

__all__ = [
    "SegmentationHead",
    "pack_head",
    "unpack_head",
    "head_matches",
    "head_rounds",
    "encoder_finetuned",
    "split_head_for_file",
]

_DEFAULT_HIDDEN = 64


class SegmentationHead(nn.Module):
    """Per-voxel MLP (1x1 convolutions) on standardised hypercolumn features."""

    def __init__(self, n_features: int, n_classes: int, hidden: int = _DEFAULT_HIDDEN,
                 spatial_dims: int = 2) -> None:
        super().__init__()
        conv = nn.Conv2d if spatial_dims == 2 else nn.Conv3d
        self.register_buffer("mean", torch.zeros(n_features))
        self.register_buffer("std", torch.ones(n_features))
        self.net = nn.Sequential(
            conv(n_features, hidden, 1), nn.ReLU(inplace=True),
            conv(hidden, hidden, 1), nn.ReLU(inplace=True),
            conv(hidden, n_classes, 1),
        )
        self.spatial_dims = spatial_dims

    @property
    def n_features(self) -> int:
        """Hypercolumn channels the head reads."""
        return int(self.mean.numel())

    @property
    def hidden(self) -> int:
        """Hidden channels of the MLP."""
        return int(self.net[0].out_channels)

    def standardise(self, f: torch.Tensor) -> torch.Tensor:
        shape = (1, -1) + (1,) * (f.ndim - 2)
        return (f - self.mean.view(shape)) / self.std.view(shape)

    def forward(self, f: torch.Tensor) -> torch.Tensor:
        return self.net(self.standardise(f))

    def forward_flat(self, f: torch.Tensor) -> torch.Tensor:
        """(N, n_features) -> (N, n_classes) logits, for sampled voxels."""
        return self.layers_flat((f - self.mean) / self.std)

    def layers_flat(self, x: torch.Tensor, first: int = 0) -> torch.Tensor:
        """The MLP's layers from ``self.net[first]`` on (N, channels) rows."""
        for layer in self.net[first:]:
            if isinstance(layer, nn.Conv2d | nn.Conv3d):
                x = F.linear(x, layer.weight.flatten(1), layer.bias)
            else:
                x = layer(x)
        return x


def pack_head(head: SegmentationHead, classes: list[int], *, rounds: int,
              finetuned_encoder: bool, annotated_voxels: int) -> dict[str, Any]:
    """The dict a model keeps for ``head`` (see the module docstring), tensors copied to CPU."""
    return {
        "classes": [int(c) for c in classes],
        "n_features": head.n_features,
        "hidden": head.hidden,
        "state_dict": {k: v.detach().cpu().clone() for k, v in head.state_dict().items()},
        "finetuned_encoder": bool(finetuned_encoder),
        "rounds": int(rounds),
        "annotated_voxels": int(annotated_voxels),
    }


def head_matches(record: dict | None, classes: list[int], n_features: int) -> bool:
    """Whether a stored head predicts exactly ``classes`` from ``n_features`` channels."""
    return bool(record) and list(record.get("classes", [])) == list(classes) and \
        int(record.get("n_features", -1)) == int(n_features)


def unpack_head(record: dict, spatial_dims: int) -> SegmentationHead:
    """Rebuild the head module a model stores (on the CPU)."""
    head = SegmentationHead(int(record["n_features"]), len(record["classes"]),
                            int(record.get("hidden", _DEFAULT_HIDDEN)), spatial_dims)
    head.load_state_dict(record["state_dict"])
    return head


def head_rounds(record: dict | None) -> int:
    """Rounds that trained the stored head (0 without one)."""
    return int((record or {}).get("rounds", 0))


def encoder_finetuned(record: dict | None) -> bool:
    """Whether the model's encoder was fine-tuned with a head in some round."""
    return bool((record or {}).get("finetuned_encoder"))


def split_head_for_file(record: dict) -> tuple[dict, dict | None]:
    """(metadata, CPU copy of the state dict or None): the two parts a model file stores."""
    meta = dict(record)
    state = meta.pop("state_dict", None)
    if state is not None:
        state = {k: v.detach().to("cpu").clone() for k, v in state.items()}
    return meta, state
