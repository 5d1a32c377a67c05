"""CLIP text encoder passes, including one that starts from word embeddings.

transformers 5's `CLIPTextModel.forward` takes no `inputs_embeds`, but the
attack optimises word embeddings directly: they are assembled with positions (kernels) and
`encode_hidden` runs the text model's causal encoder and final layer norm by hand.
Only `last_hidden_state` is produced: SD v1.x conditions on it, never on the
pooled output, so nothing here depends on the config's end-token id (SD v1.4's
text encoder config still carries the legacy bos 0 / eos 2 / pad 1).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from transformers import CLIPTextModel
from transformers.masking_utils import create_causal_mask

from advunlearn_fast.kernels import assemble_prompt_embeddings
from advunlearn_fast.models.insertion import AdversarialLayout


def tokenize(tokenizer, prompts: list[str]) -> torch.Tensor:
    """Token ids [B, L] padded to the tokenizer's full length, as SD v1.x pipelines do."""
    return tokenizer(
        prompts, padding="max_length", max_length=tokenizer.model_max_length, truncation=True, return_tensors="pt"
    ).input_ids


def text_transformer(text_encoder: CLIPTextModel):
    """The module holding the encoder's embeddings, layers and final norm: transformers 4.x nests
    them under `.text_model`, 5.x holds them directly."""
    return getattr(text_encoder, "text_model", text_encoder)


def token_table(text_encoder: CLIPTextModel) -> torch.Tensor:
    """The word-embedding matrix [vocab, dim]."""
    return text_transformer(text_encoder).embeddings.token_embedding.weight


def position_table(text_encoder: CLIPTextModel) -> torch.Tensor:
    """The position-embedding matrix [max_positions, dim]."""
    return text_transformer(text_encoder).embeddings.position_embedding.weight


def encode_hidden(text_encoder: CLIPTextModel, hidden: torch.Tensor) -> torch.Tensor:
    """Last hidden state from embeddings that already include positions [B, L, D]."""
    model = text_transformer(text_encoder)
    # Positional: the fourth parameter is `past_key_values` in transformers 5.17 (the GPU image's) and `cache` in 5.24.
    mask = create_causal_mask(model.config, hidden, None, None)
    out = model.encoder(inputs_embeds=hidden, attention_mask=mask, is_causal=True).last_hidden_state
    return model.final_layer_norm(out)


def encode_ids(text_encoder: CLIPTextModel, ids: torch.Tensor) -> torch.Tensor:
    """Last hidden state of token ids [B, L] through the stock forward."""
    return text_encoder(input_ids=ids).last_hidden_state


def adversarial_condition(
    text_encoder, layout: AdversarialLayout, adv: torch.Tensor, backend: str, onehot_lookup: bool = False
) -> torch.Tensor:
    """The encoder's conditioning [B, L, D] with `adv` in the layout's slots: `adv` [k, D] gives
    one prompt (B = 1), [B, k, D] one per candidate, encoded as one batch. `layout` is one
    prompt's, shared by all candidates, or a stack of B layouts (`stack_layouts`), one each.

    `onehot_lookup` reproduces the authors' word-embedding lookup (one-hot rows times the
    whole vocabulary matrix; the reference engine's cost), with the same result as the gather.
    """
    device = adv.device
    batch = adv if adv.dim() == 3 else adv[None]
    count = batch.shape[0]
    table = token_table(text_encoder)
    ids = layout.ids.to(device).reshape(-1, layout.ids.shape[-1])
    positions = layout.positions.to(device).reshape(ids.shape[0], -1)
    if onehot_lookup:
        table = F.one_hot(ids.reshape(-1), table.shape[0]).to(table.dtype) @ table
        ids = torch.arange(ids.numel(), device=device).reshape(ids.shape)
    if ids.shape[0] == 1:  # one layout for every candidate
        ids, positions = ids.repeat(count, 1), positions.repeat(count, 1)
    hidden = assemble_prompt_embeddings(
        table, ids, batch, positions, position_table(text_encoder), add=layout.add, backend=backend,
    )
    return encode_hidden(text_encoder, hidden)
