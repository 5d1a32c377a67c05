"""Host-to-GPU copies that do not stall the host."""

from __future__ import annotations

import torch


def to_device(x: torch.Tensor, device: torch.device | str, dtype: torch.dtype | None = None) -> torch.Tensor:
    """`x` on `device` (and in `dtype`), copied from the host through pinned memory on CUDA.

    A plain copy from pageable host memory first waits for every kernel already queued on the
    stream. The attack reads a bank latent and a timestep each step, so those waits would stop
    Python from queueing the next step's kernels while the GPU runs the current ones. The
    pinned buffer is held by PyTorch's host allocator until its copy has finished.
    """
    device = torch.device(device)
    if device.type == "cuda" and x.device.type == "cpu":
        x = x.pin_memory().to(device, non_blocking=True)
    return x.to(device, dtype)
