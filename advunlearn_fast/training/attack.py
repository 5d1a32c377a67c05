"""The soft-prompt attacker: continuous word embeddings optimised against the current model."""

from __future__ import annotations

from typing import Callable

import torch

from advunlearn_fast.kernels import adversarial_adam_step_

LossAndGrad = Callable[..., tuple[torch.Tensor, torch.Tensor]]  # (adv, ...) -> (losses [R], gradient)


def random_token_embeddings(table: torch.Tensor, count: int, generator: torch.Generator) -> torch.Tensor:
    """Embeddings of `count` vocabulary tokens drawn uniformly: the `random` attack start."""
    ids = torch.randint(table.shape[0], (count,), generator=generator).to(table.device)
    return table[ids].detach().clone()


def with_gradient(loss_fn: Callable[..., torch.Tensor]) -> LossAndGrad:
    """`loss_fn(adv, *rest) -> losses [R]` as `(adv, *rest) -> (losses, d sum(losses) / d adv)`."""

    def loss_and_grad(adv: torch.Tensor, *rest: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        adv = adv.detach().requires_grad_(True)
        losses = loss_fn(adv, *rest)
        (grad,) = torch.autograd.grad(losses.sum(), adv)
        return losses.detach(), grad

    return loss_and_grad


def best_candidate(final_losses: torch.Tensor) -> int:
    """The restart with the lowest finite final loss (argmin alone would pick a NaN): one candidate
    that blew up must not become the defender's prompt while the others are usable."""
    finite = torch.where(final_losses.isfinite(), final_losses, torch.inf)
    return int(finite.argmin())


def soft_prompt_attack(
    adv_init: torch.Tensor,
    loss_and_grad: LossAndGrad,
    steps: int,
    lr: float,
    sign_grad: bool,
    backend: str = "torch",
) -> tuple[torch.Tensor, torch.Tensor]:
    """Minimise a loss over the adversarial embeddings with Adam (PGD-style, unbounded).

    `adv_init` [R, ...] holds R candidates (restarts) optimised together; `loss_and_grad(adv)`
    returns each candidate's loss [R] and the gradient of their sum (`with_gradient`). Candidates
    never interact, so that gradient gives each its own, and Adam is elementwise: R independent
    attacks in one batch. Each step uses only its own gradient (the reference code let them
    accumulate across steps). With `sign_grad` (fast-AT) the gradient is replaced by its sign.
    Returns the candidates that the last step evaluated, before its update (as the authors' attack
    returns them: the defender then trains on the embeddings whose loss was last measured), and
    the losses seen at each step [steps, R].
    `backend` picks the fused update kernel or its PyTorch reference (advunlearn_fast.kernels).
    """
    adv = adv_init.detach().clone().contiguous()
    exp_avg, exp_avg_sq = torch.zeros_like(adv), torch.zeros_like(adv)
    losses = []
    for step in range(1, steps + 1):
        loss, grad = loss_and_grad(adv)
        losses.append(loss)
        if step == steps:  # the authors' last update moves embeddings that nothing reads
            break
        adversarial_adam_step_(adv, grad, exp_avg, exp_avg_sq, step, lr, sign_grad=sign_grad, backend=backend)
    # One transfer at the end: a .item() per step would wait for the device every step.
    return adv, torch.stack(losses).float().cpu()
