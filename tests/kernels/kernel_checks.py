"""Shared by the kernel tests: device, tolerance table, and an allclose that explains itself."""

from __future__ import annotations

import pytest
import torch
from advunlearn_fast.kernels import interpreter_enabled, triton_available

DEVICE = torch.device("cuda" if torch.cuda.is_available() else "cpu")

# Relative tolerance by the dtype the compared tensors are stored in. Kernels and references
# compute in fp32 and round to the storage dtype. fp32 results may differ by the order of fp32
# operations; bf16 and fp16 ones by up to two units of their rounding (eps): rounded state feeds
# the next step (Adam's moments), and Triton's interpreter truncates fp32 -> bf16 where GPUs and
# PyTorch round to nearest even.
TOLERANCES = {
    torch.float32: 1e-5,
    torch.bfloat16: 2 * torch.finfo(torch.bfloat16).eps,  # 1.6e-2
    torch.float16: 2 * torch.finfo(torch.float16).eps,  # 2.0e-3
}

TRITON_RUNS = triton_available() and (DEVICE.type == "cuda" or interpreter_enabled())
needs_triton = pytest.mark.skipif(
    not TRITON_RUNS,
    reason="triton is not installed, or there is no GPU and TRITON_INTERPRET=1 is not set",
)


def mismatch(actual, expected, dtype=None, rtol=None, atol=None, what="tensor") -> str | None:
    """Why `actual` is not close to `expected` elementwise (|actual - expected| <= rtol * |expected|
    + atol), or None when it is.

    rtol defaults to TOLERANCES[dtype] (dtype defaults to actual's), atol to rtol times the
    largest |expected|: rounding errors scale with the values a result is computed from, not
    with an absolute constant, which for small tensors (Adam's second moment, ~1e-3) would
    exceed the values themselves and let an all-zero result pass.
    """
    rtol = TOLERANCES[dtype or actual.dtype] if rtol is None else rtol
    if actual.shape != expected.shape:
        return f"{what}: shape {tuple(actual.shape)} != {tuple(expected.shape)}"
    a = actual.detach().double().cpu()
    e = expected.detach().double().cpu()
    if atol is None:
        finite_e = e[torch.isfinite(e)]
        atol = rtol * float(finite_e.abs().max()) if finite_e.numel() else 0.0
    ok = torch.isclose(a, e, rtol=rtol, atol=atol, equal_nan=True)
    if bool(ok.all()):
        return None
    diff = (a - e).abs()
    finite = torch.isfinite(diff)
    worst = int(torch.where(finite, diff, torch.zeros_like(diff)).argmax())
    first = tuple(int(i) for i in torch.nonzero(~ok)[0])
    return (
        f"{what}: {int((~ok).sum())} of {ok.numel()} elements differ beyond rtol={rtol:g}, atol={atol:g}; "
        f"first at {first}: {a[first].item():.8g} vs {e[first].item():.8g}; "
        f"max abs diff {diff[finite].max().item() if finite.any() else float('nan'):.3g} "
        f"at flat index {worst} (expected {e.flatten()[worst].item():.8g}); "
        f"NaN actual/expected {int(a.isnan().sum())}/{int(e.isnan().sum())}, "
        f"inf actual/expected {int(a.isinf().sum())}/{int(e.isinf().sum())}"
    )


def assert_close(actual, expected, dtype=None, rtol=None, atol=None, what="tensor"):
    """allclose under the rule of `mismatch`, failing with its explanation."""
    problem = mismatch(actual, expected, dtype, rtol, atol, what)
    assert problem is None, problem


def dtype_params(*dtypes):
    """Parametrisation values with readable ids (fp32, bf16, fp16)."""
    names = {torch.float32: "fp32", torch.bfloat16: "bf16", torch.float16: "fp16"}
    return [pytest.param(dtype, id=names[dtype]) for dtype in dtypes]
