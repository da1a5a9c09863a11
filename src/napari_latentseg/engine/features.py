"""Per-voxel features from a fitted VAE: the encoder's hypercolumn.

For every voxel: the output of each encoder level (the last block before each downsampling and
the encoder's final block) and the latent mean, upsampled to voxel resolution, plus a few cheap
intensity features (the normalised intensity, Gaussian-smoothed at 1, 2 and 4 voxels, and the
gradient magnitude). :class:`Hypercolumn` is a torch module so the same code serves frozen
features (few-shot) and fine-tuning (gradients flow into the encoder).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

# The head is part of a saved model: it lives in models/ (re-exported here for callers).
from ..models.head import SegmentationHead

__all__ = ["Hypercolumn", "SegmentationHead", "Segmenter", "gaussian_blur", "multiscale_features",
           "sample_at", "MULTISCALE_SIGMAS"]

_SIGMAS = (1.0, 2.0, 4.0)
# scikit-image's multiscale_basic_features(sigma_min=1, sigma_max=16): the ilastik set.
MULTISCALE_SIGMAS = (1.0, 2.0, 4.0, 8.0, 16.0)


def _gauss_kernel(sigma: float) -> torch.Tensor:
    r = max(1, int(math.ceil(3 * sigma)))
    x = torch.arange(-r, r + 1, dtype=torch.float32)
    k = torch.exp(-0.5 * (x / sigma) ** 2)
    return k / k.sum()


def gaussian_blur(x: torch.Tensor, sigma: float, dims: int | None = None) -> torch.Tensor:
    """Separable Gaussian blur of (B, C, *spatial) over the last ``dims`` axes (replicate edges)."""
    k = _gauss_kernel(sigma).to(device=x.device, dtype=x.dtype)
    r = (k.numel() - 1) // 2
    dims = x.ndim - 2 if dims is None else dims
    conv = F.conv2d if x.ndim == 4 else F.conv3d
    c = x.shape[1]
    y = x
    for d in range(dims):
        axis = x.ndim - dims + d
        shape = [c, 1] + [1] * (x.ndim - 2)
        shape[axis] = k.numel()
        pad = [0, 0] * (x.ndim - 2)
        j = x.ndim - 1 - axis  # F.pad lists the last axis first
        pad[2 * j] = pad[2 * j + 1] = min(r, y.shape[axis] - 1)
        if pad[2 * j]:
            y = F.pad(y, pad, mode="replicate")
        kk = k if pad[2 * j] == r else k[r - pad[2 * j] : r + pad[2 * j] + 1] / \
            k[r - pad[2 * j] : r + pad[2 * j] + 1].sum()
        shape[axis] = kk.numel()
        # One kernel per channel (a depthwise convolution).
        weight = kk.reshape([1] + shape[1:]).expand(shape).contiguous()
        y = conv(y, weight, groups=c)
    return y


def _gradient(t: torch.Tensor, dim: int) -> torch.Tensor:
    """``torch.gradient(t, dim=dim)[0]`` (central differences, one-sided at the edges) without
    its concatenation; no autograd (the forest's features only)."""
    n = t.shape[dim]
    if n < 2:
        return torch.zeros_like(t)
    out = torch.empty_like(t)
    if n > 2:
        mid = out.narrow(dim, 1, n - 2)
        torch.sub(t.narrow(dim, 2, n - 2), t.narrow(dim, 0, n - 2), out=mid)
        mid.mul_(0.5)
    torch.sub(t.narrow(dim, 1, 1), t.narrow(dim, 0, 1), out=out.narrow(dim, 0, 1))
    torch.sub(t.narrow(dim, n - 1, 1), t.narrow(dim, n - 2, 1), out=out.narrow(dim, n - 1, 1))
    return out


def sample_at(t: torch.Tensor, size: tuple[int, int], at: tuple[torch.Tensor, ...]
              ) -> torch.Tensor:
    """``F.interpolate(t, size, mode="bilinear")[b, :, y, x]`` for ``at = (b, y, x)``: (N, C).

    The same source coordinates and edge clamping as ``F.interpolate`` (align_corners=False,
    scale = input / output size), computed at N voxels only."""
    b, y, x = at
    h, w = t.shape[2:]
    if (h, w) == tuple(size):
        return t[b, :, y, x]

    def corners(i: torch.Tensor, n: int, out: int):
        src = ((i.to(t.dtype) + 0.5) * (n / out) - 0.5).clamp_(min=0)
        i0 = src.floor().long()
        return i0, (i0 + 1).clamp_(max=n - 1), (src - i0)[:, None]

    y0, y1, wy = corners(y, h, size[0])
    x0, x1, wx = corners(x, w, size[1])
    top = t[b, :, y0, x0] * (1 - wx) + t[b, :, y0, x1] * wx
    bottom = t[b, :, y1, x0] * (1 - wx) + t[b, :, y1, x1] * wx
    return top * (1 - wy) + bottom * wy


def multiscale_features(x: torch.Tensor, sigmas: tuple[float, ...] = MULTISCALE_SIGMAS
                        ) -> torch.Tensor:
    """The ilastik / scikit-image feature set of 2D images, on the device of ``x``.

    For each sigma: the Gaussian-smoothed intensity, its gradient magnitude ("edges") and the
    two eigenvalues of its Hessian ("texture"), as in
    ``skimage.feature.multiscale_basic_features``.

    Parameters
    ----------
    x : torch.Tensor
        (B, 1, H, W) normalised images.

    Returns
    -------
    torch.Tensor
        (B, 4 * len(sigmas), H, W).
    """
    b, _, h, w = x.shape
    out = torch.empty((b, 4 * len(sigmas), h, w), dtype=x.dtype, device=x.device)
    for i, s in enumerate(sigmas):
        # Large scales on a coarser grid (a pyramid): scale-normalised derivatives are the same
        # on both grids, and the blur costs a fraction. sigma >= 4 -> factor sigma / 2.
        f = int(max(1, min(s // 2, min(h, w) // 16)))
        xs = F.avg_pool2d(x, f, ceil_mode=True) if f > 1 else x
        sc = s / f
        g = gaussian_blur(xs, sc)
        gy, gx = _gradient(g, 2), _gradient(g, 3)
        gyy, gyx, gxx = _gradient(gy, 2), _gradient(gy, 3), _gradient(gx, 3)
        # Written into one preallocated block (no concatenation): the features are the costly
        # part of a first segmentation round. Derivatives scaled by sigma (and sigma^2) so
        # scales are comparable, as in skimage.
        level = torch.empty((b, 4) + g.shape[2:], dtype=g.dtype, device=g.device)
        level[:, 0:1] = g
        torch.hypot(gy, gx, out=level[:, 1:2])
        level[:, 1:2].mul_(sc)
        half_tr = (gyy + gxx).mul_(0.5)
        root = torch.hypot((gyy - gxx).mul_(0.5), gyx)
        torch.add(half_tr, root, out=level[:, 2:3])
        torch.sub(half_tr, root, out=level[:, 3:4])
        level[:, 2:4].mul_(sc * sc)
        if f > 1:
            level = F.interpolate(level, scale_factor=f, mode="bilinear",
                                  align_corners=False)[..., :h, :w]
        out[:, 4 * i : 4 * i + 4] = level
    return out


class Hypercolumn(nn.Module):
    """Hypercolumn features of a MONAI AutoencoderKL encoder.

    Parameters
    ----------
    vae : monai.networks.nets.AutoencoderKL
        The fitted network (its encoder is shared, not copied).
    context_slices : int
        2.5D models: index of the centre channel in the input.
    intensity : bool
        Append the cheap intensity features.
    """

    def __init__(self, vae: nn.Module, context_slices: int = 0, intensity: bool = True) -> None:
        super().__init__()
        self.vae = vae
        self.centre = context_slices
        self.intensity = intensity
        self.spatial_dims = vae.encoder.spatial_dims
        from monai.networks.nets.autoencoderkl import AEKLDownsample

        blocks = list(vae.encoder.blocks)
        # A level's features are the output of the block just before its downsampling; the
        # last level's are the output of the block before the final GroupNorm + conv.
        self.taps = [i - 1 for i, b in enumerate(blocks) if isinstance(b, AEKLDownsample)]
        self.taps.append(len(blocks) - 3)
        self.tap_channels = [int(c) for c in vae.encoder.channels]
        self.latent_channels = vae.quant_conv_mu.conv.out_channels

    @property
    def n_features(self) -> int:
        """Channels of the hypercolumn."""
        n = sum(self.tap_channels) + self.latent_channels
        return n + (2 + len(_SIGMAS) if self.intensity else 0)

    def _intensity(self, x: torch.Tensor) -> list[torch.Tensor]:
        c = x[:, self.centre : self.centre + 1]
        out = [c] + [gaussian_blur(c, s) for s in _SIGMAS]
        g = out[1]  # sigma 1
        grads = torch.gradient(g, dim=list(range(2, g.ndim)))
        out.append(torch.sqrt(sum(gr**2 for gr in grads) + 1e-12))
        return out

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, C_in, *spatial) normalised input -> (B, n_features, *spatial)."""
        size = x.shape[2:]
        mode = "bilinear" if self.spatial_dims == 2 else "trilinear"
        feats = []
        h = x
        taps = set(self.taps)
        blocks = self.vae.encoder.blocks
        for i, block in enumerate(blocks):
            h = block(h)
            if i in taps:
                feats.append(h)
        mu = self.vae.quant_conv_mu(h)
        feats.append(mu)
        up = [f if f.shape[2:] == size else F.interpolate(f, size=size, mode=mode,
                                                           align_corners=False) for f in feats]
        if self.intensity:
            up += self._intensity(x)
        return torch.cat(up, dim=1)

    def projected(self, x: torch.Tensor, mean: torch.Tensor, std: torch.Tensor,
                  comp: torch.Tensor) -> torch.Tensor:
        """Latent mean and principal components of the encoder levels, at voxel resolution.

        Equals ``forward``'s latent channels and ``((levels - mean) / std) @ comp``, but each
        level is projected at its own resolution before upsampling (both maps are linear and
        bilinear weights sum to one), so the ~120-channel hypercolumn is never materialised.

        Returns
        -------
        torch.Tensor
            (B, latent_channels + comp.shape[1], *spatial).
        """
        return torch.cat(self._projected(x, mean, std, comp), dim=1)

    def _projected(self, x: torch.Tensor, mean: torch.Tensor, std: torch.Tensor,
                   comp: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(latent mean, projection) at voxel resolution; inference only (adds in place)."""
        size = x.shape[2:]
        mode = "bilinear" if self.spatial_dims == 2 else "trilinear"
        conv = F.conv2d if self.spatial_dims == 2 else F.conv3d
        ones = (1,) * self.spatial_dims

        def up(f: torch.Tensor) -> torch.Tensor:
            return f if f.shape[2:] == size else F.interpolate(f, size=size, mode=mode,
                                                               align_corners=False)

        w = (comp / std[:, None]).T.contiguous()  # (K, C)
        bias = -(mean / std) @ comp
        total = None
        start = 0
        h = x
        taps = set(self.taps)
        for i, block in enumerate(self.vae.encoder.blocks):
            h = block(h)
            if i in taps:
                c = h.shape[1]
                part = conv(h, w[:, start : start + c].reshape(w.shape[0], c, *ones))
                start += c
                part = up(part)
                # In place: these are full-resolution tensors (64 channels x 512^2 is 67 MB).
                total = part if total is None else total.add_(part)
        mu = up(self.vae.quant_conv_mu(h))
        return mu, total.add_(bias.view(1, -1, *ones))

    def linear(self, x: torch.Tensor, mean: torch.Tensor, std: torch.Tensor,
               weight: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
        """``weight @ ((self(x) - mean) / std) + bias`` per voxel, without the hypercolumn.

        Each encoder level is mapped at its own resolution before upsampling (see
        :meth:`projected`), so only the ``weight.shape[0]`` outputs ever exist at voxel
        resolution: the head's first layer, or the principal components that clusters use.

        Parameters
        ----------
        mean, std : torch.Tensor
            (n_features,) standardisation of the hypercolumn's channels.
        weight : torch.Tensor
            (K, n_features).
        bias : torch.Tensor
            (K,).

        Returns
        -------
        torch.Tensor
            (B, K, *spatial).
        """
        conv = F.conv2d if self.spatial_dims == 2 else F.conv3d
        n_tap = sum(self.tap_channels)
        mu, z = self._projected(x, mean[:n_tap], std[:n_tap], weight[:, :n_tap].T)
        rest = torch.cat([mu] + (self._intensity(x) if self.intensity else []), dim=1)
        w_rest = weight[:, n_tap:] / std[n_tap:]
        b = bias - w_rest @ mean[n_tap:]
        z.add_(conv(rest, w_rest.reshape(w_rest.shape + (1,) * self.spatial_dims), b))
        return z

    def linear_at(self, x: torch.Tensor, mean: torch.Tensor, std: torch.Tensor,
                  weight: torch.Tensor, bias: torch.Tensor, at: tuple[torch.Tensor, ...]
                  ) -> torch.Tensor:
        """:meth:`linear` at the voxels ``at = (b, y, x)`` only, (N, K); 2D models.

        Each encoder level is read at those voxels as ``F.interpolate`` would upsample it,
        then mapped: no level is upsampled and no map is applied to the whole slice.
        """
        size = x.shape[2:]
        n_tap = sum(self.tap_channels)
        w = weight / std
        out = (bias - w @ mean).expand(len(at[0]), -1).clone()
        start, h, taps = 0, x, set(self.taps)
        for i, block in enumerate(self.vae.encoder.blocks):
            h = block(h)
            if i in taps:
                c = h.shape[1]
                out.addmm_(sample_at(h, size, at), w[:, start : start + c].T)
                start += c
        rest = [self.vae.quant_conv_mu(h)] + (self._intensity(x) if self.intensity else [])
        cols = torch.cat([sample_at(r, size, at) for r in rest], dim=1)
        return out.addmm_(cols, w[:, n_tap:].T)

    def head_logits(self, x: torch.Tensor, head: SegmentationHead) -> torch.Tensor:
        """``head(self(x))`` without the hypercolumn at voxel resolution.

        The head's first layer is a 1x1 convolution on standardised features, so it goes
        through :meth:`linear`; only the head's hidden channels exist at full resolution.
        """
        first = head.net[0]
        z = self.linear(x, head.mean, head.std, first.weight.flatten(1), first.bias)
        return head.net[1:](z)

    def head_logits_at(self, x: torch.Tensor, head: SegmentationHead,
                       at: tuple[torch.Tensor, ...]) -> torch.Tensor:
        """:meth:`head_logits` at the voxels ``at = (b, y, x)`` only: (N, n_classes)."""
        first = head.net[0]
        z = self.linear_at(x, head.mean, head.std, first.weight.flatten(1), first.bias, at)
        return head.layers_flat(z, 1)


class Segmenter(nn.Module):
    """Hypercolumn + head: (B, C_in, *spatial) -> (B, n_classes, *spatial) logits."""

    def __init__(self, features: Hypercolumn, head: SegmentationHead) -> None:
        super().__init__()
        self.features = features
        self.head = head

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))
