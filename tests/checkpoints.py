"""The tiny model as an original-format Stable Diffusion v1 single-file checkpoint.

SD v1.x ships as one .ckpt/.safetensors in the CompVis (latent-diffusion) key layout:
`model.diffusion_model.` for the UNet, `first_stage_model.` for the VAE and
`cond_stage_model.transformer.text_model.` for CLIP. The mapping below is written from that
layout for any number of blocks and layers, so that the tiny model stands in for a real file.
"""

from __future__ import annotations

from pathlib import Path

import torch
from safetensors.torch import save_file

UNET, VAE, CLIP = "model.diffusion_model.", "first_stage_model.", "cond_stage_model.transformer.text_model."

# Names inside one block that differ; a prefix maps to (its CompVis prefix, these renames).
UNET_RESNET = {"norm1": "in_layers.0", "conv1": "in_layers.2", "norm2": "out_layers.0", "conv2": "out_layers.3",
               "time_emb_proj": "emb_layers.1", "conv_shortcut": "skip_connection"}
VAE_RESNET = {"conv_shortcut": "nin_shortcut"}
VAE_ATTENTION = {"group_norm": "norm", "to_q": "q", "to_k": "k", "to_v": "v", "to_out.0": "proj_out"}
SAME: dict[str, str] = {}


def _rename(state: dict, prefixes: dict[str, tuple[str, dict[str, str]]]) -> dict:
    out = {}
    for key, value in state.items():
        old = next((p for p in prefixes if key.startswith(p)), None)
        if old is None:
            raise KeyError(f"no CompVis name for {key}")
        new, inner = prefixes[old]
        rest = key[len(old):]
        name, _, kind = rest.rpartition(".")
        out[new + (f"{inner[name]}.{kind}" if name in inner else rest)] = value
    return out


def unet_to_compvis(unet) -> dict:
    config = unet.config
    per_block = config.layers_per_block
    prefixes = {
        "time_embedding.linear_1.": ("time_embed.0.", SAME), "time_embedding.linear_2.": ("time_embed.2.", SAME),
        "conv_in.": ("input_blocks.0.0.", SAME), "conv_norm_out.": ("out.0.", SAME), "conv_out.": ("out.2.", SAME),
        "mid_block.resnets.0.": ("middle_block.0.", UNET_RESNET), "mid_block.attentions.0.": ("middle_block.1.", SAME),
        "mid_block.resnets.1.": ("middle_block.2.", UNET_RESNET),
    }
    for b in range(len(config.down_block_types)):
        for j in range(per_block):
            slot = 1 + b * (per_block + 1) + j
            prefixes[f"down_blocks.{b}.resnets.{j}."] = (f"input_blocks.{slot}.0.", UNET_RESNET)
            prefixes[f"down_blocks.{b}.attentions.{j}."] = (f"input_blocks.{slot}.1.", SAME)
        prefixes[f"down_blocks.{b}.downsamplers.0.conv."] = (f"input_blocks.{(b + 1) * (per_block + 1)}.0.op.", SAME)
    for b, kind in enumerate(config.up_block_types):
        for j in range(per_block + 1):
            slot = b * (per_block + 1) + j
            prefixes[f"up_blocks.{b}.resnets.{j}."] = (f"output_blocks.{slot}.0.", UNET_RESNET)
            prefixes[f"up_blocks.{b}.attentions.{j}."] = (f"output_blocks.{slot}.1.", SAME)
        # The upsampler sits in the block's last slot, after the attention when there is one.
        last = b * (per_block + 1) + per_block
        prefixes[f"up_blocks.{b}.upsamplers.0."] = (f"output_blocks.{last}.{2 if 'CrossAttn' in kind else 1}.", SAME)
    return {UNET + k: v for k, v in _rename(unet.state_dict(), prefixes).items()}


def vae_to_compvis(vae) -> dict:
    n = len(vae.config.down_block_types)
    prefixes = {"quant_conv.": ("quant_conv.", SAME), "post_quant_conv.": ("post_quant_conv.", SAME)}
    for side in ("encoder", "decoder"):
        prefixes |= {
            f"{side}.conv_in.": (f"{side}.conv_in.", SAME), f"{side}.conv_out.": (f"{side}.conv_out.", SAME),
            f"{side}.conv_norm_out.": (f"{side}.norm_out.", SAME),
            f"{side}.mid_block.resnets.0.": (f"{side}.mid.block_1.", VAE_RESNET),
            f"{side}.mid_block.resnets.1.": (f"{side}.mid.block_2.", VAE_RESNET),
            f"{side}.mid_block.attentions.0.": (f"{side}.mid.attn_1.", VAE_ATTENTION),
        }
    for b in range(n):
        for j in range(vae.config.layers_per_block + 1):
            prefixes[f"encoder.down_blocks.{b}.resnets.{j}."] = (f"encoder.down.{b}.block.{j}.", VAE_RESNET)
            # Decoder blocks count from the lowest resolution in diffusers, from the highest in CompVis.
            prefixes[f"decoder.up_blocks.{b}.resnets.{j}."] = (f"decoder.up.{n - 1 - b}.block.{j}.", VAE_RESNET)
        prefixes[f"encoder.down_blocks.{b}.downsamplers.0."] = (f"encoder.down.{b}.downsample.", SAME)
        prefixes[f"decoder.up_blocks.{b}.upsamplers.0."] = (f"decoder.up.{n - 1 - b}.upsample.", SAME)
    out = {}
    for key, value in _rename(vae.state_dict(), prefixes).items():
        if ".mid.attn_1." in key and value.dim() == 2:
            value = value[:, :, None, None]  # CompVis attention projections are 1x1 convolutions
        out[VAE + key] = value
    return out


def clip_to_compvis(text_encoder) -> dict:
    out = {CLIP + k.removeprefix("text_model."): v for k, v in text_encoder.state_dict().items()}
    out[CLIP + "embeddings.position_ids"] = torch.arange(text_encoder.config.max_position_embeddings)[None]
    return out


def compvis_state_dict(parts: dict) -> dict:
    """UNet, VAE and text encoder in one CompVis-layout state dict, with the noise-schedule
    buffers that SD v1 checkpoints carry."""
    state = {**unet_to_compvis(parts["unet"]), **vae_to_compvis(parts["vae"]),
             **clip_to_compvis(parts["text_encoder"])}
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
