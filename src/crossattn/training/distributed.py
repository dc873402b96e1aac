"""The process group of a data-parallel run under ``torchrun`` (one process without it).

Each step's batch (the same batch that a single process would use) is split by rows over the N
processes; each process normalises its loss by the token count of the whole batch and the
gradients are summed with ``all_reduce``, so the update equals the single-process one up to
floating-point summation order.
"""

from __future__ import annotations

import os

import torch


class Dist:
    """The process group under torchrun (world 1 without it)."""

    def __init__(self) -> None:
        self.world = int(os.environ.get("WORLD_SIZE", "1"))
        self.rank = int(os.environ.get("RANK", "0"))
        self.device = torch.device("cpu")
        if self.world > 1:
            import torch.distributed as dist

            if torch.cuda.is_available():
                local = int(os.environ.get("LOCAL_RANK", "0"))
                torch.cuda.set_device(local)
                self.device = torch.device("cuda", local)
                backend = "nccl"
            else:
                backend = "gloo"
            if not dist.is_initialized():
                dist.init_process_group(backend)
        elif torch.cuda.is_available():
            self.device = torch.device("cuda")

    @property
    def main(self) -> bool:
        return self.rank == 0

    def sum_grads(self, params: list[torch.nn.Parameter]) -> None:
        if self.world == 1:
            return
        import torch.distributed as dist

        grads = [p.grad for p in params if p.grad is not None]
        flat = torch.cat([g.reshape(-1) for g in grads])
        dist.all_reduce(flat)
        offset = 0
        for g in grads:
            g.copy_(flat[offset : offset + g.numel()].view_as(g))
            offset += g.numel()

    def any(self, flag: bool) -> bool:
        """True on every process when it is True on rank 0 (rank 0 decides when to stop)."""
        if self.world == 1:
            return flag
        import torch.distributed as dist

        t = torch.tensor([1.0 if flag else 0.0], device=self.device)
        dist.broadcast(t, 0)
        return bool(t.item() > 0)

    def barrier(self) -> None:
        if self.world > 1:
            import torch.distributed as dist

            dist.barrier()

    def close(self) -> None:
        if self.world > 1:
            import torch.distributed as dist

            if dist.is_initialized():
                dist.destroy_process_group()


def main_process() -> bool:
    """Whether this process writes the model directory: rank 0 under torchrun, or the only one."""
    return int(os.environ.get("RANK", "0")) == 0
