"""The soft-prompt attacker: continuous word embeddings optimised against the current model."""

from __future__ import annotations

from typing import Callable

import torch

from .kernels import adversarial_adam_step_


def random_token_embeddings(table: torch.Tensor, count: int, generator: torch.Generator) -> torch.Tensor:
    """Embeddings of `count` vocabulary tokens drawn uniformly: the `random` attack start."""
    ids = torch.randint(table.shape[0], (count,), generator=generator).to(table.device)
    return table[ids].detach().clone()


def soft_prompt_attack(
    adv_init: torch.Tensor,
    loss_fn: Callable[[torch.Tensor], torch.Tensor],
    steps: int,
    lr: float,
    sign_grad: bool,
    backend: str = "torch",
) -> tuple[torch.Tensor, torch.Tensor]:
    """Minimise `loss_fn(adv)` over the adversarial embeddings with Adam (PGD-style, unbounded).

    `adv_init` [R, ...] holds R candidates (restarts) optimised together; `loss_fn` returns
    each candidate's loss [R]. Candidates never interact, so the gradient of the sum gives
    each its own gradient, and Adam is elementwise: R independent attacks in one batch.
    Each step uses only its own gradient (the reference code let them accumulate
    across steps). With `sign_grad` (fast-AT) the gradient is replaced by its sign.
    Returns the final candidates and the losses seen at each step [steps, R]. `backend`
    picks the fused update kernel or its PyTorch reference (advunlearn_fast.kernels).
    """
    adv = adv_init.detach().clone().contiguous().requires_grad_(True)
    exp_avg, exp_avg_sq = torch.zeros_like(adv), torch.zeros_like(adv)
    losses = []
    for step in range(1, steps + 1):
        loss = loss_fn(adv)
        (grad,) = torch.autograd.grad(loss.sum(), adv)
        with torch.no_grad():
            adversarial_adam_step_(adv, grad, exp_avg, exp_avg_sq, step, lr, sign_grad=sign_grad, backend=backend)
        losses.append(loss.detach())
    # One transfer at the end: a .item() per step would wait for the device every step.
    return adv.detach(), torch.stack(losses).float().cpu()
