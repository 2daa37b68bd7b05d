"""The only module that touches ``torch.distributed``.

Rank and world size are asked for at call time, never cached: a model built before the process group is
initialized must still gather once it is.
"""

from __future__ import annotations

import os
from datetime import timedelta

import torch
import torch.distributed as dist


def is_distributed() -> bool:
    return dist.is_available() and dist.is_initialized()


def rank() -> int:
    return dist.get_rank() if is_distributed() else 0


def world_size() -> int:
    return dist.get_world_size() if is_distributed() else 1


def local_rank() -> int:
    return int(os.environ.get("LOCAL_RANK", "0"))


def is_main() -> bool:
    return rank() == 0


def init_from_env(device_type: str) -> bool:
    """Initialize the process group when launched by torchrun/accelerate (``WORLD_SIZE`` > 1).

    NCCL on GPUs, gloo on CPU. Returns whether this is a multi-process run.
    """
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return False
    if not is_distributed():
        backend = "nccl" if device_type == "cuda" else "gloo"
        dist.init_process_group(backend=backend, timeout=timedelta(minutes=30))
    return True


def barrier() -> None:
    if is_distributed():
        dist.barrier()


class _GatherWithGrad(torch.autograd.Function):
    """All-gather whose backward sends each rank the summed gradient of its own slice: every rank's loss
    depends on every rank's candidates, so the gradient of rank r's embeddings is the sum over all losses."""

    @staticmethod
    def forward(ctx, tensor: torch.Tensor) -> torch.Tensor:
        ctx.rank, ctx.rows = rank(), tensor.shape[0]
        parts = [torch.empty_like(tensor) for _ in range(world_size())]
        dist.all_gather(parts, tensor.contiguous())
        return torch.cat(parts, dim=0)  # (W * B, D)

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:
        grad = grad.contiguous()
        dist.all_reduce(grad, op=dist.ReduceOp.SUM)
        return grad[ctx.rank * ctx.rows : (ctx.rank + 1) * ctx.rows]


def gather_with_grad(tensor: torch.Tensor) -> torch.Tensor:
    """(B, D) on each rank -> (W * B, D) on every rank, differentiable. Identity when not distributed.
    All ranks must pass the same B."""
    if world_size() == 1:
        return tensor
    return _GatherWithGrad.apply(tensor)


def average_gradients(params: list[torch.nn.Parameter]) -> None:
    """Average the gradients of ``params`` over ranks in one flattened all-reduce.

    Used instead of DDP's reducer: a cached (GradCache) step runs many forwards per backward, which DDP's
    hooks do not expect, and the trainable LoRA parameters are small enough that one all-reduce per step
    costs little. The result is the gradient of the mean loss over all ranks, as with DDP.
    """
    if world_size() == 1:
        return
    grads = [p.grad if p.grad is not None else torch.zeros_like(p) for p in params]
    flat = torch.cat([g.reshape(-1) for g in grads])
    dist.all_reduce(flat, op=dist.ReduceOp.SUM)
    flat /= world_size()
    offset = 0
    for p, g in zip(params, grads):
        n = g.numel()
        p.grad = flat[offset : offset + n].view_as(g).clone()
        offset += n


def all_reduce_mean(value: float, device: torch.device | str = "cpu") -> float:
    """Mean of a Python float over ranks (for logging the global loss)."""
    if world_size() == 1:
        return value
    t = torch.tensor([value], dtype=torch.float64, device=device)
    dist.all_reduce(t, op=dist.ReduceOp.SUM)
    return float(t.item()) / world_size()
