"""Data-parallel training: what a worker knows about its group, and fairseq-style gradient summation.

fairseq (legacy_ddp) sums gradients and masked-frame counts over workers and divides once, so N workers with
batches of B equal one worker with a batch of N x B (up to the data each sees). Summing flattened gradients
explicitly (instead of wrapping the model in DDP) keeps layerdrop's unused parameters and the EMA teacher simple.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.distributed as torch_dist
from torch import nn


@dataclass(frozen=True)
class DistContext:
    """Rank, world size and device of this worker; the defaults describe a single process."""

    rank: int = 0
    world_size: int = 1
    device: torch.device | None = None

    @classmethod
    def from_torch(cls, device: torch.device | None = None) -> DistContext:
        """The context of an initialised torch.distributed process group (as Ray Train sets up)."""
        if not (torch_dist.is_available() and torch_dist.is_initialized()):
            return cls(device=device)
        return cls(torch_dist.get_rank(), torch_dist.get_world_size(), device)

    def barrier(self) -> None:
        if self.world_size > 1:
            torch_dist.barrier()

    def gather_states(self, states: dict[str, torch.Tensor]) -> list[dict[str, torch.Tensor]]:
        """Every rank's `states` (CPU tensors, e.g. RNG states), in rank order, on every rank."""
        local = {k: v.cpu() for k, v in states.items()}
        if self.world_size == 1:
            return [local]
        out: list[dict[str, torch.Tensor]] = [{} for _ in range(self.world_size)]
        torch_dist.all_gather_object(out, local)
        return out

    def all_reduce_grads(self, params: list[nn.Parameter], scalars: torch.Tensor) -> torch.Tensor:
        """Sum every parameter's gradient (missing ones count as zero) and `scalars` (a 1-d tensor on the
        parameters' device) over all ranks, in place; returns the summed scalars (on the device: nothing is read)."""
        grads = []
        for p in params:
            if p.grad is None:
                p.grad = torch.zeros_like(p)
            grads.append(p.grad)
        flat = torch.cat([g.reshape(-1) for g in grads] + [scalars.to(grads[0].dtype)])
        torch_dist.all_reduce(flat, op=torch_dist.ReduceOp.SUM)
        offset = 0
        for p, g in zip(params, grads, strict=True):
            n = p.numel()
            g.copy_(flat[offset:offset + n].view_as(p))
            offset += n
        return flat[offset:]
