"""Text-to-image sampling for SD-style parts: classifier-free guided DDIM.

Pixel-space models return images directly; there is no VAE to decode.
"""

from __future__ import annotations

import torch
from diffusers import DDIMScheduler, UNet2DConditionModel
from transformers import CLIPTextModel, CLIPTokenizer

from advunlearn_fast.world.model import DEFAULT_GUIDANCE, DEFAULT_STEPS


def encode_prompts(tokenizer: CLIPTokenizer, text_encoder: CLIPTextModel, prompts: list[str]) -> torch.Tensor:
    ids = tokenizer(
        prompts, padding="max_length", truncation=True, max_length=tokenizer.model_max_length, return_tensors="pt"
    ).input_ids
    return text_encoder(ids.to(text_encoder.device)).last_hidden_state


@torch.no_grad()
def generate(
    tokenizer: CLIPTokenizer,
    text_encoder: CLIPTextModel,
    unet: UNet2DConditionModel,
    scheduler,
    prompts: list[str],
    *,
    seed: int = 0,
    guidance: float = DEFAULT_GUIDANCE,
    steps: int = DEFAULT_STEPS,
    batch_size: int = 128,
) -> torch.Tensor:
    """Images [N, 3, H, W] in [-1, 1], one per prompt.

    All initial noise is drawn up front from one generator seeded with `seed`,
    so an image depends on its prompt's position and the seed, not on
    `batch_size`. The scheduler's config is reused (as DDIM) without touching
    the caller's instance.
    """
    ddim = DDIMScheduler.from_config(scheduler.config)
    ddim.set_timesteps(steps)
    size = unet.config.sample_size
    generator = torch.Generator().manual_seed(seed)
    noise = torch.randn((len(prompts), unet.config.in_channels, size, size), generator=generator)
    empty = encode_prompts(tokenizer, text_encoder, [""])
    images = []
    for start in range(0, len(prompts), batch_size):
        chunk = prompts[start : start + batch_size]
        cond = encode_prompts(tokenizer, text_encoder, chunk)
        context = torch.cat([empty.expand_as(cond), cond]) if guidance != 1.0 else cond
        x = noise[start : start + len(chunk)].to(device=unet.device, dtype=unet.dtype)
        for t in ddim.timesteps:
            model_in = ddim.scale_model_input(x, t)
            if guidance != 1.0:
                model_in = torch.cat([model_in, model_in])
            eps = unet(model_in, t, encoder_hidden_states=context.to(unet.dtype)).sample
            if guidance != 1.0:
                eps_uncond, eps_cond = eps.chunk(2)
                eps = eps_uncond + guidance * (eps_cond - eps_uncond)
            x = ddim.step(eps, t, x).prev_sample
        images.append(x.float().clamp(-1.0, 1.0).cpu())
    return torch.cat(images)
