"""Clusters computed per encoder level equal those computed from the full hypercolumn."""

from __future__ import annotations

import numpy as np
import pytest

from napari_latentseg.engine.segment import FeatureCache, cluster
from napari_latentseg.engine.segment.runner import FeatureRunner


@pytest.mark.parametrize("method", ["kmeans", "gmm"])
def test_clusters_without_the_hypercolumn_equal_those_from_it(tiny_model, small_phantom,
                                                              method):
    """Clustering projects each encoder level before upsampling; with the full hypercolumn
    in the cache it projects that instead. Both give the same clusters, and clustering
    leaves nothing of its own in the cache."""
    image = small_phantom.image
    empty = FeatureCache()
    projected = cluster(tiny_model, image, 4, method=method, seed=1, cache=empty)
    assert not projected.cache_hit and not empty._store

    cache = FeatureCache()
    run = FeatureRunner(tiny_model, image, "MR", None)
    full = np.concatenate([run.compute(zs).half().numpy() for zs in run.batches])
    assert full.shape[1] == run.n_features
    cache.put(cache.key(tiny_model, image), full)
    from_full = cluster(tiny_model, image, 4, method=method, seed=1, cache=cache)
    assert from_full.cache_hit
    # float16 features against float32: a voxel near a tie between two clusters may flip.
    assert np.mean(projected.labels == from_full.labels) > 0.99
    assert set(np.unique(projected.labels)) == set(range(1, 5))
