"""Where the work runs: the device a command asked for, the kernel backend for it, and the
CPU thread policy for small models."""

from __future__ import annotations

from typing import TYPE_CHECKING

from advunlearn_fast.errors import UserError, notice

if TYPE_CHECKING:
    import torch

# What --device takes, in every command. Read by the training config, which the CLI's --help
# imports: nothing here imports torch at load.
DEVICES = ("auto", "cpu", "cuda")

# Below this many UNet parameters a CPU op is too small to share: the intra-op thread pool's
# synchronisation then dominates, and with more threads than free cores (two jobs on two cores)
# each op waits on the slowest thread.
SMALL_MODEL_PARAMETERS = 20_000_000


def check_device(name: str) -> None:
    """Refuse a --device other than auto, cpu or cuda (a device string torch would take, such as
    cuda:1 or meta, is refused too: under torchrun each process picks its own GPU)."""
    if name not in DEVICES:
        raise UserError(f"--device must be one of {', '.join(DEVICES)}, got {name!r}")


def resolve_device(name: str) -> torch.device:
    """The device of `--device`; under torchrun a CUDA device is this process's own GPU."""
    import torch

    from advunlearn_fast import distributed

    check_device(name)
    if name == "cuda" and not torch.cuda.is_available():
        raise UserError("--device cuda was asked for but CUDA is not available; use --device cpu")
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name == "cuda" and distributed.launched():
        return distributed.cuda_device()
    return torch.device(name)


def kernel_backend(device: torch.device) -> str:
    # Triton kernels on GPUs; on a CPU their PyTorch references (the interpreter is for tests).
    return "auto" if device.type == "cuda" else "torch"


def cpu_policy(unet: torch.nn.Module, device: torch.device, asked: str) -> None:
    """On a CPU: one intra-op thread for a small UNet; for a full-size one that `--device auto`
    put there (no CUDA GPU found), a notice, since a run then takes hours to days."""
    import torch


    if device.type != "cpu":
        return
    if sum(p.numel() for p in unet.parameters()) < SMALL_MODEL_PARAMETERS:
        torch.set_num_threads(1)
    elif asked == "auto":
        notice("no CUDA GPU found: this full-size model runs on the CPU, hours to days for a training run "
               "(--device cpu says that is meant)")
