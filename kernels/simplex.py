"""Row-wise projection onto the probability simplex by bisection on the threshold.

One program per row loops over the vocabulary in blocks, so a 49408-wide row never has to fit
in registers and nothing is sorted. Imported only when the Triton backend is chosen (see
functional.py); the algorithm and its accuracy argument are in
reference.project_simplex_reference, which this kernel follows step for step.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

_MAX_BLOCK_V = 4096


@triton.jit
def _project_simplex_fwd_kernel(
    x_ptr,
    out_ptr,
    V,
    stride_x,
    stride_out,
    ITERS: tl.constexpr,
    BLOCK_V: tl.constexpr,
):
    row = tl.program_id(0).to(tl.int64)
    x_row = x_ptr + row * stride_x
    out_row = out_ptr + row * stride_out
    offs = tl.arange(0, BLOCK_V)

    run_max = tl.full((BLOCK_V,), float("-inf"), tl.float32)
    run_sum = tl.zeros((BLOCK_V,), tl.float32)
    for start in range(0, V, BLOCK_V):
        mask = start + offs < V
        x = tl.load(x_row + start + offs, mask=mask, other=float("-inf")).to(tl.float32)
        run_max = tl.maximum(run_max, x)
        run_sum += tl.where(mask, x, 0.0)
    x_max = tl.max(run_max, axis=0)
    lo = tl.maximum(x_max - 1.0, (tl.sum(run_sum, axis=0) - 1.0) / V)
    hi = x_max

    for _ in range(ITERS):
        mid = (lo + hi) * 0.5
        mass = tl.zeros((BLOCK_V,), tl.float32)
        for start in range(0, V, BLOCK_V):
            # Padding loads -inf, which the clamp turns into zero mass.
            x = tl.load(x_row + start + offs, mask=start + offs < V, other=float("-inf")).to(tl.float32)
            mass += tl.maximum(x - mid, 0.0)
        mid_below_tau = tl.sum(mass, axis=0) >= 1.0
        lo = tl.where(mid_below_tau, mid, lo)
        hi = tl.where(mid_below_tau, hi, mid)

    support_sum = tl.zeros((BLOCK_V,), tl.float32)
    support_size = tl.zeros((BLOCK_V,), tl.float32)
    for start in range(0, V, BLOCK_V):
        x = tl.load(x_row + start + offs, mask=start + offs < V, other=float("-inf")).to(tl.float32)
        in_support = x > lo
        support_sum += tl.where(in_support, x, 0.0)
        support_size += in_support.to(tl.float32)
    tau = (tl.sum(support_sum, axis=0) - 1.0) / tl.sum(support_size, axis=0)

    for start in range(0, V, BLOCK_V):
        mask = start + offs < V
        x = tl.load(x_row + start + offs, mask=mask, other=0.0).to(tl.float32)
        tl.store(out_row + start + offs, tl.maximum(x - tau, 0.0).to(out_ptr.dtype.element_ty), mask=mask)


def project_simplex_forward(x: torch.Tensor, iters: int) -> torch.Tensor:
    V = x.shape[-1]
    rows = x.detach().reshape(-1, V)
    if rows.stride(-1) != 1:
        rows = rows.contiguous()
    out = torch.empty_like(rows)
    if out.numel() == 0:
        return out.reshape(x.shape)
    _project_simplex_fwd_kernel[(rows.shape[0],)](
        rows,
        out,
        V,
        rows.stride(0),
        out.stride(0),
        ITERS=int(iters),
        BLOCK_V=min(_MAX_BLOCK_V, triton.next_power_of_2(V)),
        num_warps=8,
    )
    return out.reshape(x.shape)


def project_simplex_backward(out: torch.Tensor, grad_out: torch.Tensor) -> torch.Tensor:
    # Jacobian of the projection on its support S = {out > 0}: identity minus the mean over S
    # (tau moves by the mean of the entries in S); zero off the support.
    support = out > 0
    grad = torch.where(support, grad_out.float(), 0.0)
    mean = grad.sum(-1, keepdim=True) / support.sum(-1, keepdim=True)
    return torch.where(support, grad - mean, 0.0).to(grad_out.dtype)


class ProjectSimplexFunction(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, iters):
        out = project_simplex_forward(x, iters)
        ctx.save_for_backward(out)
        return out

    @staticmethod
    def backward(ctx, grad_out):
        (out,) = ctx.saved_tensors
        return project_simplex_backward(out, grad_out), None
