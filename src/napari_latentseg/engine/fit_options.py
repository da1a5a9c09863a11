"""What a fit is asked to do: :class:`FitOptions`, and the learning-rate and loss recipes.

Plain Python (no torch import), so the dock and the command line can build and check options
before the engine is loaded.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

LR_SCHEDULES = ("constant", "cosine")
RECON_LOSSES = ("l1", "l2", "l1+l2")
# The decoder's own phase (engine/polish.py): steps per main step when not given, and the share
# of a time budget it gets (a decoder step costs about 0.7 of a main step). On brain1 (64x64
# crops, 450 main steps, seeds 0-2), PSNR in the head is 27.26 dB without it, 28.15 dB with 300
# decoder steps and 28.32 dB with 450 (every seed above 28). The encoder, and so every
# segmentation feature, is the main fit's.
DECODER_SHARE = 1.0
DECODER_TIME_SHARE = 0.4

__all__ = ["DECODER_SHARE", "FitOptions", "LR_SCHEDULES", "RECON_LOSSES", "lr_factor",
           "reconstruction_loss", "loop_end"]


@dataclass
class FitOptions:
    """Options of a fit.

    Parameters
    ----------
    steps : int
        Maximum optimisation steps of the main fit (encoder and decoder together).
    decoder_steps : int or None
        Steps of the decoder-only phase that follows (the encoder frozen, so segmentation
        features are the main fit's while reconstructions sharpen); ``None``: as many as
        ``steps`` (on a preset's larger crops for large slices, the same seconds: 4/9 as many
        at 96x96); 0: none.
    minutes : float or None
        Wall-clock budget; the fit ends at whichever of ``steps`` / ``minutes`` comes first.
        With a decoder phase, the main fit gets 60 % of it and the decoder the rest.
    lr : float
        Adam's peak learning rate (after a short linear warm-up).
    lr_schedule : str
        ``cosine`` (default): decayed to zero over the budget (``steps``, or ``minutes`` when
        that ends first), so the last steps settle; ``constant`` after the warm-up. On brain1
        with ``cpu-2d-fine`` (its 96x96 crops of sessions 6-14), 3 seeds: cosine at 2e-3 gives
        26.85 dB PSNR (spread 0.75), the earlier constant 1e-3 26.21 dB (spread 1.75). A 6e-3
        peak gives 27.86 dB but worse segmentation columns (mean AUC -0.022 on brain1 over
        three fit seeds): 2e-3 stays.
    recon_loss : str
        Reconstruction loss: ``l1`` (mean absolute error), ``l2`` (mean squared error, what
        PSNR measures) or ``l1+l2`` (their sum).
    kl_weight : float
        Weight of the KL term (summed over latent elements, averaged over the batch).
    adversarial : bool
        Add a MONAI PatchDiscriminator (VAE-GAN) for sharper reconstructions.
    adversarial_weight : float
        Weight of the generator's adversarial loss.
    adversarial_start : int
        Step from which the adversarial loss is used (the VAE settles first).
    eval_every : int
        Validate (held-out crops, mean decoding) every this many steps.
    patience : int
        Early stopping: validations without improvement before stopping (0 disables).
    holdout_every : int
        One slice in this many is held out of training for validation.
    device : str
        ``auto`` (CUDA, then MPS, then CPU), ``cpu``, ``cuda``, ``cuda:1``, ``mps``.
    amp : bool
        Mixed precision on CUDA.
    seed : int
        Seed of sampling, augmentation and initial weights: the same seed and data give the
        same model on the CPU.
    anomaly_percentile : float
        Percentile of the fit data's foreground error used as the anomaly threshold.
    """

    steps: int = 450
    decoder_steps: int | None = None
    minutes: float | None = None
    lr: float = 2e-3
    lr_schedule: str = "cosine"
    recon_loss: str = "l1"
    kl_weight: float = 1e-6
    adversarial: bool = False
    adversarial_weight: float = 0.01
    adversarial_start: int = 200
    eval_every: int = 50
    patience: int = 6
    holdout_every: int = 8
    device: str = "auto"
    amp: bool = True
    seed: int = 0
    anomaly_percentile: float = 99.5

    def __post_init__(self) -> None:
        if self.steps < 1:
            raise ValueError(f"steps must be >= 1, got {self.steps}")
        if self.decoder_steps is not None and self.decoder_steps < 0:
            raise ValueError(f"decoder_steps must be >= 0, got {self.decoder_steps}")
        if self.minutes is not None and self.minutes <= 0:
            raise ValueError(f"minutes must be > 0, got {self.minutes}")
        if self.lr <= 0 or self.kl_weight < 0:
            raise ValueError("lr must be > 0 and kl_weight >= 0")
        if self.recon_loss not in RECON_LOSSES:
            raise ValueError(f"recon_loss must be one of {RECON_LOSSES}, "
                             f"got {self.recon_loss!r}")
        if self.lr_schedule not in LR_SCHEDULES:
            raise ValueError(f"lr_schedule must be one of {LR_SCHEDULES}, "
                             f"got {self.lr_schedule!r}")

    @property
    def planned_decoder_steps(self) -> int:
        """The decoder phase's step count (``decoder_steps``, or as many as ``steps``)."""
        if self.decoder_steps is not None:
            return self.decoder_steps
        return round(self.steps * DECODER_SHARE)

    @property
    def main_minutes(self) -> float | None:
        """The main fit's share of ``minutes`` (all of it when there is no decoder phase)."""
        if self.minutes is None or not self.planned_decoder_steps:
            return self.minutes
        return self.minutes * (1 - DECODER_TIME_SHARE)


def lr_factor(step: int, warmup: int, opts: FitOptions, elapsed_s: float) -> float:
    """The learning rate's multiplier at ``step``: linear warm-up, then constant or a cosine
    over the fraction of the budget spent (steps, or the time limit when that is tighter)."""
    f = min(1.0, (step + 1) / warmup)
    if opts.lr_schedule == "cosine" and step >= warmup:
        done = (step - warmup) / max(1, opts.steps - warmup)
        if opts.main_minutes is not None:
            done = max(done, elapsed_s / (60 * opts.main_minutes))
        f *= 0.5 * (1 + math.cos(math.pi * min(1.0, done)))
    return f


def loop_end(out_of_time: bool, bad_evals: int, patience: int) -> str | None:
    """Why a training loop ends after this step (``time``, ``early-stopping``), or None."""
    if out_of_time:
        return "time"
    if patience and bad_evals >= patience:
        return "early-stopping"
    return None


def reconstruction_loss(diff, kind: str):
    """Mean ``l1``, ``l2`` or ``l1+l2`` of a reconstruction's difference to its target."""
    if kind == "l1":
        return diff.abs().mean()
    if kind == "l2":
        return diff.pow(2).mean()
    return diff.abs().mean() + diff.pow(2).mean()
