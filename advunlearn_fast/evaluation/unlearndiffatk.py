"""The evaluation attacks as pure functions: UnlearnDiffAtk and the soft-prompt upper bound.

Both minimise the diffusion-classifier loss ||eps - UNet_victim(x_tgt noised at t, t, c_adv)||^2
of a target image x_tgt (EVALUATION.md), visiting timesteps in order with a block of Adam
steps at each. After each block the caller judges the current adversarial prompts and may
stop the attack on each. Several prompts are attacked as one batch (one UNet call per step):
their variables are stacked, the loss is the sum of their own losses, so each gets its own
gradient, and Adam is elementwise, so each follows the trajectory it would alone. Both take
the victim as an `EmbeddingStep`: word embeddings in the adversarial slots -> each prompt's
loss and its gradient with respect to those embeddings (the part that runs on the device,
and that the caller may replay as a CUDA graph). The variables differ:
- UnlearnDiffAtk (the authors' text_grad attack): one relaxed one-hot vector per adversarial
  token over the whole vocabulary, kept on the probability simplex; the forward pass uses a
  one-hot token drawn from it, the gradient passes straight through to the relaxed vector and
  is clipped to [-1, 1] before Adam (lr 0.01, weight decay 0.1), as theirs;
- soft prompt: the adversarial word embeddings themselves (white-box, not a real prompt).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

import torch
import torch.nn.functional as F

from advunlearn_fast.kernels import adversarial_adam_step_, onehot_embedding, project_simplex
from advunlearn_fast.models.diffusion import predict_noise

WEIGHT_DECAY = 0.1
# The authors' straight-through one-hot passes its gradient through a hardtanh: every entry of
# the gradient on the relaxed vectors is clipped to [-1, 1] before Adam sees it.
GRADIENT_CLIP = 1.0


def max_attack_timesteps(train_timesteps: int = 1000) -> int:
    """The most timestep blocks whose centres are distinct and past timestep 0: one per two
    training timesteps (500 of 1000: 1, 3, ..., 999); beyond it centres repeat and the first is 0."""
    return train_timesteps // 2


def attack_timesteps(count: int, train_timesteps: int = 1000) -> list[int]:
    """`count` timesteps at the centres of equal bins, in order: 10, 30, ..., 990 for 50 of 1000."""
    if not 1 <= count <= max_attack_timesteps(train_timesteps):
        raise ValueError(f"{count} timestep blocks do not fit {train_timesteps} training timesteps")
    return [int((2 * i + 1) * train_timesteps // (2 * count)) for i in range(count)]


def uniform_simplex(k: int, vocab: int, device=None) -> torch.Tensor:
    return torch.full((k, vocab), 1.0 / vocab, device=device)


def diffusion_classifier_loss(unet, alphas_cumprod: torch.Tensor, x_target: torch.Tensor, t,
                              noise: torch.Tensor, cond: torch.Tensor) -> torch.Tensor:
    """||noise - UNet(x_target noised to t with noise, t, cond)||^2, the mean per target [B].
    `t` is a Python int or a one-element tensor on the UNet's device with `alphas_cumprod` there
    too (a recorded CUDA graph must read the timestep from a buffer, not freeze it)."""
    a = alphas_cumprod[t].to(x_target.device, torch.float32).reshape(-1, 1, 1, 1)
    noised = (a.sqrt() * x_target.float() + (1 - a).sqrt() * noise.float()).to(x_target.dtype)
    error = F.mse_loss(predict_noise(unet, noised, t, cond).float(), noise.float(), reduction="none")
    return error.flatten(1).mean(1)


@dataclass
class AttackResult:
    """One prompt's attack."""

    variables: torch.Tensor  # relaxed vectors [k, V] or embeddings [k, D]
    losses: list[float] = field(default_factory=list)
    timesteps_used: list[int] = field(default_factory=list)
    stopped: bool = False  # the caller's check succeeded

    @property
    def steps_used(self) -> int:
        return len(self.losses)


# Which prompts of the batch are still attacked (their indices in it, in order); the variables
# and losses passed to and returned by the callbacks are those prompts' rows.
Active = list[int]
# (variables or embeddings, t, active) -> (losses [A], d sum(losses) / d variables)
LossAndGrad = Callable[[torch.Tensor, int, Active], tuple[torch.Tensor, torch.Tensor]]
EmbeddingStep = LossAndGrad  # on the word embeddings [A, k, D] in the adversarial slots
BlockCheck = Callable[[torch.Tensor, int, Active], list[bool]]  # (variables, t, active) -> stop each?


