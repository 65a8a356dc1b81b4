"""PyTorch DDP plumbing: the same code runs alone or under ``torchrun --nproc_per_node N``.

Under ``torchrun`` (or ``accelerate launch``) the environment holds ``RANK``, ``LOCAL_RANK`` and
``WORLD_SIZE``; the process group is started with NCCL on CUDA and gloo on the CPU. Only rank 0
writes files and shows progress; the others wait at barriers. The CNN training and the VLM
fine-tuning share this one context.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

__all__ = ["DistContext", "init_distributed", "resolve_device"]


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


@dataclass(frozen=True)
class DistContext:
    """Where this process stands in a (possibly one-process) training job.

    Attributes:
        rank, local_rank, world_size: as ``torchrun`` sets them (0, 0, 1 when alone).
        device: this process's ``torch.device``.
        owns_group: :func:`init_distributed` started the process group (so :meth:`close`
            destroys it); False when alone or when the caller had started it.
    """

    rank: int = 0
    local_rank: int = 0
    world_size: int = 1
    device: Any = None
    owns_group: bool = False

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

    def sum(self, *values: float) -> list[float]:
        """Each of ``values`` summed over ranks (float64 all-reduce on this rank's device)."""
        if not self.enabled:
            return [float(v) for v in values]
        import torch
        import torch.distributed as dist

        tensor = torch.tensor([float(v) for v in values], dtype=torch.float64, device=self.device)
        dist.all_reduce(tensor)
        return tensor.cpu().tolist()

    def broadcast(self, obj):
        """Rank 0's ``obj`` on every rank."""
        if not self.enabled:
            return obj
        import torch.distributed as dist

        box = [obj]
        dist.broadcast_object_list(box, src=0)
        return box[0]

    def close(self) -> None:
        """Destroy the process group if :func:`init_distributed` started it."""
        if self.owns_group:
            import torch.distributed as dist

            dist.destroy_process_group()


def init_distributed(device: str | None = "auto") -> DistContext:
    """Start (or join) the process group when run by ``torchrun``; pick this rank's device.

    Under ``torchrun`` each process uses the GPU of its ``LOCAL_RANK`` (choose the GPUs with
    ``CUDA_VISIBLE_DEVICES``), so ``cuda:N`` is refused there.

    Returns:
        The context; ``world_size`` 1 and no process group when not under ``torchrun``.

    Raises:
        ValueError: when CUDA is requested but missing, or ``cuda:N`` under ``torchrun``.
    """
    import torch

    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local = int(os.environ.get("LOCAL_RANK", "0"))
    dev = resolve_device(device)
    if world > 1 and dev.type == "cuda" and dev.index is not None:
        raise ValueError(
            f"--device {device}: under torchrun each process uses the GPU of its LOCAL_RANK; "
            "use --device cuda (and CUDA_VISIBLE_DEVICES to choose the GPUs)"
        )
    if dev.type == "cuda":
        index = local if world > 1 else dev.index
        dev = torch.device("cuda", torch.cuda.current_device() if index is None else index)
        torch.cuda.set_device(dev)
    if world <= 1:
        return DistContext(0, 0, 1, dev)
    import torch.distributed as dist

    owns = False
    if not dist.is_initialized():
        dist.init_process_group(backend="nccl" if dev.type == "cuda" else "gloo")
        owns = True
    return DistContext(rank, local, world, dev, owns)
