"""The decoder's own phase of a fit: sharper reconstructions, the same features.

After the main fit, the encoder and the latent's convolutions are frozen and only the decoder
(``post_quant_conv`` and ``decoder``) trains, on the latent means that ``reconstruct`` decodes.
Segmentation reads the encoder alone (:class:`~.features.Hypercolumn`), so its features are the
main fit's exactly; only reconstructions, error maps and the anomaly threshold change.

Why a phase of its own: a longer main fit sharpens reconstructions too (brain1 28.7 dB at 900
steps) but makes worse segmentation columns (mean AUC -0.019 over three fits). The decoder
phase raises PSNR (27.26 -> 28.32 dB with 450 steps, the same three seeds) at 0.2 s a step, and
leaves the columns as they were.
"""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Callable, Generator

from .fit_options import FitOptions, loop_end, reconstruction_loss

__all__ = ["DecoderPhase", "polish_iter"]


class DecoderPhase:
    """What :func:`polish_iter` needs from the fit that ran before it.

    Parameters
    ----------
    net : AutoencoderKL
        The fitted network, its best weights loaded; trained in place.
    sample : callable
        Returns the next training batch as a tensor on the fit's device.
    validate : callable
        The held-out L1 of the network as it stands (the main fit's validation).
    centre_channel : callable
        The reconstruction target of a batch (its centre slice with context slices).
    agree : callable
        Flags true on any rank are true on every rank (identity in one process).
    wrap : callable
        Wraps the trainable module for distributed training (identity in one process).
    autocast : callable
        The fit's autocast context (mixed precision on CUDA).
    scaler : torch.amp.GradScaler
        The fit's loss scaler.
    clock : callable
        Seconds since the fit started; under DDP the slowest rank's, so a time budget gives
        every rank the same learning rate.
    """

    def __init__(self, net, sample: Callable, validate: Callable[[], float],
                 centre_channel: Callable, agree: Callable, wrap: Callable, autocast: Callable,
                 scaler, clock: Callable[[], float]) -> None:
        self.net, self.sample, self.validate = net, sample, validate
        self.centre_channel, self.agree, self.wrap = centre_channel, agree, wrap
        self.autocast, self.scaler, self.clock = autocast, scaler, clock


def polish_iter(
    phase: DecoderPhase,
    opts: FitOptions,
    *,
    steps: int,
    first_step: int,
    total: int,
    best_val: float,
    deadline_s: float | None,
    t_start: float,
    stop_event: threading.Event | None = None,
) -> Generator[dict, None, tuple[int, str, float]]:
    """Train the decoder alone for ``steps`` steps; yields a metrics dict per step.

    The steps continue the main fit's numbering (``first_step + 1`` ...), with ``phase``
    ``"decoder"``. The learning rate warms up over 20 steps to ``opts.lr`` and follows a cosine
    to zero over the phase's steps or the time until ``deadline_s`` (seconds after the fit's
    start, by ``phase.clock``), whichever is tighter. The decoder
    weights with the lowest validation L1 are kept; when none beats ``best_val`` (the main
    fit's), the network is left as it was.

    Returns
    -------
    (steps, reason, best_val)
        Steps run, why the phase ended (``steps``, ``time``, ``early-stopping``, ``stopped``
        or ``diverged``), and the best validation L1.
    """
    import torch

    net = phase.net
    # decode() without the latent sampling: distributed training syncs these parameters only.
    module = torch.nn.Sequential(net.post_quant_conv, net.decoder)
    frozen = [p for p in net.parameters() if p.requires_grad]
    trainable = list(module.parameters())
    for p in frozen:
        p.requires_grad_(False)
    for p in trainable:
        p.requires_grad_(True)
    train_module = phase.wrap(module)
    optim = torch.optim.Adam(trainable, lr=opts.lr)
    warmup = min(20, max(1, steps // 10))
    start = phase.clock() if deadline_s is not None else 0.0

    def factor(j: int) -> float:
        f = min(1.0, (j + 1) / warmup)
        if opts.lr_schedule == "cosine" and j >= warmup:
            done = (j - warmup) / max(1, steps - warmup)
            if deadline_s is not None:
                done = max(done, (phase.clock() - start) / max(1e-6, deadline_s - start))
            f *= 0.5 * (1 + math.cos(math.pi * min(1.0, done)))
        return f

    sched = torch.optim.lr_scheduler.LambdaLR(optim, factor)

    def snapshot() -> dict:
        return {k: v.detach().to("cpu").clone() for k, v in module.state_dict().items()}

    best_state = snapshot()  # the main fit's decoder: kept unless a validation beats it
    bad_evals, reason, j, fresh = 0, "steps", 0, True
    try:
        for j in range(1, steps + 1):
            (stop_now,) = phase.agree(stop_event is not None and stop_event.is_set())
            if stop_now:
                reason, j = "stopped", j - 1
                break
            t = time.perf_counter()
            x = phase.sample()
            target = phase.centre_channel(x)
            with torch.no_grad(), phase.autocast():
                z_mu, _ = net.encode(x)
            with phase.autocast():
                loss = reconstruction_loss(train_module(z_mu).float() - target, opts.recon_loss)
            optim.zero_grad(set_to_none=True)
            phase.scaler.scale(loss).backward()
            phase.scaler.step(optim)
            phase.scaler.update()
            sched.step()
            loss_v = float(loss.detach())
            (diverged,) = phase.agree(not math.isfinite(loss_v))
            if diverged:
                reason, fresh = "diverged", True  # the weights are broken: never validate them
                break
            now = time.perf_counter()
            metrics = {"stage": "fit", "phase": "decoder", "step": first_step + j,
                       "total": total, "loss": loss_v, "recon": loss_v,
                       "lr": float(sched.get_last_lr()[0]), "step_time": now - t,
                       "elapsed": now - t_start}
            (out_of_time,) = phase.agree(deadline_s is not None
                                         and now - t_start >= deadline_s)
            fresh = False
            if j % opts.eval_every == 0 or j == steps or out_of_time:
                val, fresh = phase.validate(), True
                metrics["val"] = val
                if val < best_val - 1e-5:
                    best_val, bad_evals, best_state = val, 0, snapshot()
                else:
                    bad_evals += 1
                metrics["best_val"] = best_val
            yield metrics
            end = loop_end(out_of_time, bad_evals, opts.patience)
            if end:
                reason = end
                break
        if not fresh:  # stopped between validations: keep the last weights if they are better
            val = phase.validate()
            if val < best_val - 1e-5:
                best_val, best_state = val, snapshot()
        module.load_state_dict(best_state)
    finally:
        for p in frozen:
            p.requires_grad_(True)
    return j, reason, best_val

