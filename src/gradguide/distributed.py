"""Data-parallel training without a model wrapper: shard each batch, all-reduce every gradient.

``torchrun --nproc_per_node N -m gradguide train …`` (or ``accelerate launch -m gradguide train …``)
sets RANK/WORLD_SIZE; :func:`init` then joins the process group (gloo on CPU; NCCL on GPUs, rank
r on ``cuda:LOCAL_RANK``). A job of one process launched that way joins a group too, so the NCCL
path can be run on one GPU (its sums are then identities).
Rank r takes the examples ``batch[r::N]`` of every global batch and scales its loss by its share
of the batch, so the *sum* over ranks of the local gradients is exactly the gradient of the global
batch's mean loss. The guidance engine sums every gradient it computes (task, source, HVP) across
ranks before using it, so the penalties, the d_prior cosines and the metrics see the global
gradient and every rank takes the same step. (No DistributedDataParallel wrapper: the engine needs
more than one synchronised gradient per step, e.g. the finite-difference HVP's second gradient.)
Only rank 0 writes records, logs and checkpoints; every rank reads them on resume.
"""

from __future__ import annotations

import dataclasses
import gc
import os
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

import torch
import torch.distributed as dist

from gradguide.device import resolve_device
from gradguide.errors import GradguideError

T = TypeVar("T")


@dataclass(frozen=True)
class DistContext:
    """This process's place in a data-parallel job (rank 0 of 1 when not distributed)."""

    rank: int = 0
    world: int = 1
    #: this process's compute device; the collectives run on it (NCCL takes CUDA tensors only)
    device: torch.device = dataclasses.field(default_factory=lambda: torch.device("cpu"))
    #: a process group was joined (torchrun/accelerate), even one of a single process
    grouped: bool = False
    backend: str | None = None

    @property
    def active(self) -> bool:
        """Whether gradients are summed over a process group."""
        return self.world > 1 or self.grouped

    @property
    def is_main(self) -> bool:
        """Whether this process writes the run's files."""
        return self.rank == 0

    def shard(self, batch: Sequence[T]) -> list[T]:
        """This rank's part of a global batch (every N-th example from its rank)."""
        return list(batch[self.rank :: self.world])

    def share(self, local: int, total: int) -> float:
        """The weight of this rank's mean loss in the global mean (1.0 when alone)."""
        return 1.0 if not self.active else local / total

    def sum(self, tensor: torch.Tensor) -> torch.Tensor:
        """The sum of ``tensor`` over ranks (``tensor`` itself when alone)."""
        if not self.active:
            return tensor
        out = tensor.detach().to(self.device, copy=True)
        dist.all_reduce(out, op=dist.ReduceOp.SUM)
        return out

    def broadcast(self, obj: Any) -> Any:
        """Rank 0's value of ``obj`` on every rank."""
        if not self.active:
            return obj
        box = [obj]
        dist.broadcast_object_list(box, src=0)
        return box[0]

    def barrier(self) -> None:
        """Wait for every rank."""
        if self.active:
            dist.barrier()


def init(device: str = "auto") -> DistContext:
    """Join the process group that torchrun/accelerate describe in the environment, if any.

    ``device`` is the run's setting: a CUDA device makes the group NCCL and puts this rank on
    ``cuda:LOCAL_RANK``; the CPU makes it gloo. Outside such a launch, the device as resolved.
    """
    world = int(os.environ.get("WORLD_SIZE", "1"))
    launched = world > 1 or ("RANK" in os.environ and "MASTER_ADDR" in os.environ)
    if not launched:
        return DistContext(device=resolve_device(device))
    if device.startswith("cuda:"):
        raise GradguideError(
            "a distributed run puts each rank on cuda:LOCAL_RANK; use device cuda or auto",
            field="device",
        )
    on_gpu = resolve_device(device).type == "cuda"
    local = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0"))) if on_gpu else None
    if local is not None:
        torch.cuda.set_device(local)  # before NCCL starts: each rank owns its GPU
    backend = "nccl" if on_gpu else "gloo"
    if not dist.is_initialized():
        dist.init_process_group(backend=backend)
    return DistContext(
        rank=dist.get_rank(),
        world=dist.get_world_size(),
        device=local if local is not None else torch.device("cpu"),
        grouped=True,
        backend=str(dist.get_backend()),
    )


def finish() -> None:
    """Leave the process group together, at the end of a distributed command.

    The barrier keeps a rank from closing its gloo connections while a peer still uses them; the
    collection frees pending gloo work (which holds tensors) while the interpreter is whole, else
    a rank can abort at exit ("terminate called without an active exception"). Callers drop
    their own references to the group first (a DistributedDataParallel wrapper holds one).
    """
    if dist.is_available() and dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()
        gc.collect()
