"""Process groups for ``torchrun``: set-up from its environment, rank helpers, reductions, samplers.

A plain ``python``/``dec`` run is a world of one and every helper here is a
cheap no-op, so library code calls them unconditionally. Under
``torchrun --nproc_per_node N`` the group uses NCCL on CUDA and gloo on CPU.
"""

from __future__ import annotations

import contextlib
import gc
import os
from dataclasses import dataclass
from datetime import timedelta
from typing import Any, Iterator, Optional, Sequence

import torch
import torch.distributed as dist
from torch.utils.data import DistributedSampler, Sampler, SequentialSampler

from dec_cli.core.errors import UsageError


@dataclass(frozen=True)
class DistInfo:
    """Where this process sits: rank, world size, local rank and its device."""

    rank: int = 0
    world: int = 1
    local_rank: int = 0
    device: torch.device = torch.device("cpu")

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world > 1


def env_world_size() -> int:
    """``WORLD_SIZE`` as set by torchrun (1 when absent)."""
    return int(os.environ.get("WORLD_SIZE", "1"))


def resolve_device(device: Optional[str] = None, local_rank: int = 0) -> torch.device:
    """``auto``/None -> CUDA when available, else CPU; a bare ``cuda`` becomes this rank's GPU."""
    if device in (None, "", "auto"):
        device = "cuda" if torch.cuda.is_available() else "cpu"
    dev = torch.device(device)
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise UsageError(f"device {device} requested but CUDA is not available", "use --device cpu")
        if dev.index is None:
            dev = torch.device("cuda", local_rank % max(torch.cuda.device_count(), 1))
    return dev


def init_distributed(device: Optional[str] = None, *, timeout_s: float = 1800.0) -> DistInfo:
    """Join the torchrun process group if there is one; returns this process's :class:`DistInfo`.

    Safe to call twice and in single-process runs (no group is created then).
    """
    world = env_world_size()
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    dev = resolve_device(device, local_rank)
    if world <= 1:
        return DistInfo(0, 1, 0, dev)
    if dev.type == "cuda":
        torch.cuda.set_device(dev)
    if not dist.is_initialized():
        backend = "nccl" if dev.type == "cuda" else "gloo"
        kwargs: dict[str, Any] = {"backend": backend, "timeout": timedelta(seconds=timeout_s)}
        if backend == "nccl":
            kwargs["device_id"] = dev  # binds the communicator to this rank's GPU (torch >= 2.3)
        try:
            dist.init_process_group(**kwargs)
        except TypeError:
            kwargs.pop("device_id", None)
            dist.init_process_group(**kwargs)
    return DistInfo(dist.get_rank(), dist.get_world_size(), local_rank, dev)


def cleanup() -> None:
    """Leave the process group (if any)."""
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


@contextlib.contextmanager
def process_group(device: Optional[str] = None) -> Iterator[DistInfo]:
    """`init_distributed` for a ``with`` block that leaves the group on the way out.

    Leaving must really tear gloo down while Python is alive. A group still
    referenced at exit (a DistributedDataParallel wrapper holds it) keeps its
    worker threads running into interpreter finalization, where one that frees
    a tensor aborts the process ("terminate called without an active
    exception"; seen in about one run in ten). So after a clean finish every
    rank meets at a barrier, unreachable wrappers are collected, and only then
    the group is destroyed. Callers drop their own wrappers inside the block.
    After an error there is no barrier, so a lone failing rank cannot hang the
    others' exit.
    """
    info = init_distributed(device)
    try:
        yield info
    except BaseException:
        cleanup()
        raise
    if is_dist():
        barrier()
        gc.collect()
    cleanup()


def is_dist() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def rank() -> int:
    return dist.get_rank() if is_dist() else 0


def world_size() -> int:
    return dist.get_world_size() if is_dist() else 1


def barrier() -> None:
    if is_dist():
        dist.barrier()


def _reduce_device() -> torch.device:
    """NCCL reduces CUDA tensors only; gloo CPU tensors."""
    if is_dist() and dist.get_backend() == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def all_reduce_sum(tensor: torch.Tensor) -> torch.Tensor:
    """Sum a tensor over ranks (a copy; float64 sums stay float64)."""
    if not is_dist():
        return tensor.clone()
    work = tensor.detach().to(_reduce_device()).clone()
    dist.all_reduce(work, op=dist.ReduceOp.SUM)
    return work.to(tensor.device)


def all_reduce_sums(sums: dict[str, float]) -> dict[str, float]:
    """Sum a dict of scalars over ranks in float64 (keys in a fixed order on every rank)."""
    if not is_dist():
        return dict(sums)
    keys = sorted(sums)
    values = torch.tensor([float(sums[k]) for k in keys], dtype=torch.float64)
    reduced = all_reduce_sum(values)
    return {k: float(v) for k, v in zip(keys, reduced.tolist())}


def all_gather_objects(obj: Any) -> list[Any]:
    """Every rank's ``obj`` (picklable), in rank order, on every rank."""
    if not is_dist():
        return [obj]
    out: list[Any] = [None] * world_size()
    dist.all_gather_object(out, obj)
    return out


def broadcast_object(obj: Any, src: int = 0) -> Any:
    """Rank ``src``'s ``obj`` on every rank."""
    if not is_dist():
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=src)
    return box[0]


# --------------------------------------------------------------------------- samplers


def shard_indices(n: int, rank_: Optional[int] = None, world: Optional[int] = None) -> list[int]:
    """This rank's share of ``range(n)``: every ``world``-th index, no padding duplicates.

    Unlike ``DistributedSampler`` (which repeats items to even out shards) each
    item is seen exactly once over all ranks, so summed metrics are exact.
    """
    r = rank() if rank_ is None else rank_
    w = world_size() if world is None else world
    return list(range(r, n, w))


class ShardSampler(Sampler[int]):
    """An evaluation sampler over this rank's :func:`shard_indices` (in order, unpadded)."""

    def __init__(self, n: int, rank_: Optional[int] = None, world: Optional[int] = None):
        self.indices = shard_indices(n, rank_, world)

    def __iter__(self) -> Iterator[int]:
        return iter(self.indices)

    def __len__(self) -> int:
        return len(self.indices)


def eval_sampler(dataset: Sequence[Any]) -> Sampler[int]:
    """Sampler for evaluation: the whole dataset in a single process, an unpadded shard under torchrun."""
    return ShardSampler(len(dataset))


def train_sampler(dataset: Sequence[Any], *, shuffle: bool = True, seed: int = 0,
                  drop_last: bool = False) -> Sampler[int]:
    """Sampler for training: ``DistributedSampler`` under torchrun, a seeded random one otherwise.

    Call ``sampler.set_epoch(epoch)`` each epoch when it has that method.
    Padding duplicates are harmless for training (they only reweight a few items).
    """
    if is_dist():
        return DistributedSampler(dataset, num_replicas=world_size(), rank=rank(), shuffle=shuffle,
                                  seed=seed, drop_last=drop_last)
    if not shuffle:
        return SequentialSampler(dataset)
    return _EpochRandomSampler(dataset, seed)


class _EpochRandomSampler(Sampler[int]):
    """A random permutation that depends only on (seed, epoch), like ``DistributedSampler``."""

    def __init__(self, dataset: Sequence[Any], seed: int):
        self.n = len(dataset)
        self.seed = seed
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __iter__(self) -> Iterator[int]:
        g = torch.Generator().manual_seed(self.seed + self.epoch)
        return iter(torch.randperm(self.n, generator=g).tolist())

    def __len__(self) -> int:
        return self.n
