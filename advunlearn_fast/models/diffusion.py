"""Running the diffusion model: DDIM schedulers, noise predictions, guided rollouts, and the
walk the authors' sampler takes to a training latent z_t.

Shared by training (z_t from partial rollouts) and evaluation (generation).
"""

from __future__ import annotations

import numbers

import torch
from diffusers import DDIMScheduler

from advunlearn_fast.transfer import to_device

# The authors' DDIM sampler (ldm's), whatever the model's scheduler config says: timesteps
# 1, 1 + T/K, ..., walked down from the top; the last step lands on alpha_bar[0]; x0 is never
# clipped. diffusers' DDIM clips x0 to [-1, 1] when a config lacks clip_sample (SD v1.4's own
# config turns it off; a latent is not an image in [-1, 1]).
AUTHORS_DDIM = {"timestep_spacing": "leading", "steps_offset": 1, "set_alpha_to_one": False,
                "clip_sample": False, "thresholding": False}


def ddim_scheduler(scheduler_config: dict, steps: int) -> DDIMScheduler:
    """A DDIM (eta 0) scheduler with the model's noise schedule and the authors' sampler settings,
    set to `steps` steps."""
    scheduler = DDIMScheduler.from_config({**dict(scheduler_config), **AUTHORS_DDIM})
    scheduler.set_timesteps(steps)
    return scheduler


def predict_noise(unet, z: torch.Tensor, t, cond: torch.Tensor) -> torch.Tensor:
    """UNet noise prediction; `t` is one timestep or one per latent."""
    if isinstance(t, numbers.Integral):  # filled on the device: no host-to-device copy
        timesteps = torch.full((1,), int(t), device=z.device, dtype=torch.long)
    else:
        timesteps = to_device(torch.as_tensor(t), z.device, torch.long)
    timesteps = timesteps.expand(z.shape[0])
    return unet(z, timesteps, encoder_hidden_states=cond.to(z.dtype)).sample


def guided_noise(unet, z: torch.Tensor, t, cond: torch.Tensor, uncond: torch.Tensor,
                 guidance: float | torch.Tensor) -> torch.Tensor:
    """Classifier-free guided prediction, conditional and unconditional in one UNet call;
    `guidance` is one scale or a tensor that broadcasts over the batch (one per latent)."""
    batch = z.shape[0]
    both = torch.cat([uncond.expand(batch, -1, -1), cond])
    eps_u, eps_c = predict_noise(unet, torch.cat([z, z]), int(t), both).chunk(2)
    return eps_u + guidance * (eps_c - eps_u)


@torch.no_grad()
def rollout_steps(unet, scheduler: DDIMScheduler, cond, uncond, noise, timesteps, guidance: float | torch.Tensor):
    """Yield z from `noise` and after each DDIM step at `timesteps` (top first), guided toward
    `cond` [B, L, D]. Each step goes from t to t - T/K, K being the scheduler's step count."""
    z = noise
    yield z
    for t in timesteps:
        eps = guided_noise(unet, z, t, cond, uncond, guidance)
        z = scheduler.step(eps, t, z).prev_sample
        yield z


def partial_rollout(unet, scheduler, cond, uncond, noise, timesteps, guidance: float | torch.Tensor) -> torch.Tensor:
    """z after DDIM steps at `timesteps` from noise."""
    for z in rollout_steps(unet, scheduler, cond, uncond, noise, timesteps, guidance):
        pass
    return z


def walk_timesteps(ddim_steps: int, train_timesteps: int) -> list[int]:
    """The timesteps the authors' sampler walks to a training latent z_t, top first: ldm's DDIM
    timesteps 1, 1 + T//K, ..., one per entry of range(0, T, T//K), less the top one, which their
    sampler drops (ldm's ddim.py `timesteps[:t_start]` with t_start = -1, as their training calls
    it). When K divides T that leaves K - 1 timesteps (981 is never run at K = 50); otherwise ldm
    makes more than K and the walk keeps one fewer (K at K = 6 or 30)."""
    stride = train_timesteps // ddim_steps
    count = len(range(0, train_timesteps, stride)) - 1
    return [j * stride + 1 for j in reversed(range(count))]


def walk_steps(k: int, walk_length: int) -> int:
    """How many steps of the walk produce z_t for DDIM index k. The authors' sampler stops right
    after the step whose index (its position in ldm's list, 0 at the bottom) is k - 1, and runs
    the whole walk for k = 0: z ends near timestep (k - 2) * T/K, next to t in
    [k*T/K, (k+1)*T/K). Small k, a nearly clean latent."""
    return walk_length if k == 0 else walk_length - k + 1


def draw_noise(generator: torch.Generator, batch: int, shape: tuple[int, ...], device, dtype) -> torch.Tensor:
    # Drawn on the CPU generator so that a seed gives the same run on any device.
    return torch.randn((batch, *shape), generator=generator).to(device=device, dtype=dtype)
