"""Unsupervised clusters of the voxels' hypercolumn features."""

from __future__ import annotations

import copy
import dataclasses
import threading
import time
from collections.abc import Callable, Generator
from dataclasses import dataclass

import numpy as np

from ...models.checkpoint import VAEModel
from ...runtime.progress import check_stop, drive
from .annotations import label_dtype
from .runner import FeatureRunner, to_rows

__all__ = ["CLUSTER_METHODS", "ClusterResult", "check_cluster_args", "cluster_iter", "cluster"]

CLUSTER_METHODS = ("kmeans", "gmm")


def check_cluster_args(k: int | None, method: str) -> None:
    """Raise ``ValueError`` unless ``2 <= k <= 64`` (None: not checked) and ``method`` is
    known (checked before a cohort starts as well as by :func:`cluster_iter`)."""
    if k is not None and not 2 <= int(k) <= 64:
        raise ValueError(f"k must be between 2 and 64, got {k}")
    if method not in CLUSTER_METHODS:
        raise ValueError(f"method must be 'kmeans' or 'gmm', got {method!r}")


@dataclass
class ClusterResult:
    """Unsupervised clusters: ``labels`` 1..k ordered by mean intensity."""

    labels: np.ndarray
    k: int
    method: str
    cluster_intensity: list[float]
    seconds: float


def cluster_iter(
    model: VAEModel,
    volume: np.ndarray,
    k: int = 4,
    *,
    method: str = "kmeans",
    modality: str | None = None,
    seed: int = 0,
    max_samples: int = 60_000,
    stop_event: threading.Event | None = None,
) -> Generator[dict, None, ClusterResult]:
    """Cluster the voxels' features into ``k`` groups; yields progress, returns the labels.

    Nothing is cached: the labelling pass projects each encoder level before upsampling,
    faster than reading a big scan's hypercolumn back (docs/benchmarks.md, session 63).
    """
    import torch
    from sklearn.cluster import KMeans
    from sklearn.decomposition import PCA
    from sklearn.mixture import GaussianMixture

    check_cluster_args(k, method)
    t0 = time.perf_counter()
    vol = np.asarray(volume)
    squeeze = vol.ndim == 2
    if squeeze:
        vol = vol[None]
    # The runner may change the net's memory layout: a private net leaves the caller's as is.
    model = dataclasses.replace(model, net=copy.deepcopy(model.net))
    run = FeatureRunner(model, vol, modality)
    rng = np.random.default_rng(seed)
    n_vox = vol.size
    take = min(1.0, max_samples / n_vox)
    # Sampling pass: a subset of slices is enough.
    batches = run.volume_batches
    if model.config.spatial_dims == 2 and len(batches) > 8:
        batches = [batches[i] for i in np.linspace(0, len(batches) - 1, 8).round().astype(int)]
        take = min(1.0, max_samples / sum(len(b) * np.prod(vol.shape[1:]) for b in batches))
    rows = []
    intensity_col = run.n_features - 5  # the normalised intensity channel
    for i, zs in enumerate(batches):
        check_stop(stop_event, "clustering")
        feats = run.compute(zs)
        per = feats[0, 0].numel()
        sel = torch.from_numpy(np.flatnonzero(rng.random(feats.shape[0] * per) < take))
        # The sampled voxels' rows only, in to_rows' order: no copy of the whole batch.
        rows.append(feats.flatten(2)[sel // per, :, sel % per].cpu().numpy())
        yield {"stage": "cluster: features", "done": i + 1, "total": len(batches)}
    x = np.concatenate(rows).astype(np.float32)
    mean, std = x.mean(0), x.std(0) + 1e-6
    xs = (x - mean) / std
    n_comp = min(16, xs.shape[1], len(xs))
    pca = PCA(n_components=n_comp, random_state=seed).fit(xs)
    z = pca.transform(xs)
    yield {"stage": "cluster: fitting", "done": 0, "total": 1}
    if method == "kmeans":
        km = KMeans(n_clusters=k, n_init=4, random_state=seed).fit(z)
        assign = km.labels_
    else:
        gm = GaussianMixture(k, covariance_type="diag", random_state=seed, reg_covar=1e-4).fit(z)
        assign = gm.predict(z)
    # Stable ids: order clusters by the mean normalised intensity of their members.
    inten = np.array([x[assign == c, intensity_col].mean() if np.any(assign == c) else np.inf
                      for c in range(k)])
    order = np.argsort(inten, kind="stable")
    remap = np.empty(k, dtype=np.int64)
    remap[order] = np.arange(1, k + 1)

    dev = model.device
    t_mean = torch.from_numpy(mean).to(dev)
    t_std = torch.from_numpy(std).to(dev)
    t_comp = torch.from_numpy(pca.components_.astype(np.float32)).to(dev)
    t_pmean = torch.from_numpy(pca.mean_.astype(np.float32)).to(dev)
    t_remap = torch.from_numpy(remap).to(dev)
    if method == "kmeans":
        t_cent = torch.from_numpy(km.cluster_centers_.astype(np.float32)).to(dev)
    else:
        t_mu = torch.from_numpy(gm.means_.astype(np.float32)).to(dev)
        t_var = torch.from_numpy(gm.covariances_.astype(np.float32)).to(dev)
        t_logw = torch.from_numpy(np.log(gm.weights_ + 1e-12).astype(np.float32)).to(dev)
        t_const = t_logw - 0.5 * ((t_mu * t_mu / t_var).sum(-1) + torch.log(t_var).sum(-1))
    labels = np.zeros(vol.shape, dtype=label_dtype(k))
    total = len(run.volume_batches)
    # The projection goes through each encoder level before upsampling, never through the
    # hypercolumn at voxel resolution (lung2, 57 channels: 40 s -> 14 s).
    t_bias = -(t_comp @ t_pmean)
    for i, zs in enumerate(run.volume_batches):
        check_stop(stop_event, "clustering")
        zf = to_rows(run.compute_linear(zs, t_mean, t_std, t_comp, t_bias),
                     model.config.spatial_dims)
        if method == "kmeans":
            lab = torch.cdist(zf, t_cent).argmin(1)
        else:
            # The diagonal Gaussians' log-likelihoods as matrix products: no (voxels, k, K)
            # tensor of differences.
            ll = (zf * zf) @ (-0.5 / t_var).T + zf @ (t_mu / t_var).T + t_const
            lab = ll.argmax(1)
        # 3D batches cover every slice, so one reshape serves 2D and 3D.
        labels[zs[0] : zs[-1] + 1] = t_remap[lab].cpu().numpy().reshape(
            (len(zs),) + vol.shape[1:])
        yield {"stage": "cluster: labelling", "done": i + 1, "total": total}
    if squeeze:
        labels = labels[0]
    return ClusterResult(labels, int(k), method, [float(v) for v in inten[order]],
                         time.perf_counter() - t0)


def cluster(model: VAEModel, volume: np.ndarray, k: int = 4, *,
            progress: Callable | None = None, **kwargs) -> ClusterResult:
    """Blocking version of :func:`cluster_iter`."""
    return drive(cluster_iter(model, volume, k, **kwargs), progress)
