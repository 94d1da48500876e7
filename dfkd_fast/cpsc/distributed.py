"""Multi-GPU support: ``torchrun`` environment, process group, and an all-gather that carries gradients.

Every process samples the same *global* batch (all RNGs seeded alike) and keeps its own slice, so a run on W
processes with batch B each sees exactly the batches of one process with batch W*B, and one checkpoint (the RNG
states included) resumes every process.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import Tensor


@dataclass(frozen=True)
class DistInfo:
    rank: int = 0
    world_size: int = 1
    device: torch.device = torch.device("cpu")

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1


def init_from_env(device: str | torch.device) -> DistInfo:
    """Join the process group that ``torchrun`` describes (WORLD_SIZE > 1), or a single process.

    NCCL on CUDA (one GPU per process: ``cuda:LOCAL_RANK``), gloo on CPU.
    """
    device = torch.device(device)
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return DistInfo(device=device)
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if device.type == "cuda":
        device = torch.device("cuda", local_rank)
        torch.cuda.set_device(device)
    if not dist.is_initialized():
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    return DistInfo(dist.get_rank(), dist.get_world_size(), device)


class _GatherWithGrad(torch.autograd.Function):
    """Concatenate every process's tensor; backward: each process gets the sum over processes of the gradient of
    its block (the gradient of the sum of all processes' losses)."""

    @staticmethod
    def forward(ctx, x: Tensor) -> Tensor:
        parts = [torch.empty_like(x) for _ in range(dist.get_world_size())]
        dist.all_gather(parts, x.contiguous())
        ctx.rows = x.shape[0]
        return torch.cat(parts)

    @staticmethod
    def backward(ctx, grad: Tensor) -> Tensor:
        grad = grad.contiguous()
        dist.all_reduce(grad)
        start = dist.get_rank() * ctx.rows
        return grad[start:start + ctx.rows]


def gather_with_grad(x: Tensor) -> Tensor:
    """All-gather along dim 0, differentiable (integer tensors are gathered without autograd)."""
    if not x.is_floating_point():
        parts = [torch.empty_like(x) for _ in range(dist.get_world_size())]
        dist.all_gather(parts, x.contiguous())
        return torch.cat(parts)
    return _GatherWithGrad.apply(x)


def barrier(info: DistInfo) -> None:
    if info.enabled:
        dist.barrier()
