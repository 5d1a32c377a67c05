"""The AdvUnlearn losses (ALGORITHM.md), as pure functions of noise predictions."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def esd_target(eps_uncond: torch.Tensor, eps_concept: torch.Tensor, negative_guidance: float) -> torch.Tensor:
    """e_0 - eta * (e_p - e_0): the frozen model's prediction steered away from the concept."""
    return eps_uncond - negative_guidance * (eps_concept - eps_uncond)


def unlearn_loss(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    return F.mse_loss(pred.float(), target.float())


def retain_loss(pred: torch.Tensor, original: torch.Tensor) -> torch.Tensor:
    """Keeps the trained model's prediction on unrelated prompts where the original's was."""
    return F.mse_loss(pred.float(), original.float())


def attack_loss(pred: torch.Tensor, eps_concept: torch.Tensor) -> torch.Tensor:
    """The attacker wants the unlearned model to predict what the original did for the concept.

    One MSE per attack candidate (pred [R, ...], eps_concept broadcast to it): returns [R].
    """
    errors = F.mse_loss(pred.float(), eps_concept.float().expand_as(pred), reduction="none")
    return errors.flatten(1).mean(1)


def total_loss(unlearn: torch.Tensor, retain: torch.Tensor, retain_weight: float) -> torch.Tensor:
    return unlearn + retain_weight * retain
