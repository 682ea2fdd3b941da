"""The torchrun process group, shared by every backend's training and by `mad sample`.

One process per GPU (or several gloo processes on a CPU for tests), started by
`torchrun --nproc_per_node N -m mad_cli …`. Outside torchrun everything here degrades to a
single process, so the code paths are the same either way.

Gradients are all-reduced by hand (as NVIDIA's StyleGAN3 code does) rather than with
DistributedDataParallel: StyleGAN2's R1 and path-length terms need double backward,
which DDP's hooks do not support well, and one all-reduce of a flat tensor is simple and
identical for every backend.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import TypeVar

import torch

from mad_cli.devices import resolve_device
from mad_cli.errors import MadError

T = TypeVar("T")


@dataclass
class Dist:
    """This process's place in a (possibly single-process) data-parallel run."""

    rank: int = 0
    world: int = 1
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))

    @property
    def active(self) -> bool:
        return self.world > 1

    @property
    def writer(self) -> bool:
        """Only rank 0 writes run files, logs and results."""
        return self.rank == 0

    def agree(self, ok: bool, message: str) -> None:
        """Every process learns whether all got through a step, so none waits forever.

        A process that failed raises its own error; the others raise `message`.
        """
        if not self.active:
            return
        flag = torch.tensor([0.0 if ok else 1.0], device=self.device)
        torch.distributed.all_reduce(flag)
        if flag.item() > 0 and ok:
            raise MadError(message)

    def barrier(self) -> None:
        if self.active:
            torch.distributed.barrier()

    def share(self, tensors: Iterable[torch.Tensor]) -> None:
        """Give every process rank 0's values (initial weights, resumed state)."""
        if self.active:
            for t in tensors:
                torch.distributed.broadcast(t.data, src=0)

    def all_reduce_grads(self, params: Sequence[torch.nn.Parameter]) -> None:
        """Sum the gradients over processes in one flat all-reduce; NaN/inf become finite.

        Each process scales its loss by its share of the global batch, so the sum is the
        global gradient. The NaN guard follows NVIDIA's training loop.
        """
        params = [p for p in params if p.grad is not None]
        if not params:
            return
        flat = torch.cat([p.grad.flatten() for p in params])
        if self.active:
            torch.distributed.all_reduce(flat)
        torch.nan_to_num(flat, nan=0, posinf=1e5, neginf=-1e5, out=flat)
        for p, g in zip(params, flat.split([p.numel() for p in params])):
            p.grad.copy_(g.view_as(p))

    def gather_fn(self) -> Callable[[torch.Tensor], tuple[list[torch.Tensor], int]]:
        """all_gather of one tensor → (list over ranks, my rank); identity for one process."""

        def gather(value: torch.Tensor) -> tuple[list[torch.Tensor], int]:
            if not self.active:
                return [value], 0
            out = [torch.zeros_like(value) for _ in range(self.world)]
            torch.distributed.all_gather(out, value.contiguous())
            return out, self.rank

        return gather

    def mine(self, items: Sequence[T]) -> list[T]:
        """This rank's share of a list (round robin): how `mad sample` splits seeds."""
        return list(items[self.rank :: self.world])


def init_dist(device_spec: str) -> Dist:
    """Join the torchrun process group if there is one (NCCL on CUDA, gloo on CPU)."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    device = resolve_device(device_spec)
    if world <= 1:
        return Dist(0, 1, device)
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if device.type == "cuda":
        if local_rank >= torch.cuda.device_count():
            raise MadError(f"LOCAL_RANK {local_rank}: only {torch.cuda.device_count()} GPU(s) visible")
        device = torch.device("cuda", local_rank)
        torch.cuda.set_device(device)
    if not torch.distributed.is_initialized():
        torch.distributed.init_process_group(backend="nccl" if device.type == "cuda" else "gloo", init_method="env://")
    return Dist(rank, world, device)


def single_process(model: str) -> Dist:
    """The Dist of a model fitted in closed form: one process; under torchrun, one error line."""
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        raise MadError(f"--model {model}: is fitted in closed form by one process; run it without torchrun")
    return Dist()


def is_rank_zero() -> bool:
    """For the CLI, which prints results only once under torchrun."""
    return int(os.environ.get("RANK", "0")) == 0
