"""Probe: what a self-mode anomaly map flags, by a lesion's contrast and size (session 60,
issue #14).

Five spheres go into a brain's cerebral white matter (``_lesions.white_matter``; for
``phantom1mm``, the white matter of ``phantom1mm-tissue``'s 1.2 mm head without its
lesions), each at ``k`` noise sigmas (the engine's estimate over the voxels more than 15 mm
inside the head) below (``--sign -1``) or above the white matter's 3 mm-smoothed median,
with the scan's noise; k = 3, 5, 7, 10, 14. One self-mode map of the scan (the engine's
default, fit seed 0); on thick slices the same fit is replayed with the cap across slices
off. Per sphere: its contrast as implanted (its mean minus that of a ring 1-4 voxels round
it in-plane, in noise sigmas), its peak score and the share of it flagged at the default
threshold.

One JSON line per map on stdout. Usage::

    LATENTSEG_NUM_THREADS=1 python benchmarks/_contrast_detail.py brain2 --sign -1 --radius 10
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
#: Contrasts of the five spheres, in noise sigmas from the white matter's median.
KS = (3, 5, 7, 10, 14)


def graded_spheres(v, region, centres, spacing, base, sigma, sign, radius, placement):
    """``v`` with one sphere of ``radius`` mm per contrast in :data:`KS` (``base`` + ``sign``
    k ``sigma``), centred in ``centres``, none touching another; (volume, one mask each)."""
    from _lesions import implant
    from scipy import ndimage

    out, masks = v, []
    taken = np.zeros(v.shape, bool)
    for i, k in enumerate(KS):
        near = ndimage.binary_dilation(taken, iterations=2)
        out, t = implant(out, region, spacing, base + sign * k * sigma, (radius,), sigma,
                         seed=1000 * placement + i, avoid=near, margin_mm=0.0,
                         centres=centres & ~taken)
        masks.append(t & ~taken)
        taken |= t
    return out, masks


def sphere_rows(volume, masks, score, flagged, sigma):
    """Per sphere: voxels, slices, contrast in noise sigmas against a ring 1-4 voxels round
    it in-plane (other spheres left out), peak ``score`` and the share of it ``flagged``."""
    from scipy import ndimage

    taken = np.any(masks, axis=0)
    rows = []
    for k, m in zip(KS, masks, strict=True):
        ring_d = ndimage.distance_transform_edt(~m, sampling=(1e6, 1, 1))  # in-plane only
        ring = (ring_d <= 4) & ~m & ~taken
        rows.append({"k": k, "voxels": int(m.sum()), "slices": int(m.any((1, 2)).sum()),
                     "contrast_sigma": round(float((volume[m].mean() - volume[ring].mean())
                                                   / sigma), 1),
                     "peak": round(float(score[m].max()), 2),
                     "flagged": round(float(flagged[m].mean()), 2)})
    return rows


def _scan(name: str):
    """(volume, head mask, white matter to hold the spheres, their centres, spacing) of
    ``name``."""
    from _anomaly_cases import THIN_SHAPE, THIN_SP, load
    from _lesions import white_matter
    from scipy import ndimage

    from napari_latentseg.data.phantom import make_phantom
    from napari_latentseg.engine.anomaly import head_mask

    if name == "phantom1mm":
        ph = make_phantom(THIN_SHAPE, THIN_SP, seed=0, n_lesions=0)
        v, wm = ph.image.astype(np.float32), ph.labels == 6
        return v, head_mask(v, "MR"), wm, ndimage.binary_erosion(wm), THIN_SP
    v, lab, sp = load(name, 2)  # $LATENTSEG_BENCH_DATA, else the shared pyradiomics folder
    head = head_mask(v, "MR")
    cerebrum, wm, _ = white_matter(v, head, lab, sp)
    return v, head, cerebrum, wm, sp


def run(name: str, sign: int, radius: float, placement: int) -> list[dict]:
    """The maps' rows for scan ``name``: on thick slices with the cap, then without."""
    from _lesions import noise_sigma
    from scipy import ndimage

    from napari_latentseg.engine import anomaly_dae as ad
    from napari_latentseg.engine import anomaly_guide as ag
    from napari_latentseg.engine.anomaly import anomaly_map

    v, head, region, centres, sp = _scan(name)
    thick = ag.thick_slices(sp)
    sigma = noise_sigma(v, ndimage.distance_transform_edt(head, sampling=sp) > 15.0)
    smooth = ndimage.gaussian_filter(v, (0 if thick else 3.0 / sp[0], 3.0 / sp[1],
                                         3.0 / sp[2]))
    base = float(np.median(smooth[centres]))
    vol, masks = graded_spheres(v, region, centres, sp, base, sigma, sign, radius, placement)
    saved, cap, held = ad.dae_raw_iter, ag.ACROSS_SLICES, {}

    def recording(*a, **k):
        held["raw"] = yield from saved(*a, **k)
        return held["raw"]

    def replay(*a, **k):
        yield {"stage": "anomaly: the same fit", "done": 0, "total": 1}
        return held["raw"]

    rows = []
    try:
        for on in (True, False) if thick else (True,):
            ad.dae_raw_iter, ag.ACROSS_SLICES = (recording if on else replay), on
            t = time.perf_counter()
            res = anomaly_map(None, vol, modality="MR", spacing=sp, error_map=False, seed=0)
            rows.append({"case": name, "sign": sign, "radius_mm": radius,
                         "placement": placement, "cap": on, "sigma": round(sigma, 2),
                         "seconds": round(time.perf_counter() - t, 1),
                         "spheres": sphere_rows(vol, masks, res.score, res.labels > 0, sigma)})
    finally:
        ad.dae_raw_iter, ag.ACROSS_SLICES = saved, cap
    return rows


def main(argv: list[str] | None = None) -> None:
    from napari_latentseg.runtime.device import configure_threads

    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("scan", choices=("brain1", "brain2", "phantom1mm"))
    ap.add_argument("--sign", type=int, choices=(-1, 1), default=-1,
                    help="-1: darker than the white matter, 1: brighter")
    ap.add_argument("--radius", type=float, default=10.0, help="the spheres' radius, mm")
    ap.add_argument("--placement", type=int, default=0, help="seed of the spheres' centres")
    a = ap.parse_args(argv)
    configure_threads()
    for row in run(a.scan, a.sign, a.radius, a.placement):
        print(json.dumps(row), flush=True)


if __name__ == "__main__":
    import sys

    sys.path.insert(0, str(HERE))
    main()
