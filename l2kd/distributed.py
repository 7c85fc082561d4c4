"""Multi-process training under ``torchrun`` (one process per GPU, or gloo processes on CPU).

Data parallelism: every rank runs the same step on its shard of each global batch (the
original's batch split across ``--n_gpus``). Each mean loss is scaled by the rank's share of
the global denominator (:func:`loss_shares`, one all-reduce of the counts per step), so that
N ranks compute the loss and gradient of the whole batch, as one process would, up to the
order of floating-point sums. Then the gradients are averaged across ranks
in one flat all-reduce before unscaling/clipping, so every rank applies the same update
(DistributedDataParallel's semantics, done explicitly because the loss calls the model's
body and head separately, which DDP's forward hooks would not see). Rank 0 alone generates
pseudo-samples and Seq-KD data (then broadcasts them), writes files and evaluates, so the
results do not depend on the number of ranks given the seed. ``--n_gpus N`` of the original
becomes ``torchrun --nproc_per_node N -m l2kd.train ...``.
"""
from __future__ import annotations

import os
from typing import Any, List, Sequence

import torch
import torch.distributed as dist


def init_from_env() -> None:
    """Join the process group when launched by torchrun (``WORLD_SIZE`` > 1)."""
    if int(os.environ.get("WORLD_SIZE", "1")) > 1 and not dist.is_initialized():
        backend = "nccl" if torch.cuda.is_available() else "gloo"
        if backend == "nccl":
            torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
        dist.init_process_group(backend=backend)


def world_size() -> int:
    return dist.get_world_size() if dist.is_initialized() else 1


def rank() -> int:
    return dist.get_rank() if dist.is_initialized() else 0


def is_main() -> bool:
    return rank() == 0


def local_device(default: torch.device) -> torch.device:
    """``cuda:LOCAL_RANK`` under torchrun on GPUs, else ``default``."""
    if dist.is_initialized() and default.type == "cuda":
        return torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
    return default


def shard(indices: Sequence[int]) -> List[int]:
    """This rank's part of a global batch (a batch smaller than the world is repeated so that
    every rank has at least one example and contributes a gradient)."""
    n = world_size()
    if n == 1:
        return list(indices)
    idx = list(indices)
    while len(idx) < n:
        idx += list(indices)
    return idx[rank()::n]


def average_gradients(params: Sequence[torch.nn.Parameter]) -> None:
    """Average ``.grad`` over ranks with one flat all-reduce (missing grads count as zero)."""
    if world_size() == 1:
        return
    grads = [p.grad if p.grad is not None else torch.zeros_like(p) for p in params]
    flat = torch.cat([g.reshape(-1).float() for g in grads])
    dist.all_reduce(flat)
    flat /= world_size()
    offset = 0
    for p, g in zip(params, grads):
        n = g.numel()
        p.grad = flat[offset: offset + n].view_as(g).to(g.dtype)
        offset += n


def loss_shares(local: torch.Tensor) -> torch.Tensor:
    """``world * local / global`` for a vector of per-rank loss denominators (1 where the global
    count is 0, and exactly 1 in one process).

    A rank that multiplies each of its mean losses by its share and then averages gradients
    over ranks computes ``sum_r numerator_r / sum_r denominator_r``: the mean over the global
    batch, as one process would, instead of the mean of the ranks' means.
    """
    if world_size() == 1:
        return torch.ones_like(local)
    total = local.clone()
    dist.all_reduce(total)
    return torch.where(total > 0, world_size() * local / total.clamp_min(1e-300), torch.ones_like(local))


def mean_over_ranks(value: torch.Tensor) -> torch.Tensor:
    """The mean of a scalar over ranks (itself in one process); NaN anywhere gives NaN everywhere."""
    if world_size() == 1:
        return value
    t = value.detach().reshape(1).double().clone()
    dist.all_reduce(t)
    return (t / world_size()).reshape(())


def any_rank(flag: bool) -> bool:
    """True when ``flag`` is true on any rank (all ranks must call this)."""
    if world_size() == 1:
        return flag
    t = torch.tensor([1.0 if flag else 0.0])
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return bool(t.item())


def broadcast(obj: Any) -> Any:
    """Rank 0's ``obj`` on every rank."""
    if world_size() == 1:
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def barrier() -> None:
    if world_size() > 1:
        dist.barrier()
