"""The authors' released text-encoder layout (AdvUnlearn's `TextEncoder-*.pt`).

Their training wraps the CLIP text model in a module that holds it as `text_encoder` and, as
attributes of its own, three of its parts: `embedding` (text_model.embeddings), `encoder`
(text_model.encoder) and `final_layer_norm`. They save that wrapper's state dict with
torch.save, so every weight appears twice: under `text_encoder.text_model.` and under its
alias. Their transformers (4.25) kept the embeddings' position_ids buffer in state dicts, so
both copies carry it too (int64 [1, L]). Their scripts load the file by taking the keys under
`text_encoder.` into a CLIPTextModel.
"""

from __future__ import annotations

import torch

from advunlearn_fast.outputs import text_encoder_state

WRAPPED = "text_encoder."
EMBEDDINGS = "text_model.embeddings."
# The wrapper's own names for three parts of text_model, in its attribute order.
ALIASES = (("embedding.", EMBEDDINGS), ("encoder.", "text_model.encoder."), ("final_layer_norm.", "text_model.final_layer_norm."))


def authors_state_dict(text_encoder, dtype: torch.dtype) -> dict[str, torch.Tensor]:
    """The wrapper's state dict, in the order torch would write it: a module's buffers before
    its children, so position_ids leads the embeddings. Aliased keys share one tensor, so the
    file stores each weight once, as theirs does."""
    weights = {k: v.to(dtype) for k, v in text_encoder_state(text_encoder).items()}
    positions = torch.arange(int(text_encoder.config.max_position_embeddings), dtype=torch.int64)[None]
    model = {EMBEDDINGS + "position_ids": positions, **weights}
    state = {WRAPPED + k: v for k, v in model.items()}
    for alias, prefix in ALIASES:
        state.update({alias + k.removeprefix(prefix): v for k, v in model.items() if k.startswith(prefix)})
    return state
