"""The tiny model as an original-format Stable Diffusion v1 single-file checkpoint.

SD v1.x ships as one .ckpt/.safetensors in the CompVis (latent-diffusion) key layout. The keys
are the exporter's (advunlearn_fast/export/compvis.py), which test_export_compvis.py checks
against diffusers' own single-file loader, so that the tiny model stands in for a real file.
"""

from __future__ import annotations

from pathlib import Path

import torch
from safetensors.torch import save_file

from advunlearn_fast.export.compvis import text_encoder_to_compvis, unet_to_compvis, vae_to_compvis


def compvis_state_dict(parts: dict) -> dict:
    """UNet, VAE and text encoder in one CompVis-layout state dict, with the noise-schedule
    buffers that SD v1 checkpoints carry."""
    unet, vae = parts["unet"], parts["vae"]
    state = {**unet_to_compvis(unet.state_dict(), unet.config), **vae_to_compvis(vae.state_dict(), vae.config),
             **text_encoder_to_compvis(parts["text_encoder"])}
    state["betas"] = parts["scheduler"].betas
    state["alphas_cumprod"] = parts["scheduler"].alphas_cumprod
    return {k: v.detach().clone().contiguous() for k, v in state.items()}


def save_single_file(parts: dict, path: Path) -> Path:
    """A .safetensors file, or a .ckpt pickle wrapped as {'state_dict': ..., 'global_step': ...}
    like the released SD v1 checkpoints."""
    state = compvis_state_dict(parts)
    if path.suffix == ".safetensors":
        save_file(state, str(path))
    else:
        torch.save({"state_dict": state, "global_step": 470000}, path)
    return path
