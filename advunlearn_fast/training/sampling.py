"""How the frozen diffusion model produces z_t and noise predictions.

The algorithm (losses, attack, schedule) never touches a scheduler: it asks a
trajectory source for a DDIM step index k, training timesteps t, partially
denoised latents z_t and the frozen model's predictions there. `FreshRollouts`
runs the rollouts every time (the authors' structure); `bank.TrajectoryBank`
reads them from a cache built once.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from diffusers import DDIMScheduler

from advunlearn_fast.models.diffusion import draw_noise, partial_rollout, predict_noise
from advunlearn_fast.training.costs import CostMeter
from advunlearn_fast.transfer import to_device


def draw_step_and_timestep(generator: torch.Generator, ddim_steps: int, train_timesteps: int) -> tuple[int, int]:
    """DDIM step index k in [0, K) and training timestep t uniform in [k*T/K, (k+1)*T/K)."""
    k = int(torch.randint(ddim_steps, (1,), generator=generator))
    return k, draw_timestep(generator, k, ddim_steps, train_timesteps)


def draw_timestep(generator: torch.Generator, k: int, ddim_steps: int, train_timesteps: int) -> int:
    low = round(k * train_timesteps / ddim_steps)
    high = round((k + 1) * train_timesteps / ddim_steps)
    return int(torch.randint(low, high, (1,), generator=generator))


@dataclass
class FrozenModel:
    """The original model's pieces that every trajectory source needs."""

    unet: torch.nn.Module
    scheduler: DDIMScheduler
    uncond: torch.Tensor  # [1, L, D]
    concept_conds: torch.Tensor  # [C, L, D]
    retain_conds: torch.Tensor  # [N, L, D]
    latent_shape: tuple
    guidance: float
    meter: CostMeter

    @property
    def ddim_steps(self) -> int:
        return len(self.scheduler.timesteps)

    @property
    def train_timesteps(self) -> int:
        return self.scheduler.config.num_train_timesteps

    def rollout(self, cond, k: int, generator) -> torch.Tensor:
        noise = draw_noise(generator, cond.shape[0], self.latent_shape, cond.device, self.unet.dtype)
        self.meter.add("rollout", 2 * cond.shape[0] * k)
        return partial_rollout(self.unet, self.scheduler, cond, self.uncond, noise, k, self.guidance)

    @torch.no_grad()
    def predict(self, z, t, cond) -> torch.Tensor:
        self.meter.add("targets", z.shape[0])
        return predict_noise(self.unet, z, t, cond)


@dataclass
class DefenderDraw:
    t: torch.Tensor  # [1 + R] timesteps: the concept sample's, then each retain sample's
    z: torch.Tensor  # [1 + R] latents, concept first
    e_uncond: torch.Tensor  # [1] frozen prediction for "" at the concept latent
    e_concept: torch.Tensor  # [1] frozen prediction for the concept
    e_retain: torch.Tensor  # [R] frozen predictions for the retain prompts


class FreshRollouts:
    """A new guided rollout for every draw, as the reference code does."""

    def __init__(self, frozen: FrozenModel):
        self.frozen = frozen

    def attack_draw(self, concept: int, generator):
        f = self.frozen
        k, t = draw_step_and_timestep(generator, f.ddim_steps, f.train_timesteps)
        cond = f.concept_conds[concept : concept + 1]
        z = f.rollout(cond, k, generator)
        return torch.tensor([t]), z, f.predict(z, t, cond)

    def defender_draw(self, concept: int, retain: torch.Tensor, generator) -> DefenderDraw:
        """One k and t for the concept and every retain prompt, one batched rollout."""
        f = self.frozen
        k, t = draw_step_and_timestep(generator, f.ddim_steps, f.train_timesteps)
        c_p = f.concept_conds[concept : concept + 1]
        retain = to_device(retain, c_p.device)
        z = f.rollout(torch.cat([c_p, f.retain_conds[retain]]), k, generator)
        e_0, e_p = f.predict(torch.cat([z[:1], z[:1]]), t, torch.cat([f.uncond, c_p])).chunk(2)
        e_r = f.predict(z[1:], t, f.retain_conds[retain])
        return DefenderDraw(torch.full((z.shape[0],), t), z, e_0, e_p, e_r)
