"""Diffusers weights in the original (CompVis / LDM) key layout of an SD v1.x checkpoint, the
layout single-file loaders (web UIs, `from_single_file`) read.

A checkpoint holds three models side by side:
- `cond_stage_model.transformer.` + the CLIP text model's keys (`text_model.` ...);
- `model.diffusion_model.` + the LDM UNet's keys;
- `first_stage_model.` + the LDM autoencoder's keys.

The key mapping is derived from each model's diffusers config (blocks and layers per block),
so it holds for any SD-v1-shaped model, the tiny test model included. A key the mapping does
not know means the model is not SD v1.x-shaped, and is refused rather than dropped.
"""

from __future__ import annotations

import re

import torch

from advunlearn_fast.errors import UserError
from advunlearn_fast.outputs import text_encoder_state

TEXT_ENCODER_PREFIX = "cond_stage_model.transformer."
UNET_PREFIX = "model.diffusion_model."
VAE_PREFIX = "first_stage_model."
POSITION_IDS = "text_model.embeddings.position_ids"

# diffusers ResnetBlock2D parameter -> LDM ResBlock parameter (UNet).
UNET_RESNET = {
    "norm1": "in_layers.0", "conv1": "in_layers.2", "time_emb_proj": "emb_layers.1",
    "norm2": "out_layers.0", "conv2": "out_layers.3", "conv_shortcut": "skip_connection",
}
# In the autoencoder the LDM ResnetBlock keeps diffusers' names but for the shortcut.
VAE_RESNET = {"norm1": "norm1", "conv1": "conv1", "norm2": "norm2", "conv2": "conv2", "conv_shortcut": "nin_shortcut"}
# diffusers' VAE mid-block attention (linear layers) -> LDM AttnBlock (1x1 convolutions).
VAE_ATTENTION = {"group_norm": "norm", "to_q": "q", "to_k": "k", "to_v": "v", "to_out.0": "proj_out"}


def _layers_per_block(config) -> int:
    layers = config["layers_per_block"]
    if not isinstance(layers, int):
        raise UserError(f"cannot write a single-file checkpoint: layers_per_block {layers} differs between blocks, "
                        "which SD v1.x's layout does not have")
    return layers


def unet_prefixes(config) -> dict[str, tuple[str, dict | None]]:
    """diffusers module prefix -> (LDM module prefix, renames of its parameters or None to keep them)."""
    blocks = len(config["block_out_channels"])
    per = _layers_per_block(config)
    has_attention = ["CrossAttn" in kind for kind in config["up_block_types"]]
    table: dict[str, tuple[str, dict | None]] = {
        "conv_in": ("input_blocks.0.0", None),
        "time_embedding.linear_1": ("time_embed.0", None),
        "time_embedding.linear_2": ("time_embed.2", None),
        "conv_norm_out": ("out.0", None),
        "conv_out": ("out.2", None),
        "mid_block.resnets.0": ("middle_block.0", UNET_RESNET),
        "mid_block.attentions.0": ("middle_block.1", None),
        "mid_block.resnets.1": ("middle_block.2", UNET_RESNET),
    }
    for i in range(blocks):
        # LDM numbers input blocks consecutively: conv_in, then per down block its layers and
        # (but for the last block) a downsampler.
        for j in range(per):
            k = 1 + i * (per + 1) + j
            table[f"down_blocks.{i}.resnets.{j}"] = (f"input_blocks.{k}.0", UNET_RESNET)
            table[f"down_blocks.{i}.attentions.{j}"] = (f"input_blocks.{k}.1", None)
        if i < blocks - 1:
            table[f"down_blocks.{i}.downsamplers.0.conv"] = (f"input_blocks.{1 + i * (per + 1) + per}.0.op", None)
        # Up blocks have one layer more; the upsampler follows the last layer's attention, if any.
        for j in range(per + 1):
            k = i * (per + 1) + j
            table[f"up_blocks.{i}.resnets.{j}"] = (f"output_blocks.{k}.0", UNET_RESNET)
            table[f"up_blocks.{i}.attentions.{j}"] = (f"output_blocks.{k}.1", None)
        if i < blocks - 1:
            slot = 2 if has_attention[i] else 1
            table[f"up_blocks.{i}.upsamplers.0.conv"] = (f"output_blocks.{i * (per + 1) + per}.{slot}.conv", None)
    return table


