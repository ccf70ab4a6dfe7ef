"""One process per device: torchrun sets RANK / WORLD_SIZE / LOCAL_RANK; a plain run is rank 0 of 1.

Every rank encodes its share of a missing teacher cache's shards (data/cache.py: build_cache, with
`together` / `all_ranks` below: a rank that fails makes every rank fail); rank 0 builds the other
files shared on disk (PCA, tokens) while the others wait at a barrier, then everyone reads them.
Each rank trains on every world-th batch; the contrastive losses gather their candidates across
ranks (losses/functional.gather_candidates).
"""

from __future__ import annotations

import datetime
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


def world_size() -> int:
    """The process group's size; 1 without one."""
    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


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


def all_ranks(value, error: BaseException | None = None) -> list:
    """Every rank's `value` (a collective: each rank calls it at the same point). When a rank
    passes an `error`, every rank raises: that rank its own exception, the others a DistillError
    naming the rank and its message, so no rank waits forever on a peer that gave up."""
    from distill.errors import DistillError

    got: list = [None] * dist.get_world_size()
    said = None if error is None else str(error) if isinstance(error, DistillError) else f"{type(error).__name__}: {error}"
    dist.all_gather_object(got, (said, value))
    if error is not None:
        raise error
    failed = [f"rank {r}: {msg}" for r, (msg, _) in enumerate(got) if msg]
    if failed:
        raise DistillError("; ".join(failed))
    return [v for _, v in got]


def together(fn, only: int | None = None) -> list:
    """Run `fn()` on every rank (or on rank `only`), then `all_ranks` of the results: a list by rank
    (None for the ranks that did not run it); an exception on any rank is raised on every rank.

    The ranks first wait for each other on keys of the group's store (each rank sets its own when
    its `fn` ends, as it ends), and only then meet in the collective: one rank's long step (reading
    a corpus of millions of sentences, downloading a teacher, assembling a matrix) is not cut short
    by the collectives' timeout (NCCL's watchdog, 10 minutes by default)."""
    global _together_calls
    value, error = None, None
    _together_calls += 1
    key = f"distill/together/{os.environ.get('TORCHELASTIC_RESTART_COUNT', '0')}/{_together_calls}"
    rank, store = dist.get_rank(), group_store()
    if only is None or rank == only:
        try:
            value = fn()
        except Exception as exc:
            error = exc
    if store is not None:
        store.set(f"{key}/{rank}", "done")
        store.wait([f"{key}/{r}" for r in range(dist.get_world_size())], LONG_WAIT)
    return all_ranks(value, error)


_together_calls = 0  # every rank calls together() in the same order: the count names the step
LONG_WAIT = datetime.timedelta(days=7)


def group_store():
    """The process group's key-value store (torchrun's TCPStore), None when it cannot be had."""
    try:
        from torch.distributed import distributed_c10d

        return distributed_c10d._get_default_store()
    except (AttributeError, RuntimeError, ValueError):
        return None


def same_on_every_rank(fields: dict, why: str) -> None:
    """Every rank's `fields` must equal rank 0's: else every rank raises a DistillError naming the
    field, its value on rank 0 and on the first rank that differs (`why` says what must agree)."""
    from distill.errors import DistillError

    views = all_ranks(fields)
    for r, view in enumerate(views[1:], start=1):
        for key in {**views[0], **view}:
            if view.get(key) != views[0].get(key):
                raise DistillError(f"rank {r} disagrees with rank 0 on {key}: {view.get(key)!r} on rank {r}, "
                                   f"{views[0].get(key)!r} on rank 0; {why}")
