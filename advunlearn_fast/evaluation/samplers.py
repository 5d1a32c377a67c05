"""Samplers of the images `attack`, `generate` and `eval` make (`--sampler`), built from the
model's own scheduler config, and the guided sampling loop they share.

- `lms`: what the authors sample every evaluation image with (UnlearnDiffAtk's targets and
  judged images, AdvUnlearn's utility images): diffusers' `LMSDiscreteScheduler` built from the
  model's noise schedule alone (betas, training steps, prediction type) with every other
  setting at its default (linspace timesteps, no Karras sigmas), as their scripts construct it;
- `ddim` (eta 0), `pndm` (PLMS, as SD pipelines run it: no Runge-Kutta warm-up) and `dpm`
  (DPM-Solver++ multistep): the model's scheduler config as it is, with `clip_sample` off.

Training's rollouts do not come from here: they use `models.diffusion.ddim_scheduler`.
"""

from __future__ import annotations

import torch
from diffusers import DDIMScheduler, DPMSolverMultistepScheduler, LMSDiscreteScheduler, PNDMScheduler

from advunlearn_fast.errors import UserError

SAMPLERS = ("lms", "ddim", "pndm", "dpm")
# What a scheduler config says about the forward process, as opposed to how a sampler walks it.
NOISE_SCHEDULE_KEYS = ("num_train_timesteps", "beta_start", "beta_end", "beta_schedule", "trained_betas",
                       "prediction_type")


def check_sampler(name: str) -> str:
    if name not in SAMPLERS:
        raise UserError(f"--sampler must be one of {', '.join(SAMPLERS)}, got {name!r}")
    return name


def build_scheduler(name: str, scheduler_config: dict, steps: int, device=None):
    """A fresh scheduler (LMS and PLMS keep state across steps) set to `steps` steps."""
    check_sampler(name)
    if name == "lms":
        schedule = {k: scheduler_config[k] for k in NOISE_SCHEDULE_KEYS if scheduler_config.get(k) is not None}
        scheduler = LMSDiscreteScheduler(**schedule)
    elif name == "ddim":
        scheduler = DDIMScheduler.from_config(scheduler_config, clip_sample=False)
    elif name == "pndm":
        scheduler = PNDMScheduler.from_config(scheduler_config, skip_prk_steps=True)
    else:
        scheduler = DPMSolverMultistepScheduler.from_config(scheduler_config)
    scheduler.set_timesteps(steps, device=device)
    return scheduler


@torch.no_grad()
def sample(unet, scheduler, cond: torch.Tensor, uncond: torch.Tensor, noise: torch.Tensor,
           guidance: float | torch.Tensor) -> torch.Tensor:
    """Latents [B, ...] sampled from `noise` with classifier-free guidance toward `cond` [B, L, D]
    (`uncond` [1, L, D]); `guidance` is one scale or one per latent ([B, 1, 1, 1]). The latents
    stay fp32 whatever the UNet's dtype, and the UNet gets each timestep as the scheduler holds
    it (LMS's are fractional)."""
    z = noise.float() * scheduler.init_noise_sigma
    both = torch.cat([uncond.expand(len(z), -1, -1), cond]).to(unet.dtype)
    for t in scheduler.timesteps:
        z_in = scheduler.scale_model_input(torch.cat([z, z]), t)
        eps_u, eps_c = unet(z_in.to(unet.dtype), t, encoder_hidden_states=both).sample.float().chunk(2)
        z = scheduler.step(eps_u + guidance * (eps_c - eps_u), t, z).prev_sample
    return z
