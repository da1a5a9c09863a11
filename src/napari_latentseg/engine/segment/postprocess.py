"""From per-class probabilities to labels: painted voxels, connected regions, uncertainty."""

from __future__ import annotations

import numpy as np

from ...runtime.parallel import map_slabs
from .annotations import ClassTable, label_dtype

__all__ = ["argmax_classes", "keep_connected", "boundary_band", "labels_from_probabilities",
           "normalised_entropy", "blend_momentum", "unanchored", "grown_box"]

CHUNK = 16  # slices per slab of whole-volume post-processing (each slab in a thread)


def labels_from_probabilities(probs: np.ndarray, annotations: np.ndarray, table: ClassTable,
                              connected: bool) -> tuple[np.ndarray, int]:
    """Labels of the most probable class; the user's label wins where they painted.

    Painted voxels' probabilities become one-hot in place (they are certain), then
    :func:`keep_connected` applies when ``connected``. Returns the labels (the class ids'
    type) and how many voxels that rule moved to another class.
    """
    labels = np.empty(probs.shape[1:], dtype=table.dtype)

    def slab(sl: slice) -> None:  # int64 argmax of a whole CT is 0.8 GB: slab by slab
        ann = annotations[sl]
        painted = ann > 0
        if painted.any():
            index = table.index(ann[painted])
            for ci in range(len(table)):
                probs[ci, sl][painted] = (index == ci).astype(np.float32)
        lab = table.ids[argmax_classes(probs[:, sl])]
        lab[painted] = ann[painted]
        labels[sl] = lab

    map_slabs(slab, len(labels), CHUNK)
    if not connected:
        return labels, 0
    return keep_connected(labels, probs, annotations, table.classes)


def blend_momentum(probs: np.ndarray, previous: np.ndarray, weight: float,
                   object_index: int | None = None, far: np.ndarray | None = None,
                   spare: np.ndarray | None = None,
                   floor: tuple[float, float] | None = None) -> None:
    """Average ``probs`` (classes first) in place with ``previous`` at ``weight``.

    With ``object_index``, only where that class's probability fell: the object grows at
    once and shrinks at the momentum's pace. ``far`` (bool, the volume's shape): there the
    object's growth is averaged too. ``spare`` (bool, the volume's shape): there the object
    shrinks at once (not averaged). ``floor`` (probability, weight): elsewhere, where the
    object's new probability is under that probability, averaged at that weight. Chunked
    along the second axis (slices).
    """
    def slab(z: slice) -> None:  # no whole-volume temporaries
        sl = (slice(None), z)
        if object_index is None:
            mix = np.float32(weight)
        else:
            # Each voxel's weight of the last round: ``weight`` where the object fell,
            # ``floor[1]`` where it grew to under ``floor[0]``, 0 where it takes this round's.
            fell = probs[object_index, z] < previous[object_index, z]
            if far is not None:
                fell |= far[z]
            if spare is not None:
                fell &= ~spare[z]
            mix = np.where(fell, np.float32(weight), np.float32(0.0))
            if floor is not None:
                low = (probs[object_index, z] < floor[0]) & ~fell
                if spare is not None:
                    low &= ~spare[z]
                mix[low] = floor[1]
        # p + m (q - p) in place: three passes over the slab where the old form took eight
        # (a continued round on lung2: the blend 0.45 -> 0.10 s on one thread, session 49).
        step = np.subtract(previous[sl], probs[sl], dtype=np.float32)
        step *= mix
        probs[sl] += step

    map_slabs(slab, probs.shape[1], CHUNK)


def argmax_classes(probs: np.ndarray) -> np.ndarray:
    """``probs.argmax(0)`` (the first class on ties) for a few classes, class by class:
    numpy's argmax over the leading axis is 1.4-3.4x slower (2-7 classes, a CT chunk)."""
    best = probs[0].copy()
    idx = np.zeros(probs.shape[1:], dtype=np.intp)
    for c in range(1, probs.shape[0]):
        better = probs[c] > best
        idx[better] = c
        np.maximum(best, probs[c], out=best)
    return idx


def normalised_entropy(probs: np.ndarray) -> np.ndarray:
    """Entropy of the class probabilities over log(n_classes): 0 certain, 1 uniform."""
    n_cls = probs.shape[0]
    out = np.empty(probs.shape[1:], dtype=np.float32)
    scale = np.float32(-1.0 / np.log(n_cls))

    def slab(z: slice) -> None:  # temporaries the size of a slab, not of probs
        p = np.clip(probs[:, z], 1e-7, 1.0)
        plogp = np.log(p)
        plogp *= p  # in place: lung2's map 0.16 -> 0.12 s on one thread (session 49)
        np.sum(plogp, axis=0, out=out[z])
        out[z] *= scale

    map_slabs(slab, out.shape[0], CHUNK)
    return out


