"""Calibration across processes (torch.distributed): the one place that shards and reduces.

Inside an initialised process group (gloo on CPU, nccl on GPU; ``torchrun`` sets one up for the
CLI), every collector that reads calibration data runs only this rank's slice of the batches
(:func:`shard`) and sums what it measured over the ranks (:func:`reduce_sum`) before anything is
decided from it: channel sums and squares, Grams per fold, gradients, the output errors of
sensitivity allocation and depth scoring. Every rank then makes the same plan as one process
would on all the batches. Decisions made from timings (width alignments, latency budgets) are
taken from rank 0 (:func:`same_on_all`). Outside a process group every function is the identity.

Slices are contiguous, not ``rank::world_size``: calibration folds alternate item by item over the
whole set, so a rank's folds differ from one process's only by one swap when the items before its
slice are odd in number (:func:`items_before`), which a strided slice would not allow.
"""
from __future__ import annotations

import atexit
import os

import numpy as np
import torch
import torch.distributed as dist

BUCKET = 1 << 25  # float64 elements summed per collective (256 MiB): Grams of large models are GiBs together


def world() -> tuple[int, int]:
    """(rank, world size); (0, 1) outside a process group."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def active() -> bool:
    return world()[1] > 1


def is_writer() -> bool:
    """Whether this process writes files: rank 0, or the only process."""
    return world()[0] == 0


def shard(n: int) -> range:
    """This rank's batches of ``n``: a contiguous slice, sizes differing by at most one.

    >>> shard(5)
    range(0, 5)
    """
    rank, size = world()
    return range(n * rank // size, n * (rank + 1) // size)


def init_from_env() -> bool:
    """Join the process group ``torchrun`` describes (WORLD_SIZE > 1 in the environment): nccl where
    a GPU is available, gloo otherwise. False where there is none to join or one is already up."""
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1 or not dist.is_available() or dist.is_initialized():
        return False
    if torch.cuda.is_available():
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")) % torch.cuda.device_count())
        dist.init_process_group("nccl")
    else:
        dist.init_process_group("gloo")
    atexit.register(dist.destroy_process_group)  # torch warns of a group left open at exit
    return True


def gather(obj) -> list:
    """Every rank's ``obj`` (small, picklable), in rank order."""
    if not active():
        return [obj]
    out = [None] * world()[1]
    dist.all_gather_object(out, obj)
    return out


def same_on_all(obj):
    """Rank 0's ``obj`` on every rank: for choices made from timings, which differ between processes."""
    if not active():
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def owner(k: int, n: int) -> int:
    """The rank whose :func:`shard` of ``n`` batches holds batch ``k``."""
    size = world()[1]
    return next(r for r in range(size) if n * r // size <= k < n * (r + 1) // size)


def share(n: int, compute, like) -> list:
    """``[compute(k) for k in range(n)]`` on every rank, each tensor computed only by the rank whose
    shard holds it and broadcast from there (the streamed prune's block outputs: each rank runs its
    slice forward, and every rank has every next input). ``like(k)``: a tensor of batch ``k``'s
    shape and dtype, where this rank receives it."""
    if not active():
        return [compute(k) for k in range(n)]
    rank = world()[0]
    device = torch.device("cuda", torch.cuda.current_device()) if dist.get_backend() == "nccl" else torch.device("cpu")
    out = []
    for k in range(n):
        src = owner(k, n)
        t = (compute(k) if src == rank else torch.empty_like(like(k))).contiguous()
        moved = t.to(device)
        dist.broadcast(moved, src=src)
        out.append(moved.to(t.device))
    return out


def items_before(counts: list[int]) -> tuple[list[int], list[int]]:
    """Per counter (one per site: items this rank saw), the items the ranks before this one saw,
    and the total over all ranks."""
    everyone = gather(list(counts))
    rank = world()[0]
    before = [sum(c[i] for c in everyone[:rank]) for i in range(len(counts))]
    total = [sum(c[i] for c in everyone) for i in range(len(counts))]
    return before, total


def reduce_sum(values: list) -> list:
    """The sum over ranks of each entry (torch tensors or numpy arrays, summed in float64 and
    returned in the entry's type). An entry may be None on the ranks that measured nothing (a
    slice with no batch, a fold with no item): it counts as zeros there, and stays None only
    where every rank has None."""
    if not active():
        return list(values)
    shapes = gather([None if v is None else tuple(v.shape) for v in values])
    shape = [next((s[i] for s in shapes if s[i] is not None), None) for i in range(len(values))]
    device = torch.device("cuda", torch.cuda.current_device()) if dist.get_backend() == "nccl" else torch.device("cpu")
    flat = [torch.zeros(int(np.prod(s)), dtype=torch.float64) if v is None else torch.as_tensor(v).double().reshape(-1)
            for v, s in zip(values, shape) if s is not None]
    summed: list[torch.Tensor] = []
    start = 0
    while start < len(flat):  # buckets of whole tensors, each one collective
        end, size = start, 0
        while end < len(flat) and (end == start or size + flat[end].numel() <= BUCKET):
            size += flat[end].numel()
            end += 1
        buf = torch.cat(flat[start:end]).to(device)
        dist.all_reduce(buf)
        summed.extend(buf.cpu().split([t.numel() for t in flat[start:end]]))
        start = end
    out, it = [], iter(summed)
    for v, s in zip(values, shape):
        if s is None:
            out.append(None)
            continue
        t = next(it).reshape(s)
        if isinstance(v, np.ndarray):
            out.append(t.numpy().astype(v.dtype, copy=False))
        elif isinstance(v, torch.Tensor):
            out.append(t.to(v.dtype))
        else:
            out.append(t)  # None here: the other ranks' type is not known; float64
    return out


def reduce_dict(named: dict) -> dict:
    """:func:`reduce_sum` of a dict of tensors whose keys may differ between ranks (a parameter
    with no gradient on one rank's batches): the union of keys."""
    if not active():
        return named
    keys = sorted(set().union(*gather(sorted(named))))
    return dict(zip(keys, reduce_sum([named.get(k) for k in keys])))