def vae_prefixes(config) -> dict[str, tuple[str, dict | None]]:
    blocks = len(config["block_out_channels"])
    per = _layers_per_block(config)
    table: dict[str, tuple[str, dict | None]] = {"quant_conv": ("quant_conv", None), "post_quant_conv": ("post_quant_conv", None)}
    for part in ("encoder", "decoder"):
        table[f"{part}.conv_in"] = (f"{part}.conv_in", None)
        table[f"{part}.conv_out"] = (f"{part}.conv_out", None)
        table[f"{part}.conv_norm_out"] = (f"{part}.norm_out", None)
        table[f"{part}.mid_block.resnets.0"] = (f"{part}.mid.block_1", VAE_RESNET)
        table[f"{part}.mid_block.resnets.1"] = (f"{part}.mid.block_2", VAE_RESNET)
        table[f"{part}.mid_block.attentions.0"] = (f"{part}.mid.attn_1", VAE_ATTENTION)
    for i in range(blocks):
        for j in range(per):
            table[f"encoder.down_blocks.{i}.resnets.{j}"] = (f"encoder.down.{i}.block.{j}", VAE_RESNET)
        if i < blocks - 1:
            table[f"encoder.down_blocks.{i}.downsamplers.0.conv"] = (f"encoder.down.{i}.downsample.conv", None)
        # The LDM decoder numbers its levels from the lowest resolution up, diffusers from the top.
        level = blocks - 1 - i
        for j in range(per + 1):
            table[f"decoder.up_blocks.{i}.resnets.{j}"] = (f"decoder.up.{level}.block.{j}", VAE_RESNET)
        if i < blocks - 1:
            table[f"decoder.up_blocks.{i}.upsamplers.0.conv"] = (f"decoder.up.{level}.upsample.conv", None)
    return table


def _rename(key: str, prefixes: dict[str, tuple[str, dict | None]], what: str) -> str:
    # Module prefixes are matched whole (dot-bounded), the longest first: `resnets.1` is
    # never taken for `resnets.10`.
    parts = key.split(".")
    for cut in range(len(parts) - 1, 0, -1):
        module = ".".join(parts[:cut])
        if module in prefixes:
            target, renames = prefixes[module]
            tail = ".".join(parts[cut:])
            if renames is not None:
                name, _, leaf = tail.rpartition(".")
                if name not in renames:
                    break
                tail = f"{renames[name]}.{leaf}"
            return f"{target}.{tail}"
    raise UserError(f"cannot write a single-file checkpoint: the {what} has a part SD v1.x's layout does not ({key})")


def unet_to_compvis(state: dict[str, torch.Tensor], config) -> dict[str, torch.Tensor]:
    prefixes = unet_prefixes(config)
    return {UNET_PREFIX + _rename(k, prefixes, "UNet"): v for k, v in state.items()}


def vae_to_compvis(state: dict[str, torch.Tensor], config) -> dict[str, torch.Tensor]:
    prefixes = vae_prefixes(config)
    out = {}
    for key, value in state.items():
        new = _rename(key, prefixes, "VAE")
        if re.search(r"\.mid\.attn_1\.(q|k|v|proj_out)\.weight$", new) and value.dim() == 2:
            value = value[:, :, None, None]  # linear [C, C] -> 1x1 convolution [C, C, 1, 1]
        out[VAE_PREFIX + new] = value
    return out


def text_encoder_to_compvis(text_encoder) -> dict[str, torch.Tensor]:
    """The CLIP text model under `cond_stage_model.transformer.text_model.`, with the
    position_ids buffer SD v1.x checkpoints carry (int64 0..L-1)."""
    state = text_encoder_state(text_encoder)
    positions = int(text_encoder.config.max_position_embeddings)
    state[POSITION_IDS] = torch.arange(positions, dtype=torch.int64)[None]
    return {TEXT_ENCODER_PREFIX + k: v for k, v in state.items()}
