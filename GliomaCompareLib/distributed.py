"""PyTorch DDP plumbing: the same code runs alone or under ``torchrun --nproc_per_node N``.

Under ``torchrun`` the environment holds ``RANK``, ``LOCAL_RANK`` and ``WORLD_SIZE``; the
process group is started with NCCL on CUDA and gloo on the CPU. Only rank 0 writes files and
shows progress; the others wait at barriers.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

__all__ = ["DistContext", "init_distributed", "resolve_device"]


@dataclass(frozen=True)
class DistContext:
    """Where this process stands in a (possibly one-process) training job."""

    rank: int = 0
    local_rank: int = 0
    world_size: int = 1
    device: Any = None

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def barrier(self) -> None:
        if self.enabled:
            import torch.distributed as dist

            dist.barrier()

    def gather(self, obj) -> list:
        """Every rank's ``obj``, in rank order (``[obj]`` when alone)."""
        if not self.enabled:
            return [obj]
        import torch.distributed as dist

        out: list = [None] * self.world_size
        dist.all_gather_object(out, obj)
        return out

    def mean(self, value: float) -> float:
        """Mean of ``value`` over ranks."""
        if not self.enabled:
            return float(value)
        return float(sum(self.gather(float(value))) / self.world_size)


def init_distributed(device: str | None = "auto") -> DistContext:
    """Start (or join) the process group when run by ``torchrun``; pick this rank's device.

    Returns:
        The context; ``world_size`` 1 and no process group when not under ``torchrun``.

    Raises:
        ValueError: when CUDA is requested but missing.
    """
    import torch

    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local = int(os.environ.get("LOCAL_RANK", "0"))
    dev = resolve_device(device)
    if world <= 1:
        return DistContext(0, 0, 1, dev)
    import torch.distributed as dist

    if dev.type == "cuda":
        dev = torch.device("cuda", local)
        torch.cuda.set_device(dev)
    if not dist.is_initialized():
        dist.init_process_group(backend="nccl" if dev.type == "cuda" else "gloo")
    return DistContext(rank, local, world, dev)


def resolve_device(device: str | None = "auto"):
    """``"auto"`` -> CUDA when available, else CPU; ``"cuda"`` / ``"cuda:N"`` / ``"cpu"``.

    Raises:
        ValueError: for CUDA requested on a machine without it, or an unknown name.
    """
    import torch

    name = (device or "auto").lower()
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda"):
        if not torch.cuda.is_available():
            raise ValueError(
                f"--device {device}: CUDA is not available on this machine; use cpu or auto"
            )
        return torch.device(name)
    if name == "cpu":
        return torch.device("cpu")
    raise ValueError(f"--device {device!r}: use auto, cuda, cuda:N or cpu")
