"""What each training iteration draws: retain prompts, a DDIM index k, a timestep t, the
latent z_t and the frozen model's predictions there.

The algorithm (losses, attack, schedule) never touches a scheduler: it asks a trajectory
source for (t, z_t, predictions). `FreshRollouts` runs the rollouts every time (the authors'
structure); `bank.TrajectoryBank` reads them from a cache built once. Both pair z_t with t
as the authors' sampler does (`diffusion.walk_timesteps`, `diffusion.walk_steps`).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

import torch
from diffusers import DDIMScheduler

from advunlearn_fast.models.diffusion import draw_noise, partial_rollout, predict_noise, walk_steps, walk_timesteps
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


def retain_indices(seed: int, iteration: int, count: int, batch: int) -> torch.Tensor:
    """The retain prompts of one iteration, as the authors' loader draws them: without
    replacement in a random order until fewer than `batch` are left unseen, then from a new
    order. A pure function of (seed, iteration): a resumed run needs no state for it, and a run
    knows beforehand which prompts it will use."""
    per_pass = count // batch
    rounds, slot = divmod(iteration, per_pass)
    digest = hashlib.sha256(f"retain order {seed} {rounds}".encode()).hexdigest()
    order = torch.randperm(count, generator=torch.Generator().manual_seed(int(digest[:15], 16)))
    return order[slot * batch : (slot + 1) * batch]


def rank_seed(seed: int, rank: int) -> int:
    """The seed of a data-parallel rank's generator: the run's seed itself on rank 0 (so that one
    process under torchrun draws what a plain run draws), a hash of (seed, rank) on the others."""
    if rank == 0:
        return seed
    return int(hashlib.sha256(f"rank {seed} {rank}".encode()).hexdigest()[:15], 16)


def retain_prompts_used(seed: int, iterations: int, count: int, batch: int) -> list[int]:
    """Every retain prompt that iterations 0 .. iterations-1 draw, sorted."""
    used: set[int] = set()
    for iteration in range(iterations):
        used.update(retain_indices(seed, iteration, count, batch).tolist())
        if len(used) == count:
            break
    return sorted(used)


@dataclass
class FrozenModel:
    """The original model's pieces that every trajectory source needs."""

    unet: torch.nn.Module  # the original UNet: rollouts and targets
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

    @property
    def walk(self) -> list[int]:
        """The timesteps of the authors' walk from noise to z_t, top first."""
        return walk_timesteps(self.ddim_steps, self.train_timesteps)

    def rollout(self, cond, k: int, generator, unet=None) -> torch.Tensor:
        """z_t for DDIM index k from fresh noise, guided toward `cond`; by the original UNet
        unless another (the one being trained, in the UNet ablations) is given."""
        noise = draw_noise(generator, cond.shape[0], self.latent_shape, cond.device, self.unet.dtype)
        walk = self.walk
        timesteps = walk[: walk_steps(k, len(walk))]
        self.meter.add("rollout", 2 * cond.shape[0] * len(timesteps))
        return partial_rollout(unet or self.unet, self.scheduler, cond, self.uncond, noise, timesteps, self.guidance)

    @torch.no_grad()
    def predict(self, z, t, cond) -> torch.Tensor:
        self.meter.add("targets", z.shape[0])
        return predict_noise(self.unet, z, t, cond)


@dataclass
class DefenderDraw:
    k: int  # the DDIM index drawn (log.jsonl records it)
    t: torch.Tensor  # [1 + R] timesteps: the concept sample's, then each retain sample's
    z: torch.Tensor  # [1 + R] latents, concept first
    e_uncond: torch.Tensor  # [1] frozen prediction for "" at the concept latent
    e_concept: torch.Tensor  # [1] frozen prediction for the concept
    e_retain: torch.Tensor  # [R] frozen predictions for the retain prompts


class FreshRollouts:
    """A new guided rollout for every draw, as the reference code does. `rollout_unet`: the UNet
    that rolls z_t out when it is not the original (the authors roll out with the UNet being
    trained in the UNet ablations)."""

    def __init__(self, frozen: FrozenModel, rollout_unet=None):
        self.frozen = frozen
        self.rollout_unet = rollout_unet

    def attack_draw(self, concept: int, generator):
        f = self.frozen
        k, t = draw_step_and_timestep(generator, f.ddim_steps, f.train_timesteps)
        cond = f.concept_conds[concept : concept + 1]
        z = f.rollout(cond, k, generator, self.rollout_unet)
        return torch.tensor([t]), z, f.predict(z, t, cond)

    def defender_draw(self, concept: int, retain: torch.Tensor, generator) -> DefenderDraw:
        """One k and t for the concept and every retain prompt, one batched rollout."""
        f = self.frozen
        k, t = draw_step_and_timestep(generator, f.ddim_steps, f.train_timesteps)
        c_p = f.concept_conds[concept : concept + 1]
        retain = to_device(retain, c_p.device)
        z = f.rollout(torch.cat([c_p, f.retain_conds[retain]]), k, generator, self.rollout_unet)
        e_0, e_p = f.predict(torch.cat([z[:1], z[:1]]), t, torch.cat([f.uncond, c_p])).chunk(2)
        e_r = f.predict(z[1:], t, f.retain_conds[retain])
        return DefenderDraw(k, torch.full((z.shape[0],), t), z, e_0, e_p, e_r)
