"""Segmentation in the VAE's feature space: clusters, few-shot, fine-tuning, what to annotate.

Annotations are a label volume on the image grid: 0 = not annotated, 1..N = classes (the
background is a class painted like any other). Output label ids are the annotation's ids, and
annotated voxels keep the user's label in the output.

- :func:`cluster_iter`: k-means or a Gaussian mixture on hypercolumn features -> labels ordered
  by mean intensity (ids stable across re-runs, so colours do not shuffle).
- :func:`segment_iter`: few-shot, a random forest on compact features (ilastik multiscale set,
  VAE latent, encoder principal components) of the annotated voxels, then the rule that a region
  must touch a stroke of its class; optionally a fine-tuning round, an MLP head trained together
  with the encoder on the annotated slices (loss on annotated voxels only) whose probabilities
  refine the forest's boundaries if held-out annotations say they help. Returns labels,
  per-class probabilities, an uncertainty (normalised entropy) map, a new model holding the
  head (fine-tuning), and the next slice to annotate.

Behaviour for unusual annotations: annotations of another shape raise ``ValueError``; no
annotated voxel or a single class raises ``ValueError`` (a classifier needs two classes); if the
annotations hold classes the model's head does not know (or lack some it knows), a new head is
trained for exactly the annotated classes (the encoder, fine-tuned or not, is kept) and the
result's ``notes`` say so.

Modules: ``options`` (:class:`SegmentOptions`), ``fewshot`` (:func:`segment_iter`, the round's
steps), ``forest``, ``trees`` and ``gpu_forest`` (the forest's trees, on the CPU or a GPU),
``head``, ``finetune``, ``holdout`` (is the head used?), ``cluster``, ``postprocess`` (labels,
:func:`keep_connected`, uncertainty), ``suggest``, ``annotations`` (checks, class table, the
sample of annotated voxels), ``runner`` (hypercolumn batches), ``cache``
(:class:`FeatureCache`), ``state`` (what the steps share, the result). The head's
file format is :mod:`napari_latentseg.models.head`.
"""

from __future__ import annotations

from .annotations import continues_round, validate_annotations
from .cache import FeatureCache
from .cluster import ClusterResult, cluster, cluster_iter
from .live import LiveSegmenter, SlicePrediction
from .objectlive import ObjectLiveSegmenter, live_segmenter
from .objectround import segment, segment_iter
from .options import SegmentOptions
from .postprocess import keep_connected
from .state import SegmentationResult
from .suggest import suggest_slices

__all__ = [
    "FeatureCache",
    "ClusterResult",
    "SegmentationResult",
    "SegmentOptions",
    "LiveSegmenter",
    "ObjectLiveSegmenter",
    "live_segmenter",
    "SlicePrediction",
    "cluster_iter",
    "cluster",
    "segment_iter",
    "segment",
    "suggest_slices",
    "validate_annotations",
    "continues_round",
    "keep_connected",
]
