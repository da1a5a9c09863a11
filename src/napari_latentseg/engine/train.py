"""Fitting a VAE to the user's volumes (self-supervised, no labels).

:func:`fit_iter` is a generator: it yields one metrics dict per training step (losses, step
time, progress) and returns a :class:`FitResult` holding the best model seen. Callers observe
it (progress bars, live loss curves) and stop it by setting ``stop_event``: the generator then
returns the best model so far at the next step, so a stopped fit still gives a usable model and
nothing saved before is touched (saving is the caller's choice, and never overwrites).
"""

from __future__ import annotations

import copy
import math
import threading
import time
from collections.abc import Callable, Generator, Iterable, Sequence
from dataclasses import dataclass, field

import numpy as np

from ..models.checkpoint import VAEModel
from ..models.config import DEFAULT_CONFIG, ModelConfig, build_network, get_config
from ..runtime.device import (
    amp_dtype,
    autocast,
    configure_threads,
    prefers_channels_last,
    resolve_device,
)
from ..runtime.progress import drive
from .fit_options import FitOptions, loop_end, lr_factor, reconstruction_loss
from .polish import DecoderPhase, polish_iter
from .sampling import CropSampler, PreparedVolume, prepare_volume
from .stream import StreamingCropSampler, VolumeSource

__all__ = ["FitOptions", "FitResult", "fit_iter", "fit", "calibrate_anomaly"]


@dataclass
class FitResult:
    """What a fit returns: the best model and why the loop ended."""

    model: VAEModel
    reason: str
    steps: int
    seconds: float
    best_val: float
    history: list[dict] = field(default_factory=list)
    decoder_steps: int = 0  # steps of the decoder phase after the ``steps`` of the main fit


def _ddp_wrap(module, device):
    """``module`` in DistributedDataParallel on ``device``."""
    import torch
    from torch.nn.parallel import DistributedDataParallel

    ids = None
    if device.type == "cuda":  # "cuda" without an index (from "auto") is the current GPU
        ids = [device.index if device.index is not None else torch.cuda.current_device()]
    return DistributedDataParallel(module, device_ids=ids)


def _decoder_plan(opts: FitOptions, base_patch, patch) -> int:
    """The decoder phase's steps: ``opts``'s, or by default on a preset's larger crops (slices
    over 256 voxels) the same seconds as on its own crops. lung1 on 96x96 crops, seed 0:
    held-out PSNR 35.44 dB -> 39.06 dB with 200 steps, 38.80 dB with 450."""
    n = opts.planned_decoder_steps
    if opts.decoder_steps is None and n and tuple(patch) != tuple(base_patch):
        n = max(1, round(n * math.prod(base_patch) / math.prod(patch)))
    return n


def _record(gen: Generator[dict, None, object], history: list[dict]):
    """``yield from gen``, appending each metrics dict to ``history``; returns gen's value."""
    while True:
        try:
            metrics = next(gen)
        except StopIteration as stop:
            return stop.value
        history.append(metrics)
        yield metrics


def _kl(z_mu, z_sigma):
    import torch

    dims = list(range(1, z_mu.ndim))
    kl = 0.5 * torch.sum(z_mu.pow(2) + z_sigma.pow(2) - torch.log(z_sigma.pow(2) + 1e-12) - 1, dims)
    return kl.mean()


def _refuse_constant(data: np.ndarray, name: str, raw: bool = True) -> None:
    """Raise ValueError if ``data`` holds a single value: a VAE has nothing to learn from it."""
    lo, hi = data.min(), data.max()
    if lo == hi:
        value = f"the value {float(lo):g}" if raw else "the same value after normalisation"
        raise ValueError(f"{name} is constant (every voxel has {value}): there is nothing to "
                         "learn; check that the right file or series was loaded")


def _to_tensor(batch: np.ndarray, device, channels_last: bool):
    import torch

    t = torch.from_numpy(batch)
    if device.type == "cuda":  # non_blocking is a no-op from pageable memory
        t = t.pin_memory()
    t = t.to(device, non_blocking=True)
    if channels_last and t.ndim == 4:
        t = t.contiguous(memory_format=torch.channels_last)
    return t


