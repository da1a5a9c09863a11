"""Features kept per (image, model) between segmentation rounds."""

from __future__ import annotations

import hashlib

import numpy as np

from ...models.checkpoint import VAEModel

__all__ = ["FeatureCache"]


def _fingerprint_array(a: np.ndarray) -> str:
    h = hashlib.blake2b(digest_size=16)
    h.update(str((a.shape, a.dtype.str)).encode())
    h.update(np.ascontiguousarray(a).view(np.uint8).reshape(-1).data)
    return h.hexdigest()


# Every cached kind is computed from the encoder side: a model whose decoder alone changed (the
# fit's decoder phase) keeps its features.
_ENCODER_SIDE = ("encoder.", "quant_conv_mu.", "quant_conv_log_sigma.")


def _fingerprint_model(model: VAEModel) -> str:
    h = hashlib.blake2b(digest_size=16)
    state = model.net.state_dict()
    side = {k: v for k, v in state.items() if k.startswith(_ENCODER_SIDE)} or state
    for k, v in side.items():
        h.update(k.encode())
        h.update(v.detach().cpu().numpy().tobytes())
    h.update(repr(sorted(model.normalization.items())).encode())
    return h.hexdigest()


class FeatureCache:
    """Hypercolumn features kept per (image, model) so the next round does not recompute them.

    Features are stored as float16 while their size stays under ``max_bytes``; larger volumes
    are recomputed tile by tile each time (bounded memory wins over speed).
    """

    def __init__(self, max_bytes: int = 2 << 30) -> None:
        self.max_bytes = max_bytes
        self._store: dict[tuple[str, str, str], np.ndarray] = {}
        self.hits = 0

    def key(self, model: VAEModel, volume: np.ndarray, kind: str = "hypercolumn"
            ) -> tuple[str, str, str]:
        return (_fingerprint_model(model), _fingerprint_array(volume), kind)

    def get(self, key) -> np.ndarray | None:
        out = self._store.get(key)
        if out is not None:
            self.hits += 1
        return out

    def put(self, key, feats: np.ndarray) -> None:
        # One entry per image and kind: a new model for the same image replaces old features.
        for k in [k for k in self._store if k[1:] == key[1:]]:
            del self._store[k]
        if feats.nbytes <= self.max_bytes:
            self._store[key] = feats

    def fits(self, n_features: int, shape: tuple[int, ...]) -> bool:
        return 2 * n_features * int(np.prod(shape)) <= self.max_bytes

    def clear(self) -> None:
        self._store.clear()
