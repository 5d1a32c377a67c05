"""The evaluation attacks as pure functions: UnlearnDiffAtk and the soft-prompt upper bound.

Both minimise the diffusion-classifier loss ||eps - UNet_victim(x_tgt noised at t, t, c_adv)||^2
of a target image x_tgt (EVALUATION.md), visiting timesteps in order with a block of Adam
steps at each. After each block the caller judges the current adversarial prompt and may
stop the attack. The variables differ:
- UnlearnDiffAtk: one relaxed one-hot vector per adversarial token over the whole vocabulary,
  kept on the probability simplex; the forward pass uses a one-hot token drawn from it and
  the gradient passes straight through to the relaxed vector;
- soft prompt: the adversarial word embeddings themselves (white-box, not a real prompt).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

import torch
import torch.nn.functional as F

from .insertion import AdversarialLayout
from .kernels import adversarial_adam_step_, assemble_prompt_embeddings, onehot_embedding, project_simplex
from .sampling import predict_noise
from .text_encoding import encode_hidden, position_table, token_table

WEIGHT_DECAY = 0.1


def attack_timesteps(count: int, train_timesteps: int = 1000) -> list[int]:
    """`count` timesteps at the centres of equal bins, in order: 10, 30, ..., 990 for 50 of 1000."""
    return [int((2 * i + 1) * train_timesteps // (2 * count)) for i in range(count)]


def uniform_simplex(k: int, vocab: int, device=None) -> torch.Tensor:
    return torch.full((k, vocab), 1.0 / vocab, device=device)


def adversarial_condition(
    text_encoder, layout: AdversarialLayout, adv: torch.Tensor, backend: str, onehot_lookup: bool = False
) -> torch.Tensor:
    """The encoder's conditioning [B, L, D] for a prompt layout with `adv` in its slots:
    `adv` [k, D] gives one prompt (B = 1), [B, k, D] one per candidate, encoded as one batch.

    `onehot_lookup` reproduces the authors' word-embedding lookup (one-hot rows times the
    whole vocabulary matrix; the reference engine's cost), with the same result as the gather.
    """
    device = adv.device
    batch = adv if adv.dim() == 3 else adv[None]
    table, ids = token_table(text_encoder), layout.ids[None].to(device)
    if onehot_lookup:
        table = F.one_hot(ids[0], table.shape[0]).to(table.dtype) @ table
        ids = torch.arange(ids.shape[1], device=device)[None]
    count = batch.shape[0]
    hidden = assemble_prompt_embeddings(
        table, ids.repeat(count, 1), batch, layout.positions[None].to(device).repeat(count, 1),
        position_table(text_encoder), add=layout.add, backend=backend,
    )
    return encode_hidden(text_encoder, hidden)


def diffusion_classifier_loss(unet, alphas_cumprod: torch.Tensor, x_target: torch.Tensor, t: int,
                              noise: torch.Tensor, cond: torch.Tensor) -> torch.Tensor:
    """||noise - UNet(x_target noised to t with noise, t, cond)||^2 (mean)."""
    a = alphas_cumprod[t].to(x_target.device, torch.float32)
    noised = (a.sqrt() * x_target.float() + (1 - a).sqrt() * noise.float()).to(x_target.dtype)
    return F.mse_loss(predict_noise(unet, noised, t, cond).float(), noise.float())


@dataclass
class AttackResult:
    variables: torch.Tensor  # relaxed vectors [k, V] or embeddings [k, D]
    losses: list[float] = field(default_factory=list)
    timesteps_used: list[int] = field(default_factory=list)
    stopped: bool = False  # the caller's check succeeded

    @property
    def steps_used(self) -> int:
        return len(self.losses)


def optimise_in_blocks(
    variables: torch.Tensor,
    loss_at: Callable[[torch.Tensor, int], torch.Tensor],
    timesteps: list[int],
    steps_per_timestep: int,
    lr: float,
    weight_decay: float,
    backend: str,
    after_step: Callable[[torch.Tensor], torch.Tensor] | None = None,
    after_block: Callable[[torch.Tensor, int], bool] | None = None,
) -> AttackResult:
    """Adam (one state for the whole attack) on `loss_at(variables, t)`, `steps_per_timestep`
    steps per timestep in order. `after_step` maps the variables back to their feasible set;
    `after_block(variables, t)` returning True ends the attack early."""
    x = variables.detach().clone().contiguous()
    exp_avg, exp_avg_sq = torch.zeros_like(x), torch.zeros_like(x)
    result = AttackResult(x)
    for t in timesteps:
        for _ in range(steps_per_timestep):
            x.requires_grad_(True)
            loss = loss_at(x, t)
            (grad,) = torch.autograd.grad(loss, x)
            x = x.detach()
            adversarial_adam_step_(x, grad, exp_avg, exp_avg_sq, result.steps_used + 1, lr,
                                   weight_decay=weight_decay, backend=backend)
            if after_step is not None:
                x = after_step(x).contiguous()
            result.losses.append(float(loss.detach()))
        result.timesteps_used.append(t)
        result.variables = x
        if after_block is not None and after_block(x, t):
            result.stopped = True
            break
    return result


def unlearndiffatk(
    relaxed_init: torch.Tensor,
    embedding_loss: Callable[[torch.Tensor, int], torch.Tensor],
    table: torch.Tensor,
    timesteps: list[int],
    steps_per_timestep: int,
    lr: float,
    generator: torch.Generator,
    backend: str,
    weight_decay: float = WEIGHT_DECAY,
    after_block: Callable[[torch.Tensor, int], bool] | None = None,
) -> AttackResult:
    """UnlearnDiffAtk over relaxed one-hot vectors [k, V]; `embedding_loss(adv [k, D], t)` is the
    victim's loss with those word embeddings in the adversarial slots. Tokens are drawn from
    the relaxed vectors during optimisation; `after_block` gets the vectors (decode by argmax)."""

    def loss_at(relaxed, t):
        return embedding_loss(onehot_embedding(relaxed, table, sample=True, generator=generator), t)

    start = project_simplex(relaxed_init.float(), backend=backend)
    return optimise_in_blocks(
        start, loss_at, timesteps, steps_per_timestep, lr, weight_decay, backend,
        after_step=lambda x: project_simplex(x, backend=backend), after_block=after_block,
    )


def soft_prompt(
    embeddings_init: torch.Tensor,
    embedding_loss: Callable[[torch.Tensor, int], torch.Tensor],
    timesteps: list[int],
    steps_per_timestep: int,
    lr: float,
    backend: str,
    after_block: Callable[[torch.Tensor, int], bool] | None = None,
) -> AttackResult:
    """The continuous attack: the word embeddings [k, D] are the variables (no decay, no projection)."""
    return optimise_in_blocks(
        embeddings_init.float(), embedding_loss, timesteps, steps_per_timestep, lr, 0.0, backend,
        after_block=after_block,
    )


def nearest_tokens(embeddings: torch.Tensor, table: torch.Tensor) -> torch.Tensor:
    """Vocabulary ids whose embeddings are nearest to each row [k, D]: how a soft prompt reads."""
    return torch.cdist(embeddings.float(), table.float()).argmin(-1)