def fit_iter(
    volumes: Sequence[np.ndarray] | np.ndarray | VolumeSource,
    config: str | ModelConfig = DEFAULT_CONFIG,
    options: FitOptions | None = None,
    *,
    modalities: Sequence[str | None] | None = None,
    sources: Sequence[str] | None = None,
    stop_event: threading.Event | None = None,
    initial: VAEModel | None = None,
) -> Generator[dict, None, FitResult]:
    """Fit a VAE, yielding a metrics dict per step; returns a :class:`FitResult`.

    Parameters
    ----------
    volumes : array, sequence of arrays or VolumeSource
        One or more 2D/3D arrays (z, y, x) in their own intensity units, or a
        :class:`~.stream.VolumeSource` of scans read from disk on demand (at most its
        ``max_in_memory`` held at once; its ``holdout_every`` and ``seed`` apply).
    config : str or ModelConfig
        Named configuration (see :data:`~napari_latentseg.models.config.CONFIGS`).
    options : FitOptions, optional
        Steps, time budget, device, seed...
    modalities : sequence of str, optional
        ``"CT"``/``"MR"`` per volume from the file headers (guessed when missing).
    sources : sequence of str, optional
        File names, recorded in the model's provenance.
    stop_event : threading.Event, optional
        Set it to end the fit at the next step; the best model so far is returned.
    initial : VAEModel, optional
        Continue from this model's weights (its configuration wins over ``config``).

    Yields
    ------
    dict
        ``step``, ``total``, ``loss``, ``recon``, ``kl``, ``step_time``, ``elapsed``, and
        ``val`` / ``best_val`` on validation steps. The decoder phase's steps (see
        :mod:`~.polish`) follow the main fit's, with ``phase`` ``"decoder"``; ``total`` counts
        both. The phase opens with a dict whose ``model`` is the fitted encoder's model (a
        copy, without anomaly calibration), for callers that segment while the decoder trains.

    Notes
    -----
    Distributed data parallel: when ``torch.distributed`` is initialised with more than one
    process (``torchrun``, see :mod:`~.distributed`), the network is wrapped in
    ``DistributedDataParallel``; every rank samples its own crops (sampler seeded with
    ``seed + rank``), validation losses are averaged over ranks, and stopping decisions (time
    budget, early stopping, divergence, a stop request on any rank) are taken together so the
    ranks stay in step. Only rank 0 calibrates the anomaly threshold: save its model.
    """
    import torch

    opts = options or FitOptions()
    cfg = initial.config if initial is not None else get_config(config)
    streaming = isinstance(volumes, VolumeSource)
    if isinstance(volumes, np.ndarray):
        volumes = [volumes]
    if not len(volumes):
        raise ValueError("fit needs at least one volume")
    if not streaming:
        modalities = list(modalities) if modalities is not None else [None] * len(volumes)
    configure_threads()
    device = resolve_device(opts.device)
    world, rank = 1, 0
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        world, rank = torch.distributed.get_world_size(), torch.distributed.get_rank()
    ddp = world > 1
    if ddp and opts.adversarial:
        raise ValueError("adversarial training is not supported in distributed fits yet; "
                         "leave out --adversarial or fit in one process")
    torch.manual_seed(opts.seed)
    t_start = time.perf_counter()

    base_patch = cfg.patch_size
    if initial is None and not streaming:  # the preset's crop for these slices
        cfg = cfg.for_slices(np.shape(v) for v in volumes)  # (a continued fit keeps its own)
    decoder_plan = _decoder_plan(opts, base_patch, cfg.patch_size)
    total = opts.steps + decoder_plan  # the decoder phase's steps come last
    yield {"stage": "prepare", "step": 0, "total": total, "message": "normalising volumes"}
    n_val = 16 if cfg.spatial_dims == 2 else 4
    calibration: Iterable[PreparedVolume]
    if streaming:
        def check(i: int, info) -> None:
            if cfg.spatial_dims == 3 and (len(info.shape) < 3 or info.shape[0] < 2):
                raise ValueError(f"{info.name}: a 3D configuration needs a 3D volume, got "
                                 f"{info.shape}")
            # The scan was just read and is resident: this get() does not read it again.
            _refuse_constant(volumes.get(i).data, info.name, raw=False)

        sampler = StreamingCropSampler(volumes, cfg, seed=opts.seed + rank,
                                       rotate_every=volumes.rotate_every, n_validation=n_val)
        yield from sampler.prepare_iter(check)
        norm_dict = dict(volumes.info[0].normalization)
        scan_modalities = [info.modality for info in volumes.info]
        calibration = volumes.subset(32)
    else:
        prepared: list[PreparedVolume] = []
        for i, (vol, mod) in enumerate(zip(volumes, modalities, strict=True)):
            arr = np.asarray(vol)
            if cfg.spatial_dims == 3 and (arr.ndim < 3 or arr.shape[0] < 2):
                raise ValueError(
                    f"volume {i}: a 3D configuration needs a 3D volume, got {arr.shape}")
            prepared.append(
                prepare_volume(arr, mod, holdout_every=opts.holdout_every, seed=opts.seed))
            _refuse_constant(arr, f"volume {i}" if len(volumes) > 1 else "the image")
        norm_dict = prepared[0].normalizer.to_dict()
        sampler = CropSampler(prepared, cfg, seed=opts.seed + rank)
        scan_modalities = [p.modality for p in prepared]
        calibration = prepared
    val_batch = sampler.validation_batch(n_val)

    net = build_network(cfg) if initial is None else copy.deepcopy(initial.net)
    # channels_last is a CPU speed-up; DDP's gradient buckets want the default layout.
    channels_last = prefers_channels_last(device, cfg.spatial_dims) and not ddp
    net = net.to(device)
    if channels_last:
        net = net.to(memory_format=torch.channels_last)
    train_net = net
    if ddp:
        train_net = _ddp_wrap(net, device)
        torch.manual_seed(opts.seed + rank)  # different latent noise per rank

    def agree(*flags: bool) -> list[bool]:
        """Flags true on any rank are true on every rank (identity in one process)."""
        if not ddp:
            return list(flags)
        t = torch.tensor([float(f) for f in flags], device=device)
        torch.distributed.all_reduce(t, op=torch.distributed.ReduceOp.MAX)
        return [bool(v) for v in t.tolist()]

    optim = torch.optim.Adam(net.parameters(), lr=opts.lr)
    warmup = min(50, max(1, opts.steps // 10))

    def schedule_clock() -> float:
        """Seconds since the start; under DDP the slowest rank's, so every rank's optimiser
        uses the same learning rate when a time budget drives the decay."""
        elapsed = time.perf_counter() - t_start
        if ddp and opts.main_minutes is not None and opts.lr_schedule == "cosine":
            t = torch.tensor([elapsed], dtype=torch.float64, device=device)
            torch.distributed.all_reduce(t, op=torch.distributed.ReduceOp.MAX)
            elapsed = float(t)
        return elapsed

    sched = torch.optim.lr_scheduler.LambdaLR(
        optim, lambda s: lr_factor(s, warmup, opts, schedule_clock()))
    use_amp = opts.amp and device.type == "cuda"
    # Loss scaling only for float16 (bfloat16 has float32's range); the discriminator gets its
    # own scaler, as its backward pass would otherwise run unscaled in float16.
    fp16 = use_amp and amp_dtype(device) == torch.float16
    scaler = torch.amp.GradScaler("cuda", enabled=fp16)
    d_scaler = torch.amp.GradScaler("cuda", enabled=fp16)

    disc = d_optim = adv_loss = None
    if opts.adversarial:
        from monai.losses import PatchAdversarialLoss
        from monai.networks.nets import PatchDiscriminator

        disc = PatchDiscriminator(
            spatial_dims=cfg.spatial_dims, num_layers_d=3, channels=32, in_channels=1,
            out_channels=1,
        ).to(device)
        d_optim = torch.optim.Adam(disc.parameters(), lr=opts.lr)
        adv_loss = PatchAdversarialLoss(criterion="least_squares")

    def centre_channel(x):
        c = cfg.context_slices
        return x[:, c : c + 1] if c else x

    def validate() -> float:
        net.eval()
        with torch.inference_mode(), autocast(device, use_amp):
            x = _to_tensor(val_batch, device, channels_last)
            rec = net.reconstruct(x).float()
            val = float((rec - centre_channel(x)).abs().mean())
        if ddp:  # the mean over ranks: every rank takes the same early-stopping decisions
            t = torch.tensor([val], dtype=torch.float64, device=device)
            torch.distributed.all_reduce(t)
            val = float(t) / world
        net.train()
        return val

    best_val = float("inf")
    best_state = None
    bad_evals = 0
    history: list[dict] = []
    reason = "steps"
    step = 0
    net.train()
    for step in range(1, opts.steps + 1):
        (stop_now,) = agree(stop_event is not None and stop_event.is_set())
        if stop_now:
            reason = "stopped"
            step -= 1
            break
        t0 = time.perf_counter()
        x = _to_tensor(sampler.sample(), device, channels_last)
        target = centre_channel(x)
        with autocast(device, use_amp):
            rec, z_mu, z_sigma = train_net(x)
            recon_loss = reconstruction_loss(rec.float() - target, opts.recon_loss)
            kl = _kl(z_mu.float(), z_sigma.float())
            loss = recon_loss + opts.kl_weight * kl
            g_adv = None
            if disc is not None and step >= opts.adversarial_start:
                g_adv = adv_loss(
                    disc(rec.float())[-1], target_is_real=True, for_discriminator=False
                )
                loss = loss + opts.adversarial_weight * g_adv
        optim.zero_grad(set_to_none=True)
        scaler.scale(loss).backward()
        scaler.step(optim)
        scaler.update()
        sched.step()
        d_loss_val = None
        if disc is not None and step >= opts.adversarial_start:
            with autocast(device, use_amp):
                fake = disc(rec.detach().float())[-1]
                real = disc(target)[-1]
                d_loss = 0.5 * (
                    adv_loss(fake, target_is_real=False, for_discriminator=True)
                    + adv_loss(real, target_is_real=True, for_discriminator=True)
                )
            d_optim.zero_grad(set_to_none=True)
            d_scaler.scale(d_loss).backward()
            d_scaler.step(d_optim)
            d_scaler.update()
            d_loss_val = float(d_loss.detach())
        # One device-to-host copy for the three losses (each float() is a GPU sync).
        loss_v, recon_v, kl_v = torch.stack(
            [loss.detach().float(), recon_loss.detach().float(), kl.detach().float()]).tolist()
        (diverged,) = agree(not math.isfinite(loss_v))
        if diverged:
            reason = "diverged"
            break
        metrics = {
            "stage": "fit",
            "step": step,
            "total": total,
            "loss": loss_v,
            "recon": recon_v,
            "kl": kl_v,
            "lr": float(sched.get_last_lr()[0]),
            "step_time": time.perf_counter() - t0,
            "elapsed": time.perf_counter() - t_start,
        }
        if g_adv is not None:
            metrics["adv_g"] = float(g_adv.detach())
            metrics["adv_d"] = d_loss_val
        last = step == opts.steps
        (out_of_time,) = agree(
            opts.main_minutes is not None and metrics["elapsed"] >= 60 * opts.main_minutes)
        if step % opts.eval_every == 0 or last or out_of_time:
            val = validate()
            metrics["val"] = val
            if val < best_val - 1e-5:
                best_val, bad_evals = val, 0
                best_state = {k: v.detach().to("cpu").clone() for k, v in net.state_dict().items()}
            else:
                bad_evals += 1
            metrics["best_val"] = best_val
        history.append(metrics)
        yield metrics
        end = loop_end(out_of_time, bad_evals, opts.patience)
        if end:
            reason = end
            break

    if best_state is None or (step > 0 and history and "val" not in history[-1]):
        # Validate the last weights too, so a stop between validations keeps the better one.
        if step > 0:
            val = validate()
            if val < best_val:
                best_val = val
                best_state = {k: v.detach().to("cpu").clone() for k, v in net.state_dict().items()}
    if best_state is not None:
        net.load_state_dict(best_state)

    def make_model(net_, decoder_steps_: int, reason_: str) -> VAEModel:
        return VAEModel(
            net=net_,
            config=cfg,
            normalization=norm_dict,
            history=_thin(history),
            info={
                "fitted_on": list(sources) if sources else [],
                "steps": step,
                "decoder_steps": decoder_steps_,
                "seconds": round(time.perf_counter() - t_start, 2),
                "stop_reason": reason_,
                "best_val_l1": best_val,
                "device": str(device),
                "seed": opts.seed,
                "options": {k: v for k, v in vars(opts).items()},
                "modalities": scan_modalities,
                "parent": initial.source_path if initial is not None else None,
            },
        )

    decoder_steps = 0
    if decoder_plan and step > 0 and reason not in ("stopped", "diverged"):
        # The encoder is final: hand over a copy now, so segmentation (which reads the encoder
        # alone) need not wait for the decoder; it is not calibrated for anomalies.
        interim = copy.deepcopy(net).to(memory_format=torch.contiguous_format).eval()
        yield {"stage": "fit", "phase": "decoder", "step": step, "total": total,
               "message": "encoder ready; training the decoder",
               "model": make_model(interim, 0, "decoder phase")}
        phase = DecoderPhase(
            net, lambda: _to_tensor(sampler.sample(), device, channels_last), validate,
            centre_channel, agree, wrap=lambda m: _ddp_wrap(m, device) if ddp else m,
            autocast=lambda: autocast(device, use_amp), scaler=scaler, clock=schedule_clock)
        deadline = 60 * opts.minutes if opts.minutes is not None else None
        polish = polish_iter(phase, opts, steps=decoder_plan, first_step=step, total=total,
                             best_val=best_val, deadline_s=deadline, t_start=t_start,
                             stop_event=stop_event)
        decoder_steps, decoder_reason, best_val = yield from _record(polish, history)
        if decoder_reason == "stopped":  # the main fit is whole; the user still asked to stop
            reason = "stopped"
    net = net.to(memory_format=torch.contiguous_format).eval()

    yield {"stage": "calibrate", "step": step + decoder_steps, "total": total,
           "message": "learning the anomaly threshold"}
    model = make_model(net, decoder_steps, reason)
    if ddp:
        model.info["distributed"] = {"world_size": world,
                                     "backend": str(torch.distributed.get_backend())}
    if streaming:
        model.info["streamed"] = {"scans": len(volumes), "max_in_memory": volumes.max_in_memory,
                                  "loads": volumes.loads, "peak_resident": volumes.peak_resident}
    # Calibration needs no other rank: rank 0 does it (its model is the one saved).
    if rank == 0:
        model.anomaly = calibrate_anomaly(model, calibration, opts.anomaly_percentile)
    elapsed = time.perf_counter() - t_start
    model.info["seconds"] = round(elapsed, 2)
    return FitResult(model, reason, step, elapsed, best_val, history, decoder_steps)


def calibrate_anomaly(
    model: VAEModel, prepared: Iterable[PreparedVolume], percentile: float = 99.5,
    max_slices: int = 48,
) -> dict:
    """Anomaly threshold: a high percentile of the smoothed error on the fit data's foreground."""
    from .infer import reconstruct_normalised, smooth_error

    errs = []
    for v in prepared:
        n = v.data.shape[0]
        idx = np.unique(np.linspace(0, n - 1, min(n, max_slices)).round().astype(int))
        if model.config.spatial_dims == 3:
            idx = np.arange(n)  # 3D patches need the whole stack
        sub = v.data[idx]
        if model.config.context_slices:  # neighbours must come from the whole stack
            rec = reconstruct_normalised(model, v.data)[idx]
        else:
            rec = reconstruct_normalised(model, sub)
        err = smooth_error(np.abs(sub - rec), model.config)
        fg = v.mask[idx]
        if fg.any():
            errs.append(err[fg])
    vals = np.concatenate(errs) if errs else np.array([1.0])
    return {
        "threshold": float(np.percentile(vals, percentile)),
        "percentile": float(percentile),
        "error_mean": float(vals.mean()),
        "error_std": float(vals.std()),
        "smoothing_sigma": 1.0,
        "min_size_voxels": 10,
    }


def _thin(history: list[dict], limit: int = 2000) -> list[dict]:
    """Keep at most ``limit`` entries (every validation step is kept)."""
    if len(history) <= limit:
        return history
    stride = int(np.ceil(len(history) / limit))
    return [h for i, h in enumerate(history) if i % stride == 0 or "val" in h]


def fit(
    volumes: Sequence[np.ndarray] | np.ndarray,
    config: str | ModelConfig = DEFAULT_CONFIG,
    options: FitOptions | None = None,
    *,
    progress: Callable[[dict], None] | None = None,
    stop_event: threading.Event | None = None,
    **kwargs,
) -> FitResult:
    """Blocking version of :func:`fit_iter` with an optional ``progress`` callback."""
    return drive(fit_iter(volumes, config, options, stop_event=stop_event, **kwargs), progress)
