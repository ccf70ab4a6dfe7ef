"""One process per device: torchrun sets RANK / WORLD_SIZE / LOCAL_RANK; a plain run is rank 0 of 1.

Rank 0 builds what is shared on disk (cache, PCA, tokens) while the others wait at a barrier, then
everyone reads it. Each rank trains on every world-th batch; the contrastive losses gather their
candidates across ranks (losses/functional.gather_candidates).
"""

from __future__ import annotations

import os

import torch
import torch.distributed as dist


def init_distributed() -> tuple[int, int, torch.device]:
    """(rank, world size, device); starts the process group under torchrun."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world > 1 and not dist.is_initialized():
        dist.init_process_group("nccl" if torch.cuda.is_available() else "gloo")
    rank = dist.get_rank() if dist.is_initialized() else 0
    if torch.cuda.is_available():
        local = int(os.environ.get("LOCAL_RANK", "0"))
        torch.cuda.set_device(local)
        return rank, world, torch.device("cuda", local)
    return rank, world, torch.device("cpu")


def is_main_process_env() -> bool:
    """Rank 0 as torchrun announces it (before the process group exists)."""
    return int(os.environ.get("RANK", "0")) == 0


def barrier(world: int) -> None:
    if world > 1:
        dist.barrier()


def teardown() -> None:
    """Leave together, then tear down: a rank that closes its gloo connections while a peer still
    reads from them aborts that peer ("terminate called", SIGABRT), and a process that exits with
    the group alive can abort in interpreter shutdown."""
    if dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()
