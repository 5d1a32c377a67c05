"""Backend choice for the kernels: Triton when it can run on the inputs, else the reference.

Triton is imported here only, and only when asked, so that the engine (and its CLI start-up)
never pays for it or requires it.
"""

from __future__ import annotations

import functools
import os

import torch

BACKENDS = ("auto", "triton", "torch")


@functools.lru_cache(maxsize=None)
def triton_available() -> bool:
    """Whether `import triton` succeeds (cached: a failed import is slow to retry)."""
    try:
        import triton  # noqa: F401
    except Exception:  # a broken install raises more than ImportError
        return False
    return True


def interpreter_enabled() -> bool:
    # Triton reads this when a kernel is decorated, i.e. when an op module is first
    # imported; it must therefore be set before the first kernel call of the process.
    return os.environ.get("TRITON_INTERPRET", "0").strip().lower() in ("1", "true", "on", "yes")


def _why_not_triton(tensors: tuple[torch.Tensor, ...]) -> str | None:
    if not triton_available():
        return "triton is not installed"
    devices = {t.device.type for t in tensors}
    if len(devices) > 1:
        return f"the inputs are on several devices ({sorted(devices)})"
    if devices == {"cuda"} or interpreter_enabled():
        return None
    if devices == {"cpu"}:
        return "the inputs are on the CPU and TRITON_INTERPRET=1 is not set"
    return f"Triton has no backend for device {devices.pop()!r}"


def use_triton(op: str, backend: str, *tensors: torch.Tensor, unsupported: str | None = None) -> bool:
    """Decide whether `op` runs its Triton kernel.

    `unsupported` is an op-specific reason the kernel cannot take these inputs (for example a
    non-contiguous tensor to update in place). "auto" then falls back quietly; "triton" raises,
    because a caller who forces the kernel wants to know it did not run.
    """
    if backend not in BACKENDS:
        raise ValueError(f"{op}: backend must be one of {BACKENDS}, got {backend!r}")
    if backend == "torch":
        return False
    reason = _why_not_triton(tensors) or unsupported
    if reason is None:
        return True
    if backend == "triton":
        raise RuntimeError(f"{op}: backend='triton' was requested but {reason}")
    return False
