"""Text-to-image sampling for SD-style parts: classifier-free guided DDIM.

Pixel-space models return images directly; there is no VAE to decode.
"""

from __future__ import annotations

import torch
from diffusers import UNet2DConditionModel
from transformers import CLIPTextModel, CLIPTokenizer

from advunlearn_fast.models.diffusion import ddim_scheduler, partial_rollout
from advunlearn_fast.models.text_encoding import encode_ids, tokenize
from advunlearn_fast.world.model import DEFAULT_GUIDANCE, DEFAULT_STEPS


def encode_prompts(tokenizer: CLIPTokenizer, text_encoder: CLIPTextModel, prompts: list[str]) -> torch.Tensor:
    return encode_ids(text_encoder, tokenize(tokenizer, prompts).to(text_encoder.device))


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
    the caller's instance. Sampling is the engine's guided DDIM rollout, run to the end.
    """
    ddim = ddim_scheduler(scheduler.config, steps)
    size = unet.config.sample_size
    generator = torch.Generator().manual_seed(seed)
    noise = torch.randn((len(prompts), unet.config.in_channels, size, size), generator=generator)
    empty = encode_prompts(tokenizer, text_encoder, [""])
    images = []
    for start in range(0, len(prompts), batch_size):
        chunk = prompts[start : start + batch_size]
        cond = encode_prompts(tokenizer, text_encoder, chunk)
        x = noise[start : start + len(chunk)].to(device=unet.device, dtype=unet.dtype)
        x = partial_rollout(unet, ddim, cond, empty, x, ddim.timesteps, guidance)
        images.append(x.float().clamp(-1.0, 1.0).cpu())
    return torch.cat(images)
