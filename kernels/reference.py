"""Plain-PyTorch references of the attack-step kernels.

They define what each kernel computes, serve as the fallback where Triton cannot run, and are
what tests and benchmarks compare the kernels with. Arithmetic is done in fp32 and rounded once
to the storage dtype, as the kernels do, so that bf16/fp16 comparisons measure the kernels and
not two different rounding schedules.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from .onehot import choose_tokens

# Bisection halves a bracket at most 1 wide (see project_simplex_reference). The finishing step
# is exact once no entry lies inside the bracket, and never off by more than its width: after
# 32 halvings, 2.4e-10, i.e. 1e-5 relative even for the 2e-5 entries of UnlearnDiffAtk's uniform
# start. (Measured on 49408-wide random, post-Adam-step and dense rows, 16 halvings already
# match the sorted float64 projection to fp32 rounding; each halving is one pass over the row.)
PROJECT_SIMPLEX_ITERS = 32


def result_dtype(token_table: torch.Tensor, adv: torch.Tensor, position_table: torch.Tensor) -> torch.dtype:
    return torch.promote_types(torch.promote_types(token_table.dtype, adv.dtype), position_table.dtype)


def assemble_prompt_embeddings_reference(
    token_table: torch.Tensor,
    ids: torch.Tensor,
    adv: torch.Tensor,
    adv_positions: torch.Tensor,
    position_table: torch.Tensor,
    add: bool = False,
) -> torch.Tensor:
    B, L = ids.shape
    D = token_table.shape[1]
    # The tables are frozen by contract: detaching keeps them out of the graph even when the
    # caller's embedding module still has requires_grad set.
    rows = F.embedding(ids, token_table.detach()).float()
    index = adv_positions.long().unsqueeze(-1).expand(B, adv_positions.shape[1], D)
    rows = rows.scatter_add(1, index, adv.float()) if add else rows.scatter(1, index, adv.float())
    out = rows + position_table.detach()[:L].float()
    return out.to(result_dtype(token_table, adv, position_table))


@torch.no_grad()
def adversarial_adam_step_reference_(
    param: torch.Tensor,
    grad: torch.Tensor,
    exp_avg: torch.Tensor,
    exp_avg_sq: torch.Tensor,
    step: int,
    lr: float,
    beta1: float = 0.9,
    beta2: float = 0.999,
    eps: float = 1e-8,
    weight_decay: float = 0.0,
    sign_grad: bool = False,
) -> torch.Tensor:
    # Same operations, in the same order, as torch.optim.Adam's single-tensor path; for fp32
    # tensors .float() returns the tensor itself, so the update is in place and op-for-op.
    p, m, v = param.float(), exp_avg.float(), exp_avg_sq.float()
    g = grad.float()
    if sign_grad:
        g = torch.sign(g)
    if weight_decay != 0:
        g = g.add(p, alpha=weight_decay)
    m.lerp_(g, 1 - beta1)
    v.mul_(beta2).addcmul_(g, g, value=1 - beta2)
    bias_correction1 = 1 - beta1**step
    bias_correction2_sqrt = math.sqrt(1 - beta2**step)
    denom = (v.sqrt() / bias_correction2_sqrt).add_(eps)
    p.addcdiv_(m, denom, value=-lr / bias_correction1)
    for stored, computed in ((param, p), (exp_avg, m), (exp_avg_sq, v)):
        if stored is not computed:
            stored.copy_(computed)
    return param


def project_simplex_reference(x: torch.Tensor, iters: int = PROJECT_SIMPLEX_ITERS) -> torch.Tensor:
    """Row-wise Euclidean projection onto the probability simplex, by bisection on tau.

    f(tau) = sum(max(x - tau, 0)) decreases from >= 1 to 0 on [lo, max(x)], where
    lo = max(max(x) - 1, (sum(x) - 1) / V) (the largest entry alone gives f >= 1 at max(x) - 1,
    and f(tau) >= sum(x) - V * tau). Bisection keeps f(lo) >= 1, so {x > lo} contains the true
    support; tau = (sum over {x > lo} of x - 1) / |{x > lo}| then lies in [lo, tau*] and equals
    tau* as soon as no entry falls between lo and tau*.
    """
    xf = x.float()
    # Only the finishing step is differentiable: the bracket picks the support, and tracking it
    # would keep `iters` row-sized temporaries alive for backward.
    xd = xf.detach()
    xmax = xd.amax(-1, keepdim=True)
    lo = torch.maximum(xmax - 1, (xd.sum(-1, keepdim=True) - 1) / xd.shape[-1])
    hi = xmax
    for _ in range(iters):
        mid = (lo + hi) * 0.5
        mid_below_tau = (xd - mid).clamp(min=0).sum(-1, keepdim=True) >= 1
        lo = torch.where(mid_below_tau, mid, lo)
        hi = torch.where(mid_below_tau, hi, mid)
    support = xd > lo
    # where, not a product with the mask: -inf entries (excluded tokens) would give NaN.
    tau = (torch.where(support, xf, 0.0).sum(-1, keepdim=True) - 1) / support.sum(-1, keepdim=True)
    return (xf - tau).clamp(min=0).to(x.dtype)


def project_simplex_sort_reference(x: torch.Tensor) -> torch.Tensor:
    """Exact projection by sorting (float64), the independent check of the bisection."""
    xd = x.double()
    u = xd.sort(-1, descending=True).values
    cssv = u.cumsum(-1) - 1
    ranks = torch.arange(1, xd.shape[-1] + 1, device=x.device, dtype=xd.dtype)
    rho = (u - cssv / ranks > 0).sum(-1, keepdim=True)
    tau = cssv.gather(-1, rho - 1) / rho.to(xd.dtype)
    return (xd - tau).clamp(min=0).to(x.dtype)


class StraightThroughOneHotFunction(torch.autograd.Function):
    @staticmethod
    def forward(ctx, relaxed, index):
        return torch.zeros_like(relaxed).scatter_(-1, index.unsqueeze(-1), 1)

    @staticmethod
    def backward(ctx, grad_out):
        return grad_out, None


def straight_through_onehot(
    relaxed: torch.Tensor, sample: bool = False, generator: torch.Generator | None = None
) -> torch.Tensor:
    """One-hot [..., V] of each row's argmax (or of a token drawn with the row as weights when
    sample=True, from `generator`, as onehot_embedding draws it); the gradient passes to
    `relaxed` unchanged."""
    return StraightThroughOneHotFunction.apply(relaxed, choose_tokens(relaxed, sample, generator))


def onehot_embedding_reference(onehot: torch.Tensor, token_table: torch.Tensor) -> torch.Tensor:
    """The authors' formulation, a one-hot [k, V] times vocabulary [V, D] product.

    Given the output of straight_through_onehot, its gradient reaches the relaxed vectors as
    grad @ token_table.T, which is what onehot_embedding must reproduce without the product.
    """
    return onehot.to(token_table.dtype) @ token_table
