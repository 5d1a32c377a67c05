"""Fused in-place Adam (or sign-gradient Adam) step on the adversarial variables.

One pass reads param, grad and both moments and writes param and moments back, where
torch.optim.Adam's single-tensor path launches about ten kernels per step. Imported only when
the Triton backend is chosen (see functional.py).
"""

from __future__ import annotations

import math

import torch
import triton
import triton.language as tl

_BLOCK = 1024


@triton.jit
def _adversarial_adam_fwd_kernel(
    param_ptr,
    grad_ptr,
    exp_avg_ptr,
    exp_avg_sq_ptr,
    n,
    one_minus_beta1,
    beta2,
    one_minus_beta2,
    eps,
    weight_decay,
    step_size,
    bias_correction2_sqrt,
    SIGN_GRAD: tl.constexpr,
    HAS_WEIGHT_DECAY: tl.constexpr,
    BLOCK: tl.constexpr,
):
    offs = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    mask = offs < n
    g = tl.load(grad_ptr + offs, mask=mask, other=0.0).to(tl.float32)
    p = tl.load(param_ptr + offs, mask=mask, other=0.0).to(tl.float32)
    m = tl.load(exp_avg_ptr + offs, mask=mask, other=0.0).to(tl.float32)
    v = tl.load(exp_avg_sq_ptr + offs, mask=mask, other=0.0).to(tl.float32)
    if SIGN_GRAD:
        # torch.sign keeps zeros and NaNs; only the nonzero finite part becomes +-1.
        g = tl.where(g > 0, 1.0, tl.where(g < 0, -1.0, g))
    if HAS_WEIGHT_DECAY:
        g = g + weight_decay * p
    # torch's lerp(m, g, w) for w < 0.5, which 1 - beta1 is for any sensible beta1.
    m = m + one_minus_beta1 * (g - m)
    v = v * beta2 + one_minus_beta2 * (g * g)
    # IEEE sqrt and division (Triton's defaults are approximate on GPUs) keep the update
    # within rounding of torch.optim.Adam's.
    denom = tl.div_rn(tl.sqrt_rn(v), bias_correction2_sqrt) + eps
    p = p - step_size * tl.div_rn(m, denom)
    tl.store(param_ptr + offs, p.to(param_ptr.dtype.element_ty), mask=mask)
    tl.store(exp_avg_ptr + offs, m.to(exp_avg_ptr.dtype.element_ty), mask=mask)
    tl.store(exp_avg_sq_ptr + offs, v.to(exp_avg_sq_ptr.dtype.element_ty), mask=mask)


def adversarial_adam_forward(
    param: torch.Tensor,
    grad: torch.Tensor,
    exp_avg: torch.Tensor,
    exp_avg_sq: torch.Tensor,
    step: int,
    lr: float,
    beta1: float,
    beta2: float,
    eps: float,
    weight_decay: float,
    sign_grad: bool,
) -> torch.Tensor:
    """Updates param, exp_avg and exp_avg_sq (all contiguous) in place."""
    n = param.numel()
    if n == 0:
        return param
    # Scalars are formed in float64 on the host, like torch.optim.Adam's Python arithmetic:
    # 1 - beta2 computed in fp32 inside the kernel would be off by 1e-5 relative.
    _adversarial_adam_fwd_kernel[(triton.cdiv(n, _BLOCK),)](
        param.detach(),
        grad.detach().contiguous(),
        exp_avg.detach(),
        exp_avg_sq.detach(),
        n,
        1.0 - beta1,
        beta2,
        1.0 - beta2,
        eps,
        weight_decay,
        lr / (1.0 - beta1**step),
        math.sqrt(1.0 - beta2**step),
        SIGN_GRAD=bool(sign_grad),
        HAS_WEIGHT_DECAY=weight_decay != 0,
        BLOCK=_BLOCK,
    )
    # Writes through raw pointers are invisible to autograd's in-place checks; bumping the
    # version counters makes a stale saved tensor an error instead of a silent wrong gradient.
    for tensor in (param, exp_avg, exp_avg_sq):
        torch.autograd.graph.increment_version(tensor)
    return param
