"""Late corrections stay local: a round changes only the regions its corrections touch.

FocalClick's progressive merge (Chen et al. 2022): after the first rounds, a correction
should fix what it was painted on and leave the rest of the last result alone. Traced on the
interactive benchmark (session 53), the steps back of late rounds are changes the new stroke
never touched (lung2's object leaking 6-38 mm away from an object stroke) or the stroke's own
wrong growth; the early rounds' far changes are mostly right (the rest of a tumour found).
So the merge applies from ``SegmentOptions.local_from_round`` on. On thick slices the object
stroke's own wrong growth lay on the next slice, 6.5 mm away, where the tumour was smaller,
while a background stroke's change across slices took back a leak that spans them (session
54): there an object correction keeps only the changes connected to it within its own slice,
the slice the user painted (``SegmentOptions.local_in_plane``). Near-isotropic scans go
without the merge: on a synthetic head of 1.6 mm voxels, its lesions as the object, the
late rounds still improved every lesion's rim at once and the merge held that back
(session 54); on the same heads with thick slices it was level.
"""

from __future__ import annotations

import numpy as np

from ..anomaly_dae import thick_slices
from .state import RoundState

__all__ = ["applies", "corrections", "keep_near_corrections", "local_round", "local_slice",
           "merges", "round_after"]

# Face neighbours within a slice only (no neighbour across slices).
_IN_PLANE = np.zeros((3, 3, 3), bool)
_IN_PLANE[1, 1, :] = _IN_PLANE[1, :, 1] = True


def merges(spacing, shape) -> bool:
    """Whether late rounds on a grid of ``shape`` (z, y, x) and voxel size ``spacing`` (mm)
    keep their changes near the corrections: thick slices (more than twice the in-plane
    voxel), more than one of them."""
    return len(shape) == 3 and shape[0] > 1 and thick_slices(spacing)


def round_after(previous) -> int:
    """The number of the round that continues ``previous`` (1: a round afresh)."""
    return 1 if previous is None else int(getattr(previous, "round_no", 1)) + 1


def applies(options, round_no: int, spacing, shape) -> bool:
    """Whether round ``round_no`` of a series on this grid keeps its changes near the
    corrections: from ``options.local_from_round`` on, on thick slices (:func:`merges`).
    The caller checks the round is object-vs-background with the prior."""
    first = options.local_from_round
    return first is not None and round_no >= first and merges(spacing, shape)


def corrections(annotations: np.ndarray, last_labels: np.ndarray) -> np.ndarray:
    """Painted voxels the last round labelled otherwise: where the user corrected it."""
    return (annotations > 0) & (last_labels != annotations)


def keep_near_corrections(labels: np.ndarray, probs: np.ndarray, last_labels: np.ndarray,
                          last_probs: np.ndarray, annotations: np.ndarray,
                          in_plane_class: int | None = None,
                          ) -> tuple[np.ndarray, np.ndarray, int] | None:
    """This round's changes connected to a correction; the last round's result elsewhere.

    Parameters
    ----------
    labels, probs : np.ndarray
        This round's labels (z, y, x) and class probabilities (n_classes, z, y, x); held
        labels are set in place (the round's own array), the probabilities are new.
    last_labels, last_probs : np.ndarray
        The last round's, on the same grid and classes.
    annotations : np.ndarray
        This round's painted labels (0: not painted).
    in_plane_class : int or None
        Corrections to this label keep only the changes connected to them within their own
        slice; the others' changes are face-connected in 3D. None: all in 3D.

    Returns
    -------
    (labels, probs, held) or None
        The merged arrays (probabilities: the last round's outside the kept changes) and
        the number of changed voxels held at the last round's labels;
        None where nothing was corrected (no painted voxel the last round labelled
        otherwise: the round keeps all its changes) or nothing was held.
    """
    from scipy import ndimage

    changed = labels != last_labels
    found = ndimage.find_objects(changed.view(np.uint8))  # the changes' bounding box
    if not found:
        return None
    box = found[0]
    fixed = corrections(annotations[box], last_labels[box])
    if not fixed.any():
        return None
    flat = np.zeros(fixed.shape, bool)
    if in_plane_class is not None:
        flat = fixed & (annotations[box] == in_plane_class)
    # Face-connected components of the changes, within their box (a late round changes
    # little of a large scan).
    kept = np.zeros(fixed.shape, bool)
    for seeds, structure in ((fixed & ~flat, ndimage.generate_binary_structure(3, 1)),
                             (flat, _IN_PLANE)):
        if seeds.any():
            comp, n = ndimage.label(changed[box], structure=structure)
            keep = np.zeros(n + 1, bool)
            keep[comp[seeds]] = True
            kept |= keep[comp]
    kept &= changed[box]
    held = changed[box] & ~kept
    n_held = int(np.count_nonzero(held))
    if n_held == 0:
        return None
    labels[box][held] = last_labels[box][held]
    # The probabilities are the last round's wherever its labels stay, unchanged voxels
    # included (as measured): the next round's momentum and the uncertainty read them.
    out = np.array(last_probs, dtype=probs.dtype, copy=True)
    for c in range(len(probs)):
        out[c][box][kept] = probs[c][box][kept]
    return labels, out, n_held


def local_round(st: RoundState, labels: np.ndarray, probs: np.ndarray,
                last_labels: np.ndarray | None, previous, round_no: int,
                ) -> tuple[np.ndarray, np.ndarray]:
    """A round's labels and probabilities after :func:`keep_near_corrections`, where it
    applies: object-vs-background rounds with the prior from ``local_from_round`` on, on
    thick slices (:func:`merges`; the measured cases); else unchanged. With
    ``local_in_plane`` an object correction's changes connect within its slice. Notes how
    many changed voxels were held."""
    if (last_labels is None or st.prior_background is None or len(probs) != 2
            or not applies(st.options, round_no, st.spacing, labels.shape)):
        return labels, probs
    last_probs = np.asarray(previous.probabilities)
    if last_probs.size != probs.size:
        return labels, probs
    in_plane = bool(st.options.local_in_plane)
    obj = st.table.classes[1 - st.prior_background] if in_plane else None
    out = keep_near_corrections(labels, probs, last_labels, last_probs.reshape(probs.shape),
                                st.annotations, obj)
    if out is None:
        return labels, probs
    labels, probs, held = out
    where = " (an object correction reaches only its own slice)" if in_plane else ""
    st.notes.append(f"round {round_no} of this series: {held} changed voxels not connected "
                    f"to a correction kept the last round's labels{where}")
    return labels, probs


def local_slice(labels: np.ndarray, probs: np.ndarray, last_labels: np.ndarray,
                last_probs: np.ndarray, annotations: np.ndarray,
                ) -> tuple[np.ndarray, np.ndarray]:
    """A live slice (``(y, x)``, probabilities ``(n, y, x)``) under the rule, in a round that
    has corrections: the slice's changes connected within it to its own corrections; a
    slice without one keeps the last round's result (the full round may still keep a change
    there that connects to a correction through other slices: with ``local_in_plane``, a
    background correction's only)."""
    out = keep_near_corrections(labels[None], probs[:, None], last_labels[None],
                                last_probs[:, None], annotations[None])
    if out is not None:
        return out[0][0], out[1][:, 0]
    if corrections(annotations, last_labels).any():
        return labels, probs  # nothing to hold
    return last_labels.astype(labels.dtype), last_probs.astype(probs.dtype)  # copies
