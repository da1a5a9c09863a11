"""Per-voxel features and density models behind :mod:`~napari_latentseg.engine.anomaly`.

Features: the VAE encoder's hypercolumn (every encoder level and the latent mean, upsampled to
voxel resolution) projected on its principal components, plus the normalised intensity
Gaussian-smoothed at 1, 2 and 4 voxels and its gradient magnitude; or, for the ``contrast``
score, the intensity with its means and centre-surround contrasts at 2, 4 and 8 mm and an
in-plane blob filter at 4 mm. Normal
anatomy (tissue, tissue boundaries, the skull rim) is frequent in that space; a lesion is a rare
combination of intensity and context, so its density is low even when its intensity is
tissue-like.

Density models are stored as plain lists (model files hold plain types only) and evaluated in
numpy, so a stored normative model needs neither scikit-learn nor pickles to be applied.
"""

from __future__ import annotations

import threading
from collections.abc import Generator, Iterator, Sequence

import numpy as np

from ..models.checkpoint import VAEModel
from ..runtime.progress import check_stop

__all__ = ["FeatureSpace", "fit_feature_space", "feature_maps_iter", "contrast_features",
           "iter_contrast_features", "fit_gmm", "gmm_nll", "fit_knn", "knn_distance",
           "density_sample", "fit_density", "ssim_map"]

_SLICE_VOXELS = 1 << 19  # voxels per encoder batch (~8 slices of 256^2)


class FeatureSpace(dict):
    """PCA of the hypercolumn: ``mean``, ``std``, ``comp`` (lists), ``n_pca`` (int)."""


def _arrays(space: dict):
    import torch

    return tuple(torch.as_tensor(np.asarray(space[k], dtype=np.float32))
                 for k in ("mean", "std", "comp"))


