"""Multi-process fitting (several GPUs, or several CPU processes) with torchrun and DDP.

``torchrun`` starts one process per GPU and sets ``WORLD_SIZE``, ``RANK``, ``LOCAL_RANK`` and
``LOCAL_WORLD_SIZE``; ``latentseg fit`` sees them and fits with
``DistributedDataParallel``::

    torchrun --standalone --nproc_per_node=4 -m napari_latentseg.cli fit scans/*.nii.gz \\
        -o vae.pt --config gpu-2d

Each process uses GPU ``LOCAL_RANK`` with the NCCL backend (on CPU-only machines: the gloo
backend and ``cores // LOCAL_WORLD_SIZE`` threads each). What each rank does is described in
:func:`~.train.fit_iter`; only rank 0 writes the model and prints results.
"""

from __future__ import annotations

import hashlib
import os

__all__ = [
    "init_distributed",
    "launched_by_torchrun",
    "shutdown_distributed",
    "state_checksum",
    "world_info",
]


def world_info() -> tuple[int, int, int, int]:
    """``(world_size, rank, local_rank, local_world_size)`` from the torchrun environment."""
    env = os.environ

    def num(name: str, default: int) -> int:
        try:
            return int(env.get(name, default))
        except ValueError:
            return default

    world = num("WORLD_SIZE", 1)
    return world, num("RANK", 0), num("LOCAL_RANK", 0), num("LOCAL_WORLD_SIZE", world)


def launched_by_torchrun() -> bool:
    """True when this process is one of several started by torchrun."""
    return "WORLD_SIZE" in os.environ and world_info()[0] > 1


def init_distributed(device: str = "auto"):
    """Join the process group torchrun set up; returns this rank's :class:`torch.device`.

    Parameters
    ----------
    device : str
        ``auto`` or ``cuda`` (GPU ``LOCAL_RANK``, NCCL, when CUDA is available; ``auto``
        falls back to the CPU), or ``cpu`` (gloo).

    Raises
    ------
    ValueError
        CUDA asked for but not available, or MPS (not supported by torch.distributed).
    """
    import torch
    import torch.distributed as dist

    from ..runtime.device import THREADS_ENV, usable_cores

    world, rank, local_rank, local_world = world_info()
    name = (device or "auto").lower()
    if name.startswith("mps"):
        raise ValueError("distributed fits run on CUDA GPUs or CPUs, not on Apple MPS")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise ValueError("device 'cuda' was requested but no CUDA GPU is available; use "
                         "--device cpu")
    if name != "cpu" and torch.cuda.is_available():
        dev = torch.device("cuda", local_rank % torch.cuda.device_count())
        torch.cuda.set_device(dev)
        backend = "nccl"
    else:
        dev = torch.device("cpu")
        backend = "gloo"
        # Ranks on one machine share its cores instead of each claiming all of them.
        os.environ.setdefault(THREADS_ENV, str(max(1, usable_cores() // max(1, local_world))))
    if not dist.is_initialized():
        dist.init_process_group(backend=backend, world_size=world, rank=rank)
    return dev


def shutdown_distributed(finished: bool = False) -> None:
    """Leave the process group (no-op when none was joined).

    ``finished``: every rank got here normally, so they meet first: a rank that left while
    another still saved could abort in gloo's teardown ("terminate called without an active
    exception", seen once in the test suite). After an error, no meeting (it would hang)."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        if finished:
            dist.barrier()
        dist.destroy_process_group()


def state_checksum(net) -> str:
    """BLAKE2b of a network's state dict (names and bytes): equal on ranks in step."""
    h = hashlib.blake2b(digest_size=8)
    for key, value in sorted(net.state_dict().items()):
        h.update(key.encode())
        h.update(value.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()
