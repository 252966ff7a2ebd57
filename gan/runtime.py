"""Where a training run executes: its device, its place among torchrun's processes, the
precision its step computes in, and the networks wrapped for that (DDP, torch.compile).

One process = one device. Under torchrun (WORLD_SIZE > 1) each process joins the process group
(NCCL on GPUs, gloo on CPUs) and takes cuda:LOCAL_RANK; only rank 0 writes files.
"""

from __future__ import annotations

import contextlib
import datetime
import os
from collections.abc import Callable
from dataclasses import dataclass
from typing import TypeVar

import torch
import torch.distributed as dist
from torch import nn

from core.devices import resolve_device
from core.errors import UserError

T = TypeVar("T")


class TrainingError(UserError):
    """The run cannot go on (diverged, nothing to resume, ...); the message is for the user."""


CACHE_BUILD_WAIT = datetime.timedelta(hours=2)  # the one long wait: rank 0 decoding the cache


@dataclass
class Runtime:
    device: torch.device
    rank: int = 0
    world: int = 1
    slow_group: object = None  # a gloo group with CACHE_BUILD_WAIT, for waits on rank 0's work

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def cuda(self) -> bool:
        return self.device.type == "cuda"


def start_runtime(device: str) -> Runtime:
    """Pick the device and make it the process's current one (else pinned memory and RNG calls
    open a context on GPU 0 whatever --device says); under torchrun, take cuda:LOCAL_RANK and
    join the process group (NCCL on GPUs, else gloo) with torch's default timeout, plus a gloo
    group with a long one for waiting while rank 0 decodes the cache."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    dev = resolve_device(device)
    if world > 1 and dev.type == "cuda":
        dev = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
    if dev.type == "cuda" and dev.index is not None:
        torch.cuda.set_device(dev)
    if world == 1:
        return Runtime(dev)
    if not dist.is_initialized():
        dist.init_process_group("nccl" if dev.type == "cuda" else "gloo")
    slow_group = dist.new_group(backend="gloo", timeout=CACHE_BUILD_WAIT)
    return Runtime(dev, dist.get_rank(), dist.get_world_size(), slow_group)


def stop_runtime(rt: Runtime) -> None:
    """Leave the process group (torchrun runs only)."""
    if rt.world > 1 and dist.is_initialized():
        dist.destroy_process_group()


def barrier(rt: Runtime) -> None:
    if rt.world > 1:
        dist.barrier()


def run_on_main(rt: Runtime, fn: Callable[[], object], slow: bool = False) -> None:
    """`fn()` on rank 0 while the other ranks wait; if it fails, every rank raises its error
    (a rank left waiting for one that stopped would wait until the process group times out).
    `slow`: the wait may last up to CACHE_BUILD_WAIT (decoding the cache), not the default."""
    error = None
    if rt.is_main:
        try:
            fn()
        except Exception as err:  # re-raised below, on every rank
            error = err
    if rt.world > 1:
        shared = [error]
        dist.broadcast_object_list(shared, src=0, group=rt.slow_group if slow else None)
        error = shared[0]
    if error is not None:
        raise error


def on_every_rank(rt: Runtime, fn: Callable[[], T]) -> T:
    """`fn()` on every rank; if it fails on any, every rank raises the first failing rank's
    error (a rank that stopped alone would leave the others waiting in a collective)."""
    error, result = None, None
    try:
        result = fn()
    except Exception as err:  # re-raised below, on every rank
        error = err
    errors = [e for e in gather_from_ranks(error, rt) if e is not None]
    if errors:
        raise errors[0]
    return result


def mean_over_ranks(values: torch.Tensor, rt: Runtime) -> torch.Tensor:
    """`values` averaged over all ranks (every rank gets the mean; a collective call)."""
    if rt.world == 1:
        return values
    values = values.clone()
    dist.all_reduce(values)
    return values / rt.world


def any_rank(flag: bool, rt: Runtime) -> bool:
    """Whether `flag` holds on any rank (every rank gets the answer; a collective call)."""
    if rt.world == 1:
        return flag
    value = torch.tensor([float(flag)], device=rt.device)
    dist.all_reduce(value, op=dist.ReduceOp.MAX)
    return bool(value.item())


def gather_from_ranks(obj: object, rt: Runtime) -> list:
    """Every rank's `obj`, in rank order (on every rank; a collective call)."""
    if rt.world == 1:
        return [obj]
    objects: list = [None] * rt.world
    dist.all_gather_object(objects, obj)
    return objects


def set_tf32(precision: str) -> None:
    """TF32 on GPUs, said explicitly rather than left to torch's defaults (which differ between
    matmul and convolutions, and between torch versions): off for `fp32` (a run that asked for
    fp32 gets fp32), on otherwise (the bf16 autocast leaves little fp32 work, and TF32 is what
    makes that fast). No effect on CPUs."""
    allowed = precision != "fp32"
    torch.backends.cuda.matmul.allow_tf32 = allowed
    torch.backends.cudnn.allow_tf32 = allowed


def autocast_for(precision: str, rt: Runtime) -> Callable[[], contextlib.AbstractContextManager]:
    """The step's autocast context: bf16 on CUDA by default (or when asked for on a CPU), else
    none, i.e. plain fp32."""
    if precision == "bf16" or (precision == "auto" and rt.cuda):
        return lambda: torch.autocast(rt.device.type, dtype=torch.bfloat16)
    return contextlib.nullcontext


def wrap_models(G: nn.Module, D: nn.Module, rt: Runtime, compile_with: str | None
                ) -> tuple[nn.Module, nn.Module, nn.Module]:
    """(G, D, D_plain) as the step calls them: DDP wrappers under torchrun, compiled with
    `compile_with` (a torch.compile backend) when given.

    DDP is wrapped first and compiled second, the order in which torch.compile splits the
    backward at DDP's gradient buckets so that their all-reduce overlaps the rest of the
    backward (compiling the network inside DDP would hand DDP every gradient at the end).
    D runs twice (real, fake) before its one backward, so DDP must not broadcast its buffers
    before each forward: that overwrites in place the BatchNorm statistics the first forward
    saved for backward ("modified by an inplace operation" on CUDA). D's running statistics
    play no part in training (D always runs in train mode there); each rank keeps its own and
    rank 0's are saved.
    """
    D_plain = D
    if rt.world > 1:
        from torch.nn.parallel import DistributedDataParallel as DDP

        ids = [rt.device.index] if rt.cuda else None
        G, D = DDP(G, device_ids=ids), DDP(D, device_ids=ids, broadcast_buffers=False)
    if compile_with is not None:
        G, D = torch.compile(G, backend=compile_with), torch.compile(D, backend=compile_with)
        D_plain = D if rt.world == 1 else torch.compile(D_plain, backend=compile_with)
    return G, D, D_plain
