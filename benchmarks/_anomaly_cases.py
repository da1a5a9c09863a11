"""The cases of ``bench_anomaly.py``: the scans, the implanted lesions and the scored masks.

Split from the script (session 40) so each file stays short; ``bench_anomaly`` re-exports
every name here, which the probes (``_dae_grids.py``, ``_self_calibration.py``...) use.
"""

from __future__ import annotations

import numpy as np
from _gpu_helpers import default_data
from _lesions import implant, midline, noise_sigma, white_matter

# $LATENTSEG_BENCH_DATA, else the shared/data/pyradiomics found above the checkout.
DATA = default_data()


def _down(v: np.ndarray, f: int) -> np.ndarray:
    z, y, x = v.shape
    v = v[:, : y - y % f, : x - x % f].astype(np.float32)
    return v.reshape(z, y // f, f, x // f, f).mean((2, 4))


def load(name: str, f: int, z_window: int | None = None):
    from napari_latentseg.io import read_volume

    img = read_volume(DATA / f"{name}_image.nrrd")
    lab = read_volume(DATA / f"{name}_label.nrrd").data > 0
    v = img.data.astype(np.float32)
    if z_window:
        zs = np.nonzero(lab.any((1, 2)))[0]
        c = int(zs.mean())
        lo = max(0, min(v.shape[0] - z_window, c - z_window // 2))
        v, lab = v[lo : lo + z_window], lab[lo : lo + z_window]
    sp = (img.spacing[0], img.spacing[1] * f, img.spacing[2] * f)
    return _down(v, f), _down(lab.astype(np.float32), f) >= 0.5, sp


def lung_region(v: np.ndarray, lab: np.ndarray):
    """(body, lung away from the real tumour, noise sigma of soft tissue) of a CT in HU: where
    nodules are implanted, and the noise they are given."""
    from scipy import ndimage

    from napari_latentseg.engine.anomaly import head_mask

    body = head_mask(v, "CT")
    lung = body & (v < -500) & ~ndimage.binary_dilation(lab, iterations=4)
    return body, lung, noise_sigma(v, body & (v > -200) & (v < 200))


def build_cases(quick: bool):
    from napari_latentseg.data.phantom import make_phantom
    from napari_latentseg.engine.anomaly import head_mask

    cases, refs, wm_cases, mid_cases = [], {}, [], []  # apart: the others keep their seeds
    kinds_mr = ["tissue"] if quick else ["tissue", "dark", "bright"]
    for name in ("brain1", "brain2"):
        v, lab, sp = load(name, 2)
        refs[name] = v
        cases.append(dict(name=f"{name}-tumour", group="mr", v=v, truth=lab, sp=sp,
                          ref=name, fp=True, mod="MR"))
        head = head_mask(v, "MR")
        from scipy import ndimage

        # Brain parenchyma, roughly: > 15 mm inside the head (past scalp and skull).
        brain = ndimage.distance_transform_edt(head, sampling=sp) > 15.0
        lo, med, hi = np.percentile(v[brain], [5, 50, 95])
        sig = noise_sigma(v, brain)
        levels = {"tissue": med, "dark": med - 0.35 * (hi - lo), "bright": med + 0.35 * (hi - lo)}
        for kind in kinds_mr:
            level = levels[kind]
            # Implants stay out of the slices scored away (the real tumour's, +-1).
            tz = ndimage.binary_dilation(lab.any((1, 2)), iterations=1)
            tumour_z = np.broadcast_to(tz[:, None, None], v.shape)
            vv, tr = implant(v, brain, sp, level, (4, 8, 13), sig, seed=len(cases),
                             avoid=tumour_z, margin_mm=5.0)
            score_mask = ~lab.any((1, 2))  # leave the real tumour's slices out
            cases.append(dict(name=f"{name}-syn-{kind}", group="mr", v=vv, truth=tr, sp=sp,
                              ref=name, fp=False, mod="MR", zmask=score_mask, real=lab))
        # Session 26: the same kinds in the cerebrum's white matter, where the issue's
        # lesions are (the implants above sit in brain1's skull base).
        cerebrum, wm, keep = white_matter(v, head, lab, sp)
        for kind in kinds_mr:
            vv, tr = implant(v, cerebrum, sp, levels[kind], (4, 8, 13), sig,
                             seed=100 + len(wm_cases), margin_mm=0.0, centres=wm)
            wm_cases.append(dict(name=f"{name}-wm-{kind}", group="mr", v=vv, truth=tr, sp=sp,
                              ref=name, fp=False, mod="MR", keep=keep, real=lab))
        # Session 27: dark and bright spheres centred on the midline (within 3 mm of the fitted
        # plane), which the lowering of findings on both sides must not hide.
        mid = midline(v, head, sp)
        for kind in kinds_mr[1:]:
            vv, tr = implant(v, cerebrum, sp, levels[kind], (4, 8, 13), sig,
                             seed=200 + len(mid_cases), margin_mm=0.0, centres=mid)
            mid_cases.append(dict(name=f"{name}-mid-{kind}", group="mr", v=vv, truth=tr,
                                  sp=sp, ref=name, fp=False, mod="MR", keep=keep, real=lab))
    n_mr = len(cases)
    f = 4  # 128 x 128 in-plane (the CT VAE was fitted on in-plane / 2 crops)
    kinds_ct = ["solid"] if quick else ["solid", "ggo", "calcified"]
    for name in ("lung1", "lung2"):
        v, lab, sp = load(name, f, z_window=24)
        refs[name] = v
        _, lung, sig = lung_region(v, lab)
        for kind in kinds_ct if name == "lung1" else kinds_ct[:1]:
            level = {"solid": 40.0, "ggo": -450.0, "calcified": 400.0}[kind]
            vv, tr = implant(v, lung, sp, level, (3, 6, 10), sig, seed=len(cases))
            cases.append(dict(name=f"{name}-nodule-{kind}", group="ct", v=vv, truth=tr | lab,
                              sp=sp, ref=name, fp=kind == "solid" and name == "lung1",
                              mod="CT"))
    shape = (20, 64, 64) if quick else (40, 128, 128)
    sp_ph = (4.0, 1.6 * 128 / shape[1], 1.6 * 128 / shape[2])
    ph = make_phantom(shape, sp_ph, seed=0)
    cases.append(dict(name="phantom", group="mr", v=ph.image.astype(np.float32),
                      truth=ph.labels == 7, sp=ph.spacing, ref="phantom", fp=False, mod="MR"))
    refs["phantom"] = [make_phantom(shape, sp_ph, seed=s).image.astype(np.float32)
                       for s in (1, 2)]
    if not quick:  # session 40: the tissue-intensity case, on a synthetic thin-slice head
        c, refs["phantom1mm"] = thin_phantom_case()
        cases.append(c)
    return cases[:n_mr] + wm_cases + mid_cases + cases[n_mr:], refs


THIN_SHAPE, THIN_SP = (112, 192, 160), (1.2, 1.2, 1.2)
THIN_RADII = (3, 3.5, 4, 4.5, 5, 5.5, 6, 7)  # mm: the eight lesions of 3-7 mm


def thin_phantom_case(seed: int = 0):
    """(case, normative cohort) of ``phantom1mm-tissue``: the issue's held-out case rebuilt
    on the phantom at 1.2 mm (no lesions of its own), eight white-matter spheres of
    grey-matter intensity (the median of the phantom's grey matter, one voxel in from its
    edges) with the scan's noise. brain1 and brain2 cannot host it (grey and white matter
    do not separate by intensity there: docs/anomaly_benchmarks.md, session 17). The cohort:
    two healthy phantoms of the same size, other seeds."""
    from scipy import ndimage

    from napari_latentseg.data.phantom import make_phantom

    ph = make_phantom(THIN_SHAPE, THIN_SP, seed=seed, n_lesions=0)
    v = ph.image.astype(np.float32)
    wm = ph.labels == 6
    level = float(np.median(v[ndimage.binary_erosion(ph.labels == 5, iterations=1)]))
    vv, tr = implant(v, wm, THIN_SP, level, THIN_RADII, noise_sigma(v, wm), seed=100 + seed)
    cohort = [make_phantom(THIN_SHAPE, THIN_SP, seed=s, n_lesions=0).image.astype(np.float32)
              for s in (11, 12)]
    return dict(name="phantom1mm-tissue", group="mr", v=vv, truth=tr, sp=THIN_SP,
                ref="phantom1mm", fp=False, mod="MR"), cohort


def case_masks(c: dict):
    """(head mask, scored voxels, lesion-free slices' head) of a case from build_cases: the
    real tumour's slices are not scored in the synthetic brain cases, and false positives are
    counted at least 3 slices away from every lesion."""
    from scipy import ndimage

    from napari_latentseg.engine.anomaly import head_mask

    v, truth = c["v"], c["truth"]
    mask = head_mask(v, c["mod"])
    smask = mask & c["zmask"][:, None, None] if "zmask" in c else mask
    if "keep" in c:
        smask = smask & c["keep"]
    lesion_z = np.nonzero(ndimage.binary_dilation(truth.any((1, 2)), iterations=3))[0]
    far = np.ones(v.shape[0], bool)
    far[lesion_z] = False
    return mask, smask, mask & far[:, None, None]


def away_from_lesions(c: dict, mask: np.ndarray, mm: float = 20.0) -> np.ndarray:
    """The head more than ``mm`` from every lesion, the scan's real tumour included (session
    37: brain2's flags in the eyes and nose lay in its tumour's slices, which the lesion-free
    slices of :func:`case_masks` leave out)."""
    from scipy import ndimage

    les = c["truth"] | c["real"] if "real" in c else c["truth"]
    if not les.any():
        return mask
    return mask & (ndimage.distance_transform_edt(~les, sampling=c["sp"]) > mm)


OTHER = {"brain1": "brain2", "brain2": "brain1", "lung1": "lung2", "lung2": "lung1"}
