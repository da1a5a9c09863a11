"""Model files: one file per model, loaded without executing code.

A model file is a ``torch.save`` of a dictionary holding only tensors and plain Python values
(str, int, float, bool, None, lists, dicts), so ``torch.load(weights_only=True)`` reads it and
nothing in the file can run code. It holds the weights, the architecture configuration, the
intensity normalisation, the anomaly threshold, the training history, what the model was fitted
on, the package version and, after fine-tuning, the segmentation head.

Saving never overwrites an existing file: :func:`save_model` refuses, and
:func:`next_version_path` gives the next free ``name-v2.pt``, ``name-v3.pt``... for new versions.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..runtime.files import atomic_write
from .config import ModelConfig, build_network

__all__ = [
    "MODEL_FORMAT",
    "ModelFileError",
    "VAEModel",
    "save_model",
    "load_model",
    "next_version_path",
]

MODEL_FORMAT = "napari-latentseg-model"
MODEL_FORMAT_VERSION = 1


class ModelFileError(ValueError):
    """A model file is missing, not ours, damaged, or does not match its configuration."""


@dataclass
class VAEModel:
    """A fitted VAE with everything needed to apply it to a new scan.

    Attributes
    ----------
    net : monai.networks.nets.AutoencoderKL
        The network (on CPU after loading; move with :meth:`to`).
    config : ModelConfig
        Architecture and sampling geometry.
    normalization : dict
        :class:`~napari_latentseg.engine.normalize.Normalizer` as a dict.
    anomaly : dict
        Error threshold learned on the fit data (``threshold``, ``percentile``, ...).
    history : list of dict
        Per-step training metrics (possibly thinned).
    info : dict
        Provenance: files fitted on, steps, time, device, seed, parent model, versions.
    head : dict or None
        Segmentation head (state dict and class ids) after fine-tuning; its keys are
        described in :mod:`napari_latentseg.models.head`.
    source_path : str or None
        The file this model was loaded from.
    """

    net: Any
    config: ModelConfig
    normalization: dict = field(default_factory=dict)
    anomaly: dict = field(default_factory=dict)
    history: list = field(default_factory=list)
    info: dict = field(default_factory=dict)
    head: dict | None = None
    source_path: str | None = None

    @property
    def device(self):
        """Device of the network's parameters."""
        return next(self.net.parameters()).device

    def to(self, device) -> VAEModel:
        """Move the network to ``device`` in place; returns ``self``."""
        self.net.to(device)
        return self

    def describe(self) -> str:
        """One line for users: configuration, what it was fitted on, steps."""
        on = self.info.get("fitted_on") or []
        names = ", ".join(Path(p).name for p in on[:3]) + (" ..." if len(on) > 3 else "")
        steps = self.info.get("steps")
        dec = self.info.get("decoder_steps")
        ft = " + fine-tuned" if self.head else ""
        return f"{self.config.name}{ft}, fitted on {names or 'unknown data'}" + (
            f" for {steps} steps" if steps else ""
        ) + (f" + {dec} decoder steps" if steps and dec else "")


def _plain(value: Any) -> Any:
    """Convert tuples and numpy scalars so the file holds plain types only."""
    import numpy as np

    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, Path):
        return str(value)
    return value


def save_model(model: VAEModel, path: str | os.PathLike, *, overwrite: bool = False) -> Path:
    """Write ``model`` to ``path`` atomically (temporary file, then rename).

    Parameters
    ----------
    model : VAEModel
        The model to save.
    path : path-like
        Destination; ``.pt`` is the usual extension.
    overwrite : bool
        Must be True to replace an existing file. The package itself never passes True for
        models: fine-tuned and re-fitted models go to :func:`next_version_path`.

    Returns
    -------
    Path
        The written path.
    """
    import torch

    from .. import __version__

    path = Path(path)
    if path.exists() and not overwrite:
        raise FileExistsError(
            f"{path} already exists; models are never overwritten: choose another name "
            f"(e.g. {next_version_path(path).name})"
        )
    path.parent.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().to("cpu").clone() for k, v in model.net.state_dict().items()}
    payload = {
        "format": MODEL_FORMAT,
        "format_version": MODEL_FORMAT_VERSION,
        "package_version": __version__,
        "torch_version": torch.__version__.split("+")[0],
        "config": model.config.to_dict(),
        "normalization": _plain(model.normalization),
        "anomaly": _plain(model.anomaly),
        "history": _plain(model.history),
        "info": _plain(model.info),
        "state_dict": state,
        "head": None,
    }
    if model.head is not None:
        from .head import split_head_for_file

        meta, head_state = split_head_for_file(model.head)
        payload["head"] = _plain(meta)
        if head_state is not None:
            payload["head"]["state_dict"] = head_state
    try:
        with atomic_write(path, "wb", overwrite=overwrite) as fh:
            torch.save(payload, fh)
    except FileExistsError:  # appeared while we were writing
        raise FileExistsError(f"{path} appeared while saving; nothing was overwritten") from None
    return path


def _is_plain_state_dict(obj: Any) -> bool:
    import torch

    return isinstance(obj, dict) and bool(obj) and all(
        isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in obj.items()
    )


