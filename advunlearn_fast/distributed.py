"""Several processes, on one machine or several: torch.distributed, as torchrun launches it.

torchrun starts one process per GPU (or per CPU worker) with RANK, WORLD_SIZE, LOCAL_RANK and
the rendezvous address in its environment. A process started any other way is a world of one:
every function here is then a no-op or returns at once, and the commands run exactly as before.

The process group moves gradients (NCCL between GPUs, gloo between CPU processes); Python
objects (report rows, file names, checkpoint states) and waiting go through a gloo group of
their own, whose timeout is long: a rank may wait there for the others' whole batch. A process
that dies does not leave the others waiting that long: torchrun stops every process of a job as
soon as one fails.
"""

from __future__ import annotations

import atexit
import os
import uuid
from datetime import timedelta
from pathlib import Path
from typing import Callable, Iterator, Sequence

import torch
import torch.distributed as dist

from advunlearn_fast.errors import UserError

LAUNCH_VARIABLES = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")
# How long a rank waits for the others at a meeting point (after a batch, a bank build, a
# checkpoint): an UnlearnDiffAtk batch of SD prompts that resist can take over an hour on a
# consumer GPU.
WAIT = timedelta(hours=24)

_objects = None  # the gloo group for Python objects and waiting, once started


def launched() -> bool:
    """Whether torchrun (or a launcher setting the same variables) started this process."""
    return all(name in os.environ for name in LAUNCH_VARIABLES)


def rank() -> int:
    return int(os.environ["RANK"]) if launched() else 0


def world_size() -> int:
    return int(os.environ["WORLD_SIZE"]) if launched() else 1


def local_rank() -> int:
    return int(os.environ["LOCAL_RANK"]) if launched() else 0


def is_main() -> bool:
    """Rank 0: the process that writes shared outputs and prints."""
    return rank() == 0


def cuda_device() -> torch.device:
    """This process's GPU: one per process on each machine, by LOCAL_RANK."""
    index = local_rank()
    count = torch.cuda.device_count()
    if index >= count:
        per_machine = os.environ.get("LOCAL_WORLD_SIZE", index + 1)
        raise UserError(f"torchrun started {per_machine} processes on this machine, which has {count} GPU(s): "
                        f"one GPU per process, so pass --nproc-per-node {count} or fewer (or --device cpu)")
    torch.cuda.set_device(index)
    return torch.device("cuda", index)


def start(device: torch.device) -> None:
    """Join the torchrun job (NCCL for a CUDA device, gloo for a CPU), once per process."""
    global _objects
    if not launched() or _objects is not None:
        return
    if not dist.is_initialized():
        if device.type == "cuda":
            dist.init_process_group("nccl", device_id=device)
        else:
            dist.init_process_group("gloo", timeout=WAIT)
        atexit.register(_leave)
    gloo = dist.get_backend() == "gloo"
    _objects = dist.group.WORLD if gloo else dist.new_group(backend="gloo", timeout=WAIT)


def finish() -> None:
    """Leave the torchrun job together, after a command's work: each rank waits for the others
    before the process group is torn down (a rank tearing gloo down while a peer was still in
    its last exchange sometimes aborted at exit, after its work was done)."""
    if dist.is_available() and dist.is_initialized():
        barrier()
        _leave()


def _leave() -> None:
    global _objects
    if dist.is_initialized():
        _objects = None
        dist.destroy_process_group()


def _group():
    if _objects is None:
        raise RuntimeError("advunlearn_fast.distributed.start(device) must run before ranks exchange anything")
    return _objects


def _collective(call: Callable, *args, **kwargs):
    """A collective call; a rank that stopped (its own message says why) ends this one in one line."""
    try:
        return call(*args, **kwargs)
    except RuntimeError as err:  # gloo and NCCL report a lost peer or a timeout so
        first = (str(err).splitlines() or ["?"])[0]
        raise UserError(f"another process of this torchrun job stopped or stopped answering ({first[:200]})") from None


def gather_to_main(value) -> list | None:
    """Every rank's `value`, in rank order, on rank 0; None elsewhere."""
    if not launched():
        return [value]
    received = [None] * world_size() if is_main() else None
    _collective(dist.gather_object, value, received, dst=0, group=_group())
    return received


def gather_to_all(value) -> list:
    """Every rank's `value`, in rank order, on every rank."""
    if not launched():
        return [value]
    received = [None] * world_size()
    _collective(dist.all_gather_object, received, value, group=_group())
    return received


def broadcast_from_main(value):
    """Rank 0's `value` on every rank."""
    if not launched():
        return value
    box = [value]
    _collective(dist.broadcast_object_list, box, src=0, group=_group())
    return box[0]


def barrier() -> None:
    """Wait until every rank is here."""
    if launched():
        _collective(dist.barrier, group=_group())


def on_main(function: Callable):
    """`function()` run by rank 0 alone, its result (or its one-line refusal) shared with every
    rank: decisions that read shared files, so that no rank reads them while another writes."""
    if not launched():
        return function()
    result = error = None
    if is_main():
        try:
            result = function()
        except UserError as err:
            error = str(err)
    result, error = broadcast_from_main((result, error))
    if error is not None:
        raise UserError(error)
    return result


def sharded(batches: Sequence, work: Callable) -> Iterator[list]:
    """Run `work(batch)` for this rank's share of `batches` (batch j on rank j mod N, so that a batch
    holds what it would hold in one process and gives the same result), in rounds of one batch per
    rank. After each round rank 0 yields that round's results in batch order; other ranks yield
    nothing. A rank whose batch ends early waits for the round's others: the report of a round
    is written once all its batches are done."""
    size, mine = world_size(), rank()
    for first in range(0, len(batches), size):
        index = first + mine
        result = work(batches[index]) if index < len(batches) else None
        received = gather_to_main(result)
        if received is not None:
            yield received[: len(batches) - first]


def average_gradients(parameters) -> None:
    """Each parameter's gradient replaced by its mean over the ranks (bit for bit the same on
    every rank, so that identical optimiser steps keep identical weights)."""
    if not launched():
        return
    grads = [p.grad for p in parameters if p.grad is not None]
    pending = [_collective(dist.all_reduce, g, async_op=True) for g in grads]
    for work in pending:
        _collective(work.wait)
    for g in grads:
        g.div_(world_size())


def check_shared_folder(folder: Path, flag: str) -> None:
    """Rank 0 creates `folder`; every rank must see what rank 0 writes there (on several machines:
    a shared filesystem), else one line on every rank."""
    if not launched():
        return
    folder = Path(folder)
    name = None
    if is_main():
        folder.mkdir(parents=True, exist_ok=True)
        name = f".advunlearn-shared-{uuid.uuid4().hex}"
        (folder / name).touch()
    name = broadcast_from_main(name)
    # Each rank looks through its own path to the folder, the one it will write through.
    seen = gather_to_all((folder / name).is_file())
    if is_main():
        (folder / name).unlink()
    blind = [r for r, ok in enumerate(seen) if not ok]
    if blind:
        raise UserError(f"{flag} {folder} is not shared by every process: rank(s) {', '.join(map(str, blind))} do not "
                        "see what rank 0 writes there; on several machines it must be on a shared filesystem")
