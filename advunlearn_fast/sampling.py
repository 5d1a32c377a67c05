"""How the frozen diffusion model produces z_t and noise predictions.

The algorithm (losses, attack, schedule) never touches a scheduler: it asks this
module for a DDIM step index k, a training timestep t, a partially denoised
latent z_t, and frozen noise predictions. Keeping it here lets another engine
obtain the same quantities differently (a cache of rollouts, lower precision).
"""

from __future__ import annotations

import torch
from diffusers import DDIMScheduler


def ddim_scheduler(scheduler_config: dict, steps: int) -> DDIMScheduler:
    """A DDIM (eta 0) scheduler with the model's noise schedule, set to `steps` steps."""
    scheduler = DDIMScheduler.from_config(scheduler_config)
    scheduler.set_timesteps(steps)
    return scheduler


def draw_step_and_timestep(generator: torch.Generator, ddim_steps: int, train_timesteps: int) -> tuple[int, int]:
    """DDIM step index k in [0, K) and training timestep t uniform in [k*T/K, (k+1)*T/K)."""
    k = int(torch.randint(ddim_steps, (1,), generator=generator))
    low = round(k * train_timesteps / ddim_steps)
    high = round((k + 1) * train_timesteps / ddim_steps)
    t = int(torch.randint(low, high, (1,), generator=generator))
    return k, t


def predict_noise(unet, z: torch.Tensor, t: int, cond: torch.Tensor) -> torch.Tensor:
    """UNet noise prediction for a batch of latents at one timestep."""
    timesteps = torch.full((z.shape[0],), t, device=z.device, dtype=torch.long)
    return unet(z, timesteps, encoder_hidden_states=cond.to(z.dtype)).sample


def guided_noise(unet, z: torch.Tensor, t, cond: torch.Tensor, uncond: torch.Tensor, guidance: float) -> torch.Tensor:
    """Classifier-free guided prediction, conditional and unconditional in one UNet call."""
    batch = z.shape[0]
    both = torch.cat([uncond.expand(batch, -1, -1), cond])
    timesteps = torch.full((2 * batch,), int(t), device=z.device, dtype=torch.long)
    eps_u, eps_c = unet(torch.cat([z, z]), timesteps, encoder_hidden_states=both.to(z.dtype)).sample.chunk(2)
    return eps_u + guidance * (eps_c - eps_u)


@torch.no_grad()
def partial_rollout(
    unet, scheduler: DDIMScheduler, cond: torch.Tensor, uncond: torch.Tensor, noise: torch.Tensor, k: int, guidance: float
) -> torch.Tensor:
    """z after the first k DDIM steps from `noise`, guided toward `cond` [B, L, D]."""
    z = noise
    for t in scheduler.timesteps[:k]:
        eps = guided_noise(unet, z, t, cond, uncond, guidance)
        z = scheduler.step(eps, t, z).prev_sample
    return z


def draw_noise(generator: torch.Generator, batch: int, shape: tuple[int, ...], device, dtype) -> torch.Tensor:
    # Drawn on the CPU generator so that a seed gives the same run on any device.
    return torch.randn((batch, *shape), generator=generator).to(device=device, dtype=dtype)