def load_model(
    path: str | os.PathLike,
    *,
    device: str | None = "cpu",
    config: ModelConfig | dict | None = None,
    normalization: dict | None = None,
) -> VAEModel:
    """Load a model file, or a plain MONAI AutoencoderKL state dict with its configuration.

    Parameters
    ----------
    path : path-like
        A file written by :func:`save_model`, or a ``torch.save``'d AutoencoderKL
        ``state_dict`` (weights trained elsewhere).
    device : str, optional
        Where to put the network (``"cpu"`` by default; ``"auto"`` picks the best device).
    config : ModelConfig or dict, optional
        Required for a plain state dict: either a :class:`ModelConfig` / its dict, or the
        AutoencoderKL keyword arguments (``spatial_dims``, ``channels``, ...).
    normalization : dict, optional
        Normalisation for a plain state dict (default: MR-style percentiles).

    Returns
    -------
    VAEModel

    Raises
    ------
    ModelFileError
        Missing, truncated, foreign or inconsistent file, with the reason.
    """
    import torch

    from ..runtime.device import resolve_device

    path = Path(path)
    if not path.is_file():
        raise ModelFileError(f"{path}: no such model file")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises many types on damaged input; all mean unreadable
        msg = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        if "Weights only load failed" in str(exc):
            msg = "it contains Python objects other than weights, which are never executed"
        raise ModelFileError(
            f"{path}: not a readable model file (truncated, damaged or not a PyTorch file): {msg}"
        ) from None

    if isinstance(obj, dict) and obj.get("format") == MODEL_FORMAT:
        if int(obj.get("format_version", 0)) > MODEL_FORMAT_VERSION:
            raise ModelFileError(
                f"{path}: written by a newer napari-latentseg ({obj.get('package_version')}); "
                "upgrade the package to read it"
            )
        try:
            cfg = ModelConfig.from_dict(obj["config"])
        except (KeyError, TypeError, ValueError) as exc:
            raise ModelFileError(f"{path}: invalid model configuration: {exc}") from None
        state = obj.get("state_dict")
        norm = obj.get("normalization") or {}
        extra = {
            "anomaly": obj.get("anomaly") or {},
            "history": obj.get("history") or [],
            "info": obj.get("info") or {},
            "head": obj.get("head"),
        }
    elif _is_plain_state_dict(obj):
        if config is None:
            raise ModelFileError(
                f"{path}: a plain state dict without configuration; pass the AutoencoderKL "
                "configuration (e.g. --model-config config.json)"
            )
        cfg = _config_from_user(config)
        state = obj
        norm = normalization or {"method": "percentile"}
        extra = {"anomaly": {}, "history": [], "info": {"imported_from": str(path)}, "head": None}
    else:
        raise ModelFileError(f"{path}: not a napari-latentseg model file nor a state dict")

    net = build_network(cfg)
    try:
        net.load_state_dict(state, strict=True)
    except (RuntimeError, TypeError, AttributeError) as exc:
        first = str(exc).splitlines()[0][:300]
        raise ModelFileError(
            f"{path}: the weights do not match configuration {cfg.name!r}: {first}"
        ) from None
    net.eval()
    model = VAEModel(net=net, config=cfg, normalization=norm, source_path=str(path), **extra)
    return model.to(resolve_device(device))


def _config_from_user(config: ModelConfig | dict) -> ModelConfig:
    """Accept a ModelConfig, its dict, or AutoencoderKL keyword arguments."""
    if isinstance(config, ModelConfig):
        return config
    d = dict(config)
    if "name" in d:
        return ModelConfig.from_dict(d)
    # AutoencoderKL kwargs as a user would write them for MONAI.
    n_blocks = d.get("num_res_blocks", 1)
    if isinstance(n_blocks, list | tuple):
        if len(set(n_blocks)) != 1:
            raise ModelFileError("num_res_blocks must be the same at every level")
        n_blocks = n_blocks[0]
    channels = tuple(d.get("channels", (16, 32, 64)))
    att = list(d.get("attention_levels", [False] * len(channels)))
    if any(att[:-1]):
        raise ModelFileError("attention is supported at the last level only")
    spatial = int(d.get("spatial_dims", 2))
    in_ch = int(d.get("in_channels", 1))
    try:
        return ModelConfig(
            name="imported",
            spatial_dims=spatial,
            channels=channels,
            latent_channels=int(d.get("latent_channels", 3)),
            num_res_blocks=int(n_blocks),
            norm_num_groups=int(d.get("norm_num_groups", 32)),
            attention_last_level=bool(att[-1]) if att else False,
            context_slices=(in_ch - 1) // 2,
            patch_size=tuple(d.get("patch_size", [64] * spatial)),
        )
    except ValueError as exc:
        raise ModelFileError(f"invalid AutoencoderKL configuration: {exc}") from None


_VERSION_RE = re.compile(r"^(?P<stem>.*?)-v(?P<n>\d+)$")


def next_version_path(path: str | os.PathLike) -> Path:
    """First free ``stem-vN.ext`` next to ``path`` (``path`` itself if it does not exist)."""
    path = Path(path)
    if not path.exists():
        return path
    suffix = "".join(path.suffixes[-1:])
    stem = path.name[: -len(suffix)] if suffix else path.name
    m = _VERSION_RE.match(stem)
    base, n = (m.group("stem"), int(m.group("n"))) if m else (stem, 1)
    while True:
        n += 1
        cand = path.with_name(f"{base}-v{n}{suffix}")
        if not cand.exists():
            return cand
