"""Shared by the kernel tests: device, tolerance table, and an allclose that explains itself."""

from __future__ import annotations

import pytest
import torch
from advunlearn_fast.kernels import interpreter_enabled, triton_available

DEVICE = torch.device("cuda" if torch.cuda.is_available() else "cpu")

# (rtol, atol) by the dtype the compared tensors are stored in.
TOLERANCES = {
    torch.float32: (1e-5, 1e-5),
    torch.bfloat16: (2e-2, 2e-2),
    torch.float16: (1e-3, 1e-3),
}

# Triton's interpreter casts fp32 to bf16 by truncating the mantissa (round toward zero) where
# GPUs and PyTorch round to nearest even, so its bf16 outputs can be one bf16 ulp (2^-8
# relative) away from the reference; the bf16 tolerance above covers that.
BF16_INTERPRETER_NOTE = "interpreter bf16 stores truncate instead of rounding to nearest"

TRITON_RUNS = triton_available() and (DEVICE.type == "cuda" or interpreter_enabled())
needs_triton = pytest.mark.skipif(
    not TRITON_RUNS,
    reason="triton is not installed, or there is no GPU and TRITON_INTERPRET=1 is not set",
)


def assert_close(actual, expected, dtype=None, rtol=None, atol=None, what="tensor"):
    """allclose under TOLERANCES[dtype] (default: actual's dtype) with a useful failure message."""
    default_rtol, default_atol = TOLERANCES[dtype or actual.dtype]
    rtol = default_rtol if rtol is None else rtol
    atol = default_atol if atol is None else atol
    assert actual.shape == expected.shape, f"{what}: shape {tuple(actual.shape)} != {tuple(expected.shape)}"
    a = actual.detach().double().cpu()
    e = expected.detach().double().cpu()
    ok = torch.isclose(a, e, rtol=rtol, atol=atol, equal_nan=True)
    if bool(ok.all()):
        return
    diff = (a - e).abs()
    finite = torch.isfinite(diff)
    worst = int(torch.where(finite, diff, torch.zeros_like(diff)).argmax())
    bad = int((~ok).sum())
    first = tuple(int(i) for i in torch.nonzero(~ok)[0])
    raise AssertionError(
        f"{what}: {bad} of {ok.numel()} elements differ beyond rtol={rtol:g}, atol={atol:g}; "
        f"first at {first}: {a[first].item():.8g} vs {e[first].item():.8g}; "
        f"max abs diff {diff[finite].max().item() if finite.any() else float('nan'):.3g} "
        f"at flat index {worst} (expected {e.flatten()[worst].item():.8g}); "
        f"NaN actual/expected {int(a.isnan().sum())}/{int(e.isnan().sum())}, "
        f"inf actual/expected {int(a.isinf().sum())}/{int(e.isinf().sum())}"
    )


def dtype_params(*dtypes):
    """Parametrisation values with readable ids (fp32, bf16, fp16)."""
    names = {torch.float32: "fp32", torch.bfloat16: "bf16", torch.float16: "fp16"}
    return [pytest.param(dtype, id=names[dtype]) for dtype in dtypes]