# With three or more classes, a region the rule moves must connect to its new class's
# strokes too (session 25); False: one pass, the moved region kept wherever it lands (the
# benchmark's ablation, docs/interactive_benchmarks.md).
ITERATE_CONNECTED = True
# ... and only to a class of at least this probability there; with none, the voxel stays in
# its class (the air of a lung the air stroke misses is air, at 98 %, not body at 1 %).
MIN_MOVE_P = 0.05


def keep_connected(labels: np.ndarray, probabilities: np.ndarray, annotations: np.ndarray,
                   classes: list[int]) -> tuple[np.ndarray, int]:
    """Keep, for each class, only the regions connected to a voxel painted with that class.

    A predicted region (face-connected, in 3D) of class ``c`` that touches no voxel the user
    painted ``c`` goes to its next most probable class. This is the seeded-region prior of
    interactive tools: the object is the one the user painted. A lesion nobody painted is
    therefore dropped; switch the rule off (``keep_connected_regions=False``) to find every
    lesion.
    With three or more classes the moved region must connect to its new class's strokes
    too, or it moves on to the next class, and it moves only to a class of at least
    :data:`MIN_MOVE_P` probability there; a voxel left with no such class keeps its most
    probable class. In one pass, the air of a lung that the air stroke does not reach went
    to the tumour, the runner-up at 1 %, and the tumour came and went round by round.

    Returns
    -------
    labels : np.ndarray
        A new label volume.
    n_voxels : int
        How many voxels changed class.
    """
    table = np.asarray(classes)
    # A class id the labels' type cannot hold widens the output (ids are never wrapped).
    out = labels.astype(np.result_type(labels.dtype, label_dtype(int(table.max()))))
    if ITERATE_CONNECTED and 2 < len(classes) <= 32:
        return _keep_connected_iterated(labels, out, probabilities, annotations, table)
    changed = 0
    for ci, c in enumerate(classes):
        drop = unanchored(labels == c, annotations == c)
        if not drop.any():
            continue
        p = probabilities[:, drop]  # boolean indexing copies
        p[ci] = -1.0
        out[drop] = table[p.argmax(0)]
        changed += int(drop.sum())
    return out, changed


def _keep_connected_iterated(labels: np.ndarray, out: np.ndarray, probabilities: np.ndarray,
                             annotations: np.ndarray, table: np.ndarray
                             ) -> tuple[np.ndarray, int]:
    """:func:`keep_connected` where a moved region must connect to its new class's strokes
    too: the classes that received voxels are checked again until nothing moves. A voxel
    goes to its most probable class not yet ruled out there (and of at least
    :data:`MIN_MOVE_P`); one left with none keeps its most probable class. Writes ``out`` (a
    copy of ``labels``).

    Each class is labelled over the volume once; after that only the voxels not yet kept
    are, within their bounding box: a voxel a check kept stays connected to its strokes."""
    from scipy import ndimage as ndi

    bits = np.min_scalar_type((1 << len(table)) - 1)
    excluded = np.zeros(labels.shape, bits)  # bit ci: class ci was ruled out here
    order = np.argsort(table)  # ids may be large (uint32): no lookup table over them
    open_ = np.ones(labels.shape, bool)  # not (yet) kept by a check of their present class
    full = tuple(slice(None) for _ in labels.shape)
    seen: set[int] = set()
    # Classes that received voxels since their last check. Voxels leave a class only in its
    # own check, so a class that received none would repeat its last check to the voxel:
    # the same regions, the same stuck voxels, nothing moved (lung2, three classes: 4.7
    # million stuck voxels of the other lung checked once more for nothing).
    grew = set(range(len(table)))
    for _ in range(len(table) + 1):
        moved_any = False
        for ci, c in enumerate(table):
            box = full
            if ci not in grew:
                continue
            grew.discard(ci)
            if ci in seen:
                box = grown_box(open_ & (out == c))
                if box is None:
                    continue
            seen.add(ci)
            is_c = out[box] == c
            cand = open_[box] & is_c
            comp, n = ndi.label(is_c if box is full else cand)
            if n == 0:
                continue
            keep = np.zeros(n + 1, dtype=bool)
            keep[0] = True
            anchor = annotations[box] == c
            if box is not full:  # or touching a voxel a check of the class kept
                anchor = ndi.binary_dilation(anchor | (is_c & ~cand)) & cand
            keep[comp[anchor & (comp > 0)]] = True
            drop = ~keep[comp]
            still = open_[box]
            still[(comp > 0) & ~drop] = False
            if not drop.any():
                continue
            ex = excluded[box][drop] | bits.type(1 << ci)
            excluded[box][drop] = ex
            p = probabilities[(slice(None),) + box][:, drop]  # boolean indexing copies
            for k in range(len(table)):
                p[k][(ex >> bits.type(k)) & 1 > 0] = -1.0
            if MIN_MOVE_P > 0:
                p[p < MIN_MOVE_P] = -1.0
            # No class left: the voxel keeps its most probable one (and stays open, so a
            # region that reaches it later still connects through it).
            own = order[np.searchsorted(table[order], labels[box][drop])]
            best = np.where(p.max(0) < 0, own, p.argmax(0))
            target = out[box]
            moved = table[best] != target[drop]
            if moved.any():
                moved_any = True
                target[drop] = table[best]
                grew.update(np.unique(best[moved]).tolist())
        if not moved_any:
            break
    return out, int(np.count_nonzero(out != labels))


