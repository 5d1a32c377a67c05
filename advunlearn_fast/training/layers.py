"""Which parameters are trained: exact text-encoder layer indices, or the UNet ablation sets.

The reference code matched layers by name prefix, so "layer 1" also caught layers
10 and 11. Here layers are taken by index from the encoder's layer list.
"""

from __future__ import annotations

import re

import torch

from advunlearn_fast.errors import UserError
from advunlearn_fast.models.text_encoding import text_transformer

COMPONENT_PREFIXES = {"all": "", "attn": "self_attn.", "mlp": "mlp."}


def parse_layer_spec(spec: str, depth: int) -> list[int]:
    """'all', '0-5', '0,1,2' or a mix ('0-2,7') -> sorted exact indices, checked against depth."""
    text = str(spec).strip().lower()
    if text == "all":
        return list(range(depth))
    indices: set[int] = set()
    for part in text.split(","):
        part = part.strip()
        match = re.fullmatch(r"(\d+)(?:-(\d+))?", part)
        if not match:
            raise UserError(f"--layers {spec!r} cannot be parsed: use all, 0-5 or 0,1,2")
        low = int(match.group(1))
        high = int(match.group(2)) if match.group(2) is not None else low
        if high < low:
            raise UserError(f"--layers {spec!r}: range {part} runs backwards")
        if high >= depth:
            raise UserError(f"--layers {spec!r}: the text encoder has layers 0-{depth - 1}")
        indices.update(range(low, high + 1))
    return sorted(indices)


def text_encoder_depth(text_encoder) -> int:
    return len(text_transformer(text_encoder).encoder.layers)


def text_encoder_parameters(
    text_encoder, layers: list[int], component: str, final_norm: bool
) -> dict[str, torch.nn.Parameter]:
    """Trainable text-encoder parameters by their state-dict name (embeddings never included)."""
    model = text_transformer(text_encoder)
    prefix = COMPONENT_PREFIXES[component]
    chosen = {}
    for index in layers:
        for name, param in model.encoder.layers[index].named_parameters():
            if name.startswith(prefix):
                chosen[f"encoder.layers.{index}.{name}"] = param
    if final_norm:
        for name, param in model.final_layer_norm.named_parameters():
            chosen[f"final_layer_norm.{name}"] = param
    return chosen


# The authors' ESD-u set ('noxattn') also leaves out the time embedding and the output layers
# (`time_embed`, `out.` in CompVis names; diffusers calls them time_embedding, conv_norm_out, conv_out).
NOT_IN_ESD_U = ("time_embedding.", "conv_norm_out.", "conv_out.")


def unet_parameters(unet, target: str) -> dict[str, torch.nn.Parameter]:
    """ESD-x (cross-attention, `attn2`) or ESD-u (everything else but the time embedding and the
    output layers) UNet parameter sets."""
    if target == "unet-xattn":
        return {n: p for n, p in unet.named_parameters() if ".attn2." in n}
    return {n: p for n, p in unet.named_parameters() if ".attn2." not in n and not n.startswith(NOT_IN_ESD_U)}


def freeze_all_but(module: torch.nn.Module, trainable: dict[str, torch.nn.Parameter]) -> None:
    keep = {id(p) for p in trainable.values()}
    for param in module.parameters():
        param.requires_grad_(id(param) in keep)