def optimise_in_blocks(
    variables: torch.Tensor,
    loss_and_grad: LossAndGrad,
    timesteps: list[int],
    steps_per_timestep: int,
    lr: float,
    weight_decay: float,
    backend: str,
    after_step: Callable[[torch.Tensor], torch.Tensor] | None = None,
    after_block: BlockCheck | None = None,
    grad_clip: float | None = None,
) -> list[AttackResult]:
    """Adam (one state for the whole attack) on each prompt's loss, `variables` [B, ...] one row
    per prompt of the batch, `steps_per_timestep` steps per timestep in order; `grad_clip`
    clips every gradient entry to [-grad_clip, grad_clip] first. `after_step` maps the
    variables back to their feasible set; `after_block` says for each prompt whether its attack
    ends there. A prompt that ends leaves the batch with its variables and Adam moments, so the
    others go on exactly as they would without it (their step count is the same: every prompt
    starts at the first timestep and leaves after a block)."""
    x = variables.detach().clone().contiguous()
    exp_avg, exp_avg_sq = torch.zeros_like(x), torch.zeros_like(x)
    results = [AttackResult(v) for v in x]
    active = list(range(len(results)))
    step = 0
    for t in timesteps:
        for _ in range(steps_per_timestep):
            losses, grad = loss_and_grad(x, t, active)
            if grad_clip is not None:
                grad = grad.clamp(-grad_clip, grad_clip)
            step += 1
            adversarial_adam_step_(x, grad.contiguous(), exp_avg, exp_avg_sq, step, lr, weight_decay=weight_decay,
                                   backend=backend)
            if after_step is not None:
                x = after_step(x).contiguous()
            for b, loss in zip(active, losses.detach().tolist()):  # one transfer for the batch
                results[b].losses.append(loss)
        stops = after_block(x, t, active) if after_block is not None else [False] * len(active)
        for row, b in enumerate(active):
            results[b].timesteps_used.append(t)
            results[b].variables = x[row]
            results[b].stopped = bool(stops[row])
        keep = [row for row, stop in enumerate(stops) if not stop]
        if len(keep) < len(active):
            x, exp_avg, exp_avg_sq = (v[keep].contiguous() for v in (x, exp_avg, exp_avg_sq))
            active = [active[row] for row in keep]
        if not active:
            break
    return results


def unlearndiffatk(
    relaxed_init: torch.Tensor,
    embedding_step: EmbeddingStep,
    table: torch.Tensor,
    timesteps: list[int],
    steps_per_timestep: int,
    lr: float,
    generators: list[torch.Generator],
    backend: str,
    weight_decay: float = WEIGHT_DECAY,
    after_block: BlockCheck | None = None,
) -> list[AttackResult]:
    """UnlearnDiffAtk over the relaxed one-hot vectors [B, k, V] of B prompts. Each prompt's
    tokens are drawn from its relaxed vectors with its own generator, so its draws do not
    depend on the batch; their embeddings go through `embedding_step`, and the embeddings'
    gradient reaches the relaxed vectors straight through the one-hot lookup. `after_block`
    gets the vectors (decode by argmax)."""

    def loss_and_grad(relaxed, t, active):
        relaxed = relaxed.detach().requires_grad_(True)
        adv = torch.stack([onehot_embedding(relaxed[row], table, sample=True, generator=generators[b])
                           for row, b in enumerate(active)])
        losses, grad_adv = embedding_step(adv.detach(), t, active)
        (grad,) = torch.autograd.grad(adv, relaxed, grad_adv.to(adv.dtype))
        return losses, grad

    start = project_simplex(relaxed_init.float(), backend=backend)
    return optimise_in_blocks(
        start, loss_and_grad, timesteps, steps_per_timestep, lr, weight_decay, backend,
        after_step=lambda x: project_simplex(x, backend=backend), after_block=after_block, grad_clip=GRADIENT_CLIP,
    )


def soft_prompt(
    embeddings_init: torch.Tensor,
    embedding_step: EmbeddingStep,
    timesteps: list[int],
    steps_per_timestep: int,
    lr: float,
    backend: str,
    after_block: BlockCheck | None = None,
) -> list[AttackResult]:
    """The continuous attack: the word embeddings [B, k, D] are the variables (no decay, no
    projection, no clipping)."""
    return optimise_in_blocks(
        embeddings_init.float(), embedding_step, timesteps, steps_per_timestep, lr, 0.0, backend,
        after_block=after_block,
    )


def nearest_tokens(embeddings: torch.Tensor, table: torch.Tensor) -> torch.Tensor:
    """Vocabulary ids whose embeddings are nearest to each row [..., D]: how a soft prompt reads."""
    rows = embeddings.reshape(-1, embeddings.shape[-1]).float()
    return torch.cdist(rows, table.float()).argmin(-1).reshape(embeddings.shape[:-1])
