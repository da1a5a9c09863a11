"""Named VAE configurations built on MONAI's :class:`~monai.networks.nets.AutoencoderKL`.

Each configuration fixes the network (channels, levels, latent size) and the sampling geometry
used to fit it (2D slices, 2.5D slices with neighbours as channels, or 3D patches). The figures
in each ``description`` come from ``benchmarks/bench_configs.py`` on a 2-core AMD EPYC CPU.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields, replace
from typing import Any

__all__ = ["ModelConfig", "CONFIGS", "DEFAULT_CONFIG", "get_config", "build_network"]


# Slices wider than this (voxels, either side) are fitted on ``large_slice_patch`` crops.
LARGE_SLICE = 256


@dataclass(frozen=True)
class ModelConfig:
    """Architecture and sampling geometry of a VAE.

    Parameters
    ----------
    name : str
        Configuration name (informative once saved in a model file).
    spatial_dims : int
        2 for slice-wise models (axial slices, array axis 0), 3 for patch-wise 3D models.
    channels : tuple of int
        Feature channels per encoder level; the latent grid is ``2 ** (len(channels) - 1)``
        times coarser than the input.
    latent_channels : int
        Channels of the latent mean / variance maps.
    num_res_blocks : int
        Residual blocks per level.
    norm_num_groups : int
        GroupNorm groups (every entry of ``channels`` must be divisible by it).
    attention_last_level : bool
        Self-attention at the coarsest level (GPU configurations only: costly on CPU).
    context_slices : int
        2.5D only: neighbouring slices on each side fed as extra input channels; the network
        reconstructs the centre slice.
    patch_size : tuple of int
        Training crop size (in-plane for 2D, full 3D patch for 3D).
    large_slice_patch : tuple of int or None
        2D only: the crop size instead of ``patch_size`` when a fitted scan's slices exceed
        ``LARGE_SLICE`` voxels on a side (:meth:`for_slices`, applied by in-memory fits; a
        streamed cohort, whose shapes are known only as it is read, uses ``patch_size``).
        None: ``patch_size`` always.
    batch_size : int
        Training batch size.
    description : str
        One line for users: size, speed, intended device.
    """

    name: str
    spatial_dims: int = 2
    channels: tuple[int, ...] = (16, 32, 64)
    latent_channels: int = 4
    num_res_blocks: int = 1
    norm_num_groups: int = 8
    attention_last_level: bool = False
    context_slices: int = 0
    patch_size: tuple[int, ...] = (96, 96)
    large_slice_patch: tuple[int, ...] | None = None
    batch_size: int = 16
    description: str = ""
    extra: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.spatial_dims not in (2, 3):
            raise ValueError(f"spatial_dims must be 2 or 3, got {self.spatial_dims}")
        if any(c % self.norm_num_groups for c in self.channels):
            raise ValueError(
                f"every entry of channels {self.channels} must be divisible by "
                f"norm_num_groups={self.norm_num_groups}"
            )
        if len(self.patch_size) != self.spatial_dims:
            raise ValueError(
                f"patch_size {self.patch_size} must have {self.spatial_dims} entries"
            )
        if any(p % self.downsampling for p in self.patch_size):
            raise ValueError(
                f"patch_size {self.patch_size} must be a multiple of {self.downsampling}"
            )
        if self.large_slice_patch is not None and (
                self.spatial_dims != 2 or len(self.large_slice_patch) != 2
                or any(p % self.downsampling for p in self.large_slice_patch)):
            raise ValueError(
                f"large_slice_patch {self.large_slice_patch} must be 2 entries, multiples of "
                f"{self.downsampling}, for a 2D configuration"
            )
        if self.spatial_dims == 3 and self.context_slices:
            raise ValueError("context_slices applies to 2D configurations only")

    @property
    def downsampling(self) -> int:
        """Factor between the input grid and the latent grid (per downsampled axis)."""
        return 2 ** (len(self.channels) - 1)

    @property
    def in_channels(self) -> int:
        """Input channels of the network (1, or 1 + 2 * context_slices for 2.5D)."""
        return 1 + 2 * self.context_slices

    def for_slices(self, shapes) -> ModelConfig:
        """The configuration a fit on volumes of ``shapes`` uses: ``large_slice_patch`` as the
        crop when any slice exceeds ``LARGE_SLICE`` voxels on a side, else this one."""
        if self.large_slice_patch is None:
            return self
        if any(max(tuple(sh)[-2:]) > LARGE_SLICE for sh in shapes):
            return replace(self, patch_size=tuple(self.large_slice_patch))
        return self

    def to_dict(self) -> dict[str, Any]:
        """JSON-friendly representation (tuples become lists)."""
        d = asdict(self)
        return {k: list(v) if isinstance(v, tuple) else v for k, v in d.items()}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> ModelConfig:
        """Inverse of :meth:`to_dict`; unknown keys raise ``ValueError``."""
        known = {f.name for f in fields(cls)}
        unknown = set(d) - known
        if unknown:
            raise ValueError(f"unknown model configuration keys: {sorted(unknown)}")
        kw = {k: tuple(v) if isinstance(v, list) else v for k, v in d.items()}
        return cls(**kw)

    def monai_kwargs(self) -> dict[str, Any]:
        """Keyword arguments for :class:`monai.networks.nets.AutoencoderKL`."""
        n = len(self.channels)
        return {
            "spatial_dims": self.spatial_dims,
            "in_channels": self.in_channels,
            "out_channels": 1,
            "channels": tuple(self.channels),
            "latent_channels": self.latent_channels,
            "num_res_blocks": self.num_res_blocks,
            "norm_num_groups": self.norm_num_groups,
            "attention_levels": tuple([False] * (n - 1) + [self.attention_last_level]),
            "with_encoder_nonlocal_attn": self.attention_last_level,
            "with_decoder_nonlocal_attn": self.attention_last_level,
        }


CONFIGS: dict[str, ModelConfig] = {
    c.name: c
    for c in [
        ModelConfig(
            name="cpu-2d-fine",
            channels=(16, 32),
            # 64x64 crops (96x96 until session 15): a step costs 0.27 s instead of 0.62 s on
            # one CPU thread, brain1 fits in ~2 min at 27.3 dB (was ~4 min, 26.9 dB) and the
            # segmentation columns are level (docs/anomaly_benchmarks.md, "Smaller crops").
            # 512x512 CT keeps 96x96: its columns lost with 64x64 (lung1 -0.008 over two fits,
            # lung2 -0.030 over three).
            patch_size=(64, 64),
            large_slice_patch=(96, 96),
            description=(
                "Default. 2D slices, 2 levels (16-32), latent 4 ch at 1/2 resolution, 60k "
                "parameters: 28 dB PSNR on a brain MRI in ~2 min on a 2-core CPU (its encoder, "
                "which segmentation uses, ready in ~1 min) where cpu-2d gives 23."
            ),
        ),
        ModelConfig(
            name="cpu-2d",
            description=(
                "2D slices, 3 levels (16-32-64), latent 4 ch at 1/4 resolution, 252k "
                "parameters; ~0.8 Mvoxel/s reconstruction and ~0.3 s per training step on a "
                "2-core CPU. The default until cpu-2d-fine matched its segmentation features "
                "with 4 dB more PSNR."
            ),
        ),
        ModelConfig(
            name="cpu-2.5d",
            context_slices=1,
            description=(
                "2.5D: the two neighbouring slices as extra channels, otherwise as cpu-2d. "
                "Better for thin-slice CT/MR, no help for 5 mm+ slices."
            ),
        ),
        ModelConfig(
            name="gpu-2d",
            channels=(32, 64, 128, 128),
            latent_channels=8,
            num_res_blocks=2,
            norm_num_groups=32,
            attention_last_level=True,
            patch_size=(192, 192),
            batch_size=32,
            description=(
                "Large 2D model for a GPU: 4 levels (32-64-128-128) with attention, latent 8 ch "
                "at 1/8 resolution; slow on CPU."
            ),
        ),
        ModelConfig(
            name="gpu-3d",
            spatial_dims=3,
            channels=(32, 64, 128),
            latent_channels=4,
            num_res_blocks=1,
            norm_num_groups=16,
            patch_size=(64, 64, 64),
            batch_size=4,
            description=(
                "3D patch model for a GPU: 64^3 patches, 3 levels (32-64-128), latent 4 ch at "
                "1/4 resolution; seconds per step on CPU."
            ),
        ),
        ModelConfig(
            name="tiny",
            channels=(8, 8),
            latent_channels=2,
            norm_num_groups=4,
            patch_size=(32, 32),
            batch_size=4,
            description="Tests and smoke runs only: 2 levels of 8 channels.",
        ),
        ModelConfig(
            name="tiny-3d",
            spatial_dims=3,
            channels=(8, 8),
            latent_channels=2,
            norm_num_groups=4,
            patch_size=(16, 16, 16),
            batch_size=2,
            description="Tests and smoke runs only: 3D, 2 levels of 8 channels.",
        ),
    ]
}

DEFAULT_CONFIG = "cpu-2d-fine"


def get_config(name: str | ModelConfig) -> ModelConfig:
    """Return a configuration by name (a :class:`ModelConfig` passes through)."""
    if isinstance(name, ModelConfig):
        return name
    try:
        return CONFIGS[name]
    except KeyError:
        raise ValueError(
            f"unknown configuration {name!r}; choose one of: {', '.join(CONFIGS)}"
        ) from None


def build_network(config: ModelConfig):
    """Instantiate the MONAI AutoencoderKL for ``config`` (imports torch lazily)."""
    from monai.networks.nets import AutoencoderKL

    return AutoencoderKL(**config.monai_kwargs())
