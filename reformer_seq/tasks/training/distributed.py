"""Multi-process training: rank bookkeeping and the collectives of a ``torchrun`` job.

Under ``torchrun`` (``WORLD_SIZE`` > 1) each rank trains on its own shard of the windows;
gradients are averaged across ranks with one all-reduce per optimizer step (gloo on CPU, NCCL
on GPU, one process per GPU; every collective, the small ones included, runs on tensors of the
training device, as NCCL requires). The reversible stack accumulates parameter gradients inside
its own backward, several times per parameter, which ``DistributedDataParallel``'s
once-per-parameter hooks do not allow; an explicit all-reduce of the flattened gradients is
equivalent and as cheap for models of this size. With one process every method is a no-op.
"""
from __future__ import annotations

import os

import torch


class Dist:
    """Rank bookkeeping and the collectives, on tensors of the training device (NCCL takes only
    CUDA tensors, gloo CPU ones); a no-op without torch.distributed (one process)."""

    def __init__(self, device: torch.device):
        self.world = int(os.environ.get("WORLD_SIZE", "1"))
        self.rank = int(os.environ.get("RANK", "0"))
        self.local_rank = int(os.environ.get("LOCAL_RANK", "0"))
        self.device = device
        self.started_here = False
        if self.world > 1 and not torch.distributed.is_initialized():
            if device.type == "cuda":
                torch.cuda.set_device(device)  # NCCL's barrier and collectives use the current device
            torch.distributed.init_process_group("nccl" if device.type == "cuda" else "gloo")
            self.started_here = True

    @property
    def main(self) -> bool:
        return self.rank == 0

    def tensor(self, values: list[float], dtype: torch.dtype = torch.float64) -> torch.Tensor:
        """A small tensor on the device the collectives run on."""
        return torch.tensor(values, dtype=dtype, device=self.device)

    def all_reduce_(self, t: torch.Tensor, average: bool = True, op: str = "sum") -> torch.Tensor:
        """Reduce ``t`` (on the training device) over the ranks in place: ``op`` sum, min or max;
        ``average`` divides a sum by the number of ranks."""
        if self.world > 1:
            torch.distributed.all_reduce(t, op=getattr(torch.distributed.ReduceOp, op.upper()))
            if average:
                t /= self.world
        return t

    def average_gradients(self, model: torch.nn.Module) -> None:
        if self.world == 1:
            return
        grads = [p.grad for p in model.parameters() if p.grad is not None]
        flat = torch.cat([g.reshape(-1) for g in grads])  # on the parameters' (the training) device
        self.all_reduce_(flat)
        offset = 0
        for g in grads:
            g.copy_(flat[offset:offset + g.numel()].view_as(g))
            offset += g.numel()

    def broadcast_parameters(self, model: torch.nn.Module) -> None:
        if self.world > 1:
            for p in model.parameters():
                torch.distributed.broadcast(p.data, 0)

    def gather(self, t: torch.Tensor) -> list[torch.Tensor]:
        """Every rank's ``t`` (e.g. an RNG state, a CPU tensor), through the device, back on ``t``'s device."""
        if self.world == 1:
            return [t]
        src = t.to(self.device)
        n = torch.distributed.get_world_size() if torch.distributed.is_initialized() else self.world
        out = [torch.empty_like(src) for _ in range(n)]
        torch.distributed.all_gather(out, src)
        return [o.to(t.device) for o in out]

    def agree(self, flag: bool) -> bool:
        """True on every rank if it is true on any rank (so all ranks stop together)."""
        if self.world == 1:
            return flag
        return bool(self.all_reduce_(self.tensor([1.0 if flag else 0.0]), average=False).item() > 0)

    def check_same_parameters(self, model: torch.nn.Module, tol: float = 1e-5) -> float:
        """The largest difference of any parameter from rank 0's; RuntimeError above ``tol``
        (the ranks must hold one model: gradient averaging keeps them equal)."""
        if self.world == 1:
            return 0.0
        flat = torch.cat([p.detach().reshape(-1).double() for p in model.parameters()])  # (n_params,)
        ref = flat.clone()
        torch.distributed.broadcast(ref, 0)
        drift = float(self.all_reduce_((flat - ref).abs().max().reshape(1), average=False, op="max").item())
        if drift > tol:
            raise RuntimeError(f"ranks' parameters diverged by {drift:.2e}; gradient averaging failed")
        return drift

    def close(self, finished: bool = False) -> None:
        if self.started_here:
            try:
                if finished:  # every rank arrives before any tears the group down: a rank that
                    # destroyed its gloo group while a peer still used it could end the peer with
                    # std::terminate at exit (seen once in 8 two-process runs)
                    torch.distributed.barrier()
            finally:
                torch.distributed.destroy_process_group()