def _batches(vol: np.ndarray, spatial_dims: int, depth: int):
    """(read0, read1, write0, write1) ranges along axis 0 (slabs with margins for 3D)."""
    n = vol.shape[0]
    if spatial_dims == 2:
        per = max(1, _SLICE_VOXELS // int(np.prod(vol.shape[1:])))
        return [(i, min(n, i + per), i, min(n, i + per)) for i in range(0, n, per)]
    margin = depth // 4
    return [(max(0, w0 - margin), min(n, w0 + depth + margin), w0, min(n, w0 + depth))
            for w0 in range(0, n, depth)]


def _encoder_blocks(model: VAEModel, xnorm: np.ndarray, fn, stop_event, what: str):
    """Run ``fn(hypercolumn, x)`` over blocks of the normalised volume; yields (sl, out)."""
    import torch

    from .features import Hypercolumn
    from .infer import _context_block, pad_to_multiple

    cfg = model.config
    hyper = Hypercolumn(model.net, cfg.context_slices, intensity=False).to(model.device).eval()
    for r0, r1, w0, w1 in _batches(xnorm, cfg.spatial_dims, max(8, cfg.patch_size[0])):
        check_stop(stop_event, what)
        if cfg.spatial_dims == 2:
            block = _context_block(lambda a: a, xnorm, np.arange(r0, r1), cfg.context_slices)
        else:
            block = xnorm[None, None, r0:r1]
        x = torch.from_numpy(np.ascontiguousarray(block, dtype=np.float32)).to(model.device)
        x, spatial = pad_to_multiple(x, cfg.downsampling)
        with torch.inference_mode():
            out = fn(hyper, x)
        out = out[(slice(None), slice(None)) + tuple(slice(0, s) for s in spatial)]
        out = out.float().cpu().numpy()
        if cfg.spatial_dims == 2:
            out = out.transpose(1, 0, 2, 3)  # (C, z, y, x)
        else:
            out = out[0][:, w0 - r0 : w0 - r0 + (w1 - w0)]
        yield slice(w0, w1), out


def fit_feature_space(model: VAEModel, volumes: list[tuple[np.ndarray, np.ndarray]],
                      n_pca: int = 8, max_samples: int = 20000, seed: int = 0,
                      stop_event: threading.Event | None = None) -> FeatureSpace:
    """PCA of the standardised hypercolumn on foreground voxels of normalised volumes.

    Parameters
    ----------
    volumes : list of (normalised volume, foreground mask)
    n_pca : int
        Principal components kept.
    """
    rng = np.random.default_rng(seed)
    samples = []
    per_vol = max(1, max_samples // len(volumes))
    for xnorm, mask in volumes:
        # A handful of slices (2D) is enough for a PCA; 3D models need the whole slab context.
        zs = np.nonzero(mask.any(axis=tuple(range(1, mask.ndim))))[0]
        if mask.ndim == 3 and model.config.spatial_dims == 2 and len(zs) > 8:
            zs = zs[np.linspace(0, len(zs) - 1, 8).round().astype(int)]
        sub, msub = (xnorm[zs], mask[zs]) if model.config.spatial_dims == 2 else (xnorm, mask)
        if model.config.context_slices:  # neighbours must be the real ones
            sub, msub = xnorm, mask
        for sl, f in _encoder_blocks(model, sub, lambda h, x: h(x), stop_event, "feature PCA"):
            m = msub[sl]
            if not m.any():
                continue
            vals = f[:, m].T
            k = min(len(vals), per_vol)
            samples.append(vals[rng.choice(len(vals), k, replace=False)])
    data = np.concatenate(samples).astype(np.float64)
    mean = data.mean(0)
    std = data.std(0) + 1e-6
    z = (data - mean) / std
    _, _, vt = np.linalg.svd(z - z.mean(0), full_matrices=False)
    comp = vt[: min(n_pca, vt.shape[0])].T
    return FeatureSpace(mean=mean.tolist(), std=std.tolist(), comp=comp.tolist(),
                        n_pca=int(comp.shape[1]))


def _intensity_features(xnorm: np.ndarray, spatial_dims: int) -> list[np.ndarray]:
    """Intensity smoothed at 1, 2, 4 voxels (in-plane for 2D models) and gradient magnitude."""
    from scipy import ndimage

    out = []
    for s in (1.0, 2.0, 4.0):
        sig = (0.0, s, s) if spatial_dims == 2 else (s,) * 3
        out.append(ndimage.gaussian_filter(xnorm, sig[-xnorm.ndim:]))
    axes = (1, 2) if spatial_dims == 2 else (0, 1, 2)
    g = np.sqrt(sum(np.gradient(out[0], axis=a) ** 2 for a in axes))
    return [xnorm] + out + [g.astype(np.float32)]


CONTRAST_SCALES_MM = (2.0, 4.0, 8.0)  # centre sizes: small nodules to lesions of ~2 cm
CONTRAST_Z_MAX = 1.0  # through-plane sigma cap (slices)
CONTRAST_SURROUND = 2.0  # surround / centre width (session 17: 2.0 and 2.5 level)
# In-plane Hessian blob columns (session 20: at 4 mm, nodules' best Dice 0.34 -> 0.45 on the
# mean of twelve held-out implants; docs/anomaly_benchmarks.md, "A blob column on CT").
CONTRAST_BLOB_MM: tuple[float, ...] = (4.0,)


def n_contrast_columns(blob_mm: Sequence[float] = CONTRAST_BLOB_MM) -> int:
    """Columns of :func:`contrast_features` with ``blob_mm`` blob scales."""
    return 2 * len(CONTRAST_SCALES_MM) + 1 + len(blob_mm)


def _blob(xnorm: np.ndarray, sig: np.ndarray, sp: np.ndarray) -> np.ndarray:
    """Signed in-plane blob strength at Gaussian width ``sig`` (voxels): where both Hessian
    eigenvalues have one sign, ``small**2 / big`` (Li et al. 2003's dot filter), scaled by the
    width squared (dimensionless); positive on bright blobs, negative on dark ones, 0 on edges
    and ridges. float32 throughout, in place: four volumes at the peak."""
    from scipy import ndimage

    ay, ax = xnorm.ndim - 2, xnorm.ndim - 1

    def d2(a0: int, a1: int) -> np.ndarray:
        order = [0] * xnorm.ndim
        order[a0] += 1
        order[a1] += 1
        out = ndimage.gaussian_filter(xnorm.astype(np.float32, copy=False), sig, order=order)
        out *= np.float32(1.0 / (sp[a0] * sp[a1]))
        return out

    a, b = d2(ay, ay), d2(ax, ax)
    t = a + b
    t *= 0.5  # half the trace
    a -= b
    a *= 0.5
    np.hypot(a, d2(ay, ax), out=a)  # the eigenvalues are t +- a
    np.add(t, a, out=b)  # l1 >= l2
    t -= a
    same = (b > 0) == (t > 0)
    bright = b < 0  # both negative: a bright blob
    np.abs(b, out=b)
    np.abs(t, out=t)
    np.maximum(b, t, out=a)  # |big|
    np.minimum(b, t, out=b)  # |small|
    b *= b
    np.maximum(a, np.float32(1e-12), out=a)
    b /= a
    b[~same] = 0.0
    np.negative(b, out=b, where=~bright)
    b *= np.float32((sig[-1] * sp[-1]) ** 2)
    return b


def iter_contrast_features(xnorm: np.ndarray, spacing: Sequence[float] | None = None,
                           blob_mm: Sequence[float] = CONTRAST_BLOB_MM
                           ) -> Iterator[tuple[int, np.ndarray]]:
    """``(column, map)`` of :func:`contrast_features`, one map at a time (a caller that keeps
    only the masked voxels never holds all the volumes)."""
    from scipy import ndimage

    from .anomaly_masks import voxel_size

    sp = voxel_size(xnorm.ndim, spacing)

    def sigma(mm: float) -> np.ndarray:
        """Gaussian widths (voxels) of a scale in mm, through-plane capped."""
        sig = mm / sp
        if xnorm.ndim == 3:
            sig[0] = min(sig[0], CONTRAST_Z_MAX)
        return sig

    yield 0, xnorm
    n = len(CONTRAST_SCALES_MM)
    for k, s in enumerate(CONTRAST_SCALES_MM):
        sig = sigma(s)
        a = ndimage.gaussian_filter(xnorm, sig)
        yield 1 + k, a
        yield 1 + n + k, a - ndimage.gaussian_filter(xnorm, sig * CONTRAST_SURROUND)
    for k, s in enumerate(blob_mm):
        yield 1 + 2 * n + k, _blob(xnorm, sigma(s), sp)


def contrast_features(xnorm: np.ndarray, spacing: Sequence[float] | None = None,
                      blob_mm: Sequence[float] = CONTRAST_BLOB_MM) -> list[np.ndarray]:
    """Intensity, and at each of :data:`CONTRAST_SCALES_MM` its Gaussian mean and its
    centre-surround contrast (difference of Gaussians, surround twice as wide), then a signed
    in-plane blob strength at each of ``blob_mm`` (:func:`_blob`).

    Scales are in mm, so a normative density applies to a scan of another voxel size. Through
    thick slices the centre spans at most one slice: a small lesion shows on one or two.
    """
    out: list = [None] * n_contrast_columns(blob_mm)
    for col, f in iter_contrast_features(xnorm, spacing, blob_mm):
        out[col] = f
    return out


def feature_maps_iter(model: VAEModel | None, xnorm: np.ndarray, space: dict | None,
                      *, stop_event: threading.Event | None = None
                      ) -> Generator[dict, None, np.ndarray]:
    """(C, z, y, x) float32 features of a normalised volume: projected hypercolumn + intensity.

    With ``model`` None only the five intensity features are computed (the ablation without
    the VAE).
    """
    spatial_dims = model.config.spatial_dims if model is not None else 2
    chans = _intensity_features(xnorm, spatial_dims)
    if model is None or space is None:
        return np.stack(chans)
    mean, std, comp = (a.to(model.device) for a in _arrays(space))
    n_lat = model.net.quant_conv_mu.conv.out_channels
    out = np.empty((n_lat + comp.shape[1],) + xnorm.shape, dtype=np.float32)
    blocks = list(_batches(xnorm, model.config.spatial_dims, max(8, model.config.patch_size[0])))
    gen = _encoder_blocks(model, xnorm, lambda h, x: h.projected(x, mean, std, comp),
                          stop_event, "anomaly features")
    for i, (sl, f) in enumerate(gen):
        out[:, sl] = f
        yield {"stage": "features", "done": i + 1, "total": len(blocks)}
    return np.concatenate([out, np.stack(chans)])


# --- density models ------------------------------------------------------------------------

def fit_gmm(x: np.ndarray, n_components: int = 6, seed: int = 0, trim: float = 0.02) -> dict:
    """Gaussian mixture (full covariances) on standardised samples, refitted once without the
    ``trim`` least likely samples so a small lesion in the fit data does not get a component."""
    from sklearn.mixture import GaussianMixture

    mu, sd = x.mean(0), x.std(0) + 1e-6
    z = (x - mu) / sd
    gm = GaussianMixture(n_components, covariance_type="full", reg_covar=1e-3,
                         random_state=seed, max_iter=100)
    gm.fit(z)
    if trim > 0:
        s = gm.score_samples(z)
        keep = s > np.quantile(s, trim)
        gm = GaussianMixture(n_components, covariance_type="full", reg_covar=1e-3,
                             random_state=seed, max_iter=100, means_init=gm.means_,
                             weights_init=gm.weights_)
        gm.fit(z[keep])
    return {"kind": "gmm", "mu": mu.tolist(), "sd": sd.tolist(), "weights": gm.weights_.tolist(),
            "means": gm.means_.tolist(), "prec_chol": gm.precisions_cholesky_.tolist()}


def gmm_nll(x: np.ndarray, g: dict, chunk: int = 200_000) -> np.ndarray:
    """Negative log-likelihood of rows of ``x`` under a stored :func:`fit_gmm` model."""
    mu, sd = np.asarray(g["mu"], np.float32), np.asarray(g["sd"], np.float32)
    w = np.asarray(g["weights"], np.float64)
    means = np.asarray(g["means"], np.float32)
    pc = np.asarray(g["prec_chol"], np.float32)
    d = means.shape[1]
    logdet = np.array([np.log(np.diag(p)).sum() for p in pc])
    const = np.log(w) + logdet - 0.5 * d * np.log(2 * np.pi)
    out = np.empty(len(x), dtype=np.float32)
    for i in range(0, len(x), chunk):
        z = (x[i : i + chunk] - mu) / sd
        lp = np.stack([const[k] - 0.5 * (((z - means[k]) @ pc[k]) ** 2).sum(1)
                       for k in range(len(w))], axis=1)
        m = lp.max(1, keepdims=True)
        out[i : i + chunk] = -(m[:, 0] + np.log(np.exp(lp - m).sum(1)))
    return out


def fit_knn(x: np.ndarray, n_ref: int = 4000, seed: int = 0) -> dict:
    """Reference set for k-nearest-neighbour feature distances (standardised samples)."""
    rng = np.random.default_rng(seed)
    mu, sd = x.mean(0), x.std(0) + 1e-6
    ref = x[rng.choice(len(x), min(n_ref, len(x)), replace=False)]
    return {"kind": "knn", "mu": mu.tolist(), "sd": sd.tolist(),
            "ref": ((ref - mu) / sd).astype(np.float32).tolist(), "k": 10}


def knn_distance(x: np.ndarray, g: dict) -> np.ndarray:
    """Mean distance to the ``k`` nearest reference samples."""
    from scipy.spatial import cKDTree

    ref = np.asarray(g["ref"], np.float32)
    z = (x - np.asarray(g["mu"], np.float32)) / np.asarray(g["sd"], np.float32)
    d, _ = cKDTree(ref).query(z, k=int(g["k"]), workers=1)
    return d.mean(1).astype(np.float32)


def density_sample(rows: np.ndarray, n_scans: int, rng: np.random.Generator) -> np.ndarray:
    """One scan's share of the density's fit rows (30000 in all, drawn scan by scan)."""
    per = max(1, 30000 // n_scans)
    return rows[rng.choice(len(rows), min(per, len(rows)), replace=False)]


def fit_density(samples: list[np.ndarray], method: str, seed: int, components: int) -> dict:
    """The ``knn`` reference or a ``components``-Gaussian mixture on the scans' samples."""
    x = np.concatenate(samples)
    need = max(components, 2) * 5
    if len(x) < need:  # a (nearly) empty body mask: a few voxels, or a binary mask image
        raise ValueError(f"the {method!r} anomaly score needs at least {need} voxels inside "
                         f"the body to fit its density, got {len(x)}")
    return fit_knn(x, seed=seed) if method == "knn" else fit_gmm(x, components, seed=seed)


def ssim_map(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """``1 - SSIM(x, y)`` per axial slice, in 7x7 windows (normalised intensities)."""
    from skimage.metrics import structural_similarity

    out = np.empty_like(x)
    for i in range(x.shape[0]):
        _, s = structural_similarity(x[i], y[i], data_range=1.0, win_size=7, full=True)
        out[i] = 1.0 - s
    return out
