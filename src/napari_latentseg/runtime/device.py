"""Device selection and mixed precision."""

from __future__ import annotations

import contextlib
import os

__all__ = [
    "THREADS_ENV",
    "resolve_device",
    "network_device",
    "autocast",
    "amp_dtype",
    "configure_threads",
    "thread_count",
    "available_devices",
    "warm_up",
    "usable_cores",
    "prefers_channels_last",
]


def available_devices() -> list[str]:
    """Devices usable here, best first (``"cuda"``, ``"mps"``, ``"cpu"``)."""
    import torch

    out = []
    if torch.cuda.is_available():
        out.append("cuda")
    mps = getattr(torch.backends, "mps", None)
    if mps is not None and mps.is_available():
        out.append("mps")
    out.append("cpu")
    return out


def warm_up() -> None:
    """Import what torch's first optimiser imports (``torch._dynamo``: ~3 s of Python on this
    project's 2-core CPU, holding the interpreter lock), so that a fit started later in a
    background thread does not stall the GUI thread and the live slices for those seconds;
    and MONAI's networks, which the first Segment round builds even without a model (its
    stand-in model's network: ~4.6 s of imports, most of brain1's first round in a fresh
    dock, session 65). The dock calls it in its device-probe thread, at start-up."""
    import torch

    torch.optim.AdamW([torch.zeros(1, requires_grad=True)])
    import monai.networks.nets  # noqa: F401 (the import is the point)


def resolve_device(device: str | None = "auto"):
    """Return a :class:`torch.device`: ``auto`` picks CUDA, then Apple MPS, then CPU.

    Raises
    ------
    ValueError
        If a device is forced that this machine does not have.
    """
    import torch

    name = (device or "auto").lower()
    if name == "auto":
        return torch.device(available_devices()[0])
    base = name.split(":")[0]
    if base == "cuda" and not torch.cuda.is_available():
        raise ValueError(
            "device 'cuda' was requested but no CUDA GPU is available; use --device cpu"
        )
    if base == "mps" and "mps" not in available_devices():
        raise ValueError("device 'mps' was requested but Apple MPS is not available")
    if base not in ("cpu", "cuda", "mps"):
        raise ValueError(f"unknown device {device!r}; use auto, cpu, cuda or mps")
    return torch.device(name)


#: Environment variable capping the torch threads of this process (set by ``latentseg batch``
#: for each worker and by distributed fits for each rank, so processes sharing a machine do not
#: each claim every core).
THREADS_ENV = "LATENTSEG_NUM_THREADS"


def network_device(model, device: str | None) -> str:
    """Where a network of a model-free score (the anomaly denoiser) runs: ``model``'s device
    where there is a model, else ``device`` (``auto``: a GPU when there is one), else the
    CPU."""
    if model is not None:
        return str(model.device)
    return "cpu" if device is None else str(resolve_device(device))


def usable_cores() -> int:
    """CPU cores this process may run on (its affinity mask where the OS has one)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # macOS, Windows
        return os.cpu_count() or 1


def thread_count() -> int:
    """Threads the core may use: ``$LATENTSEG_NUM_THREADS``, else every usable core."""
    n = usable_cores()
    try:
        n = max(1, int(os.environ.get(THREADS_ENV, "") or n))
    except ValueError:
        pass  # a malformed value is ignored: all cores, as without it
    return n


def configure_threads() -> int:
    """Use every usable CPU core for intra-op parallelism, or ``$LATENTSEG_NUM_THREADS``."""
    import torch

    n = thread_count()
    if torch.get_num_threads() != n:
        torch.set_num_threads(n)
    return n


def prefers_channels_last(device, spatial_dims: int) -> bool:
    """2D convolutions in channels-last layout: 1.3-1.7x faster on CPU (oneDNN), measured on
    the default model; left to the default layout elsewhere."""
    return device.type == "cpu" and spatial_dims == 2


def amp_dtype(device):
    """Mixed-precision type on ``device``: bfloat16 where the GPU has it natively, else float16.

    ``None`` off CUDA. ``torch.cuda.is_bf16_supported()`` alone is not enough: by default it
    also says yes where bfloat16 is only emulated (pre-Ampere GPUs such as V100/T4, where it is
    slow) and it asks about the current GPU rather than ``device``.
    """
    import torch

    if device.type != "cuda":
        return None
    if torch.version.hip:  # ROCm: its own answer (MI200 and later have bfloat16)
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    major, _ = torch.cuda.get_device_capability(device)
    return torch.bfloat16 if major >= 8 else torch.float16


def autocast(device, enabled: bool = True):
    """bf16/fp16 autocast on CUDA (see :func:`amp_dtype`); a no-op context elsewhere."""
    import torch

    if not enabled or device.type != "cuda":
        return contextlib.nullcontext()
    return torch.autocast("cuda", dtype=amp_dtype(device))
