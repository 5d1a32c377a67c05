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
from transformers import CLIPTextModel
from transformers.masking_utils import create_causal_mask


def tokenize(tokenizer, prompts: list[str]) -> torch.Tensor:
    """Token ids [B, L] padded to the tokenizer's full length, as SD v1.x pipelines do."""
    return tokenizer(
        prompts, padding="max_length", max_length=tokenizer.model_max_length, truncation=True, return_tensors="pt"
    ).input_ids


def _text_transformer(text_encoder: CLIPTextModel):
    # transformers 4.x nests the parts under `.text_model`; 5.x holds them directly.
    return getattr(text_encoder, "text_model", text_encoder)


def token_table(text_encoder: CLIPTextModel) -> torch.Tensor:
    """The word-embedding matrix [vocab, dim]."""
    return _text_transformer(text_encoder).embeddings.token_embedding.weight


def position_table(text_encoder: CLIPTextModel) -> torch.Tensor:
    """The position-embedding matrix [max_positions, dim]."""
    return _text_transformer(text_encoder).embeddings.position_embedding.weight


def encode_hidden(text_encoder: CLIPTextModel, hidden: torch.Tensor) -> torch.Tensor:
    """Last hidden state from embeddings that already include positions [B, L, D]."""
    model = _text_transformer(text_encoder)
    # Positional: the fourth parameter is `past_key_values` in transformers 5.17 (the GPU image's) and `cache` in 5.24.
    mask = create_causal_mask(model.config, hidden, None, None)
    out = model.encoder(inputs_embeds=hidden, attention_mask=mask, is_causal=True).last_hidden_state
    return model.final_layer_norm(out)


def encode_ids(text_encoder: CLIPTextModel, ids: torch.Tensor) -> torch.Tensor:
    """Last hidden state of token ids [B, L] through the stock forward."""
    return text_encoder(input_ids=ids).last_hidden_state
