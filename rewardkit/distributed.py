"""The two collectives rewardkit calls itself, for modules ``accelerate`` does not wrap.

A proxy RM is trained through methods other than ``forward`` (``score``, ``encode_latents``),
which DDP's gradient hooks do not see, so it is left unwrapped and these keep it identical on
every process: :func:`broadcast_from_main` once after it is built, :func:`average_gradients` after
every backward. Both are no-ops in a single process.
"""

from __future__ import annotations

from typing import Iterable

import torch


def _world() -> int:
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()):
        return 1
    return dist.get_world_size()


def broadcast_from_main(module: torch.nn.Module) -> None:
    """Copy rank 0's parameters and buffers to every rank (an unseeded init differs per rank)."""
    import torch.distributed as dist

    if _world() > 1:
        for tensor in module.state_dict().values():
            dist.broadcast(tensor, src=0)


def broadcast_flag(flag: bool, device: torch.device | str = "cpu") -> bool:
    """Rank 0's ``flag`` on every rank (a decision only the main process can take)."""
    import torch.distributed as dist

    if _world() == 1:
        return flag
    value = torch.tensor([int(flag)], device=device)
    dist.broadcast(value, src=0)
    return bool(value.item())


def average_gradients(params: Iterable[torch.nn.Parameter]) -> None:
    """Average the gradients of ``params`` over all ranks, in one all-reduce per dtype and
    device (a missing gradient counts as zeros)."""
    import torch.distributed as dist
    from torch._utils import _flatten_dense_tensors, _unflatten_dense_tensors

    world = _world()
    if world == 1:
        return
    groups: dict[tuple, list[torch.Tensor]] = {}
    for p in params:
        if p.grad is None:
            p.grad = torch.zeros_like(p)
        groups.setdefault((p.grad.dtype, p.grad.device), []).append(p.grad)
    for grads in groups.values():
        flat = _flatten_dense_tensors(grads)
        dist.all_reduce(flat)
        flat.div_(world)
        for grad, reduced in zip(grads, _unflatten_dense_tensors(flat, grads)):
            grad.copy_(reduced)


__all__ = ["average_gradients", "broadcast_flag", "broadcast_from_main"]