def unanchored(mask: np.ndarray, anchor: np.ndarray) -> np.ndarray:
    """Voxels of ``mask`` in face-connected regions holding no ``anchor`` voxel.

    Only a box is labelled (a whole CT took 0.34 s a class, session 39): the bounding box of
    ``mask``, which holds all its regions, or, when smaller, the bounding box of the rest
    grown by one voxel. Outside that box every voxel is ``mask`` and, unless the box spans
    two axes whole and splits the rest in two, one region, joined by the regions that touch
    the box's inner faces.
    """
    drop = np.zeros(mask.shape, dtype=bool)
    own = grown_box(mask)
    if own is None:
        return drop
    other = grown_box(~mask)
    if other is None:  # the class fills the volume: one region
        return drop if anchor.any() else mask.copy()
    faces = _inner_faces(other, mask.shape)
    if faces is None or _size(own) <= _size(other):
        comp, keep = _anchored(mask[own], anchor[own])
        drop[own] = ~keep[comp]
        return drop
    comp, keep = _anchored(mask[other], anchor[other])
    joined = np.unique(np.concatenate([comp[f].ravel() for f in faces]))
    joined = joined[joined > 0]
    rest_kept = (np.count_nonzero(anchor) > np.count_nonzero(anchor[other])
                 or bool(keep[joined].any()))
    keep[joined] = rest_kept
    if not rest_kept:
        drop[...] = True  # the region outside the box
    drop[other] = ~keep[comp]
    return drop


def _anchored(mask: np.ndarray, anchor: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(region numbers of ``mask``, lookup over them: True for region 0 and regions holding
    an ``anchor`` voxel)."""
    from scipy import ndimage as ndi

    comp, n = ndi.label(mask)
    keep = np.zeros(n + 1, dtype=bool)
    keep[0] = True  # not this class
    # A lookup table over region numbers (np.isin sorts the whole volume: ~1 s a CT).
    keep[comp[anchor & (comp > 0)]] = True
    return comp, keep


def _size(box: tuple[slice, ...]) -> int:
    return int(np.prod([s.stop - s.start for s in box]))


def _inner_faces(box: tuple[slice, ...], shape: tuple[int, ...]) -> list[tuple] | None:
    """Index tuples (within ``box``) of its faces that have volume beyond them, or None when
    the volume outside the box is not one face-connected piece (slabs on one axis only, on
    both sides)."""
    faces, axes = [], set()
    for ax, (s, n) in enumerate(zip(box, shape, strict=True)):
        for at, beyond in ((0, s.start > 0), (-1, s.stop < n)):
            if beyond:
                faces.append((slice(None),) * ax + (at,))
                axes.add(ax)
    if len(axes) == 1 and len(faces) == 2:
        return None
    return faces


def grown_box(mask: np.ndarray, margin: int = 1, axes: tuple[int, ...] | None = None
              ) -> tuple[slice, ...] | None:
    """The bounding box of ``mask`` grown by ``margin`` voxels (None when it is empty), along
    ``axes`` (all by default; the others whole)."""
    axes = tuple(range(mask.ndim)) if axes is None else axes
    box = []
    for ax in range(mask.ndim):
        if ax not in axes:
            box.append(slice(None))
            continue
        hit = np.flatnonzero(mask.any(axis=tuple(i for i in range(mask.ndim) if i != ax)))
        if not hit.size:
            return None
        box.append(slice(max(0, int(hit[0]) - margin),
                         min(mask.shape[ax], int(hit[-1]) + margin + 1)))
    return tuple(box)


def boundary_band(labels: np.ndarray, radius: int, through: int = 3) -> np.ndarray:
    """Voxels within ``radius`` voxels in-plane (and ``through // 2`` slices) of a change of
    label."""
    from scipy import ndimage as ndi

    size = (through,) * (labels.ndim - 2) + (2 * radius + 1,) * 2
    return ndi.maximum_filter(labels, size=size) != ndi.minimum_filter(labels, size=size)
