"""Reading weights that a user names by path: state dicts only, never code.

Pickle files are read weights-only (`torch.load(..., weights_only=True)`), so a file that
holds anything but tensors and plain containers is refused instead of executed.
"""

from __future__ import annotations

from pathlib import Path

import torch

from advunlearn_fast.errors import UserError
from advunlearn_fast.outputs import TEXT_MODEL_PREFIX


def _first_line(err: Exception) -> str:
    return (str(err).strip().splitlines() or [err.__class__.__name__])[0]


def read_state_dict(path: str | Path, what: str) -> dict[str, torch.Tensor]:
    """The tensors of a .safetensors file or a torch-saved state dict (optionally wrapped as
    {'state_dict': ...}); `what` starts every error message, e.g. '--encoder FILE'."""
    path = Path(path)
    try:
        if path.suffix.lower() == ".safetensors":
            from safetensors.torch import load_file

            state = load_file(str(path))
        else:
            state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:
        raise UserError(f"{what}: cannot read the state dict: {_first_line(err)}") from None
    if isinstance(state, dict) and isinstance(state.get("state_dict"), dict):
        state = state["state_dict"]
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise UserError(f"{what}: expected a state dict of tensors")
    return state


def load_weights(module: torch.nn.Module, state: dict[str, torch.Tensor], what: str, expected: str) -> None:
    """Load `state` into `module`, every key and shape accounted for. BatchNorm's
    num_batches_tracked counter may be absent: older torch versions did not save it and it
    plays no part at inference."""
    own = module.state_dict()
    missing = sorted(k for k in own if k not in state and not k.endswith("num_batches_tracked"))
    unexpected = sorted(k for k in state if k not in own)
    if missing or unexpected:
        example = (missing or unexpected)[0]
        raise UserError(f"{what} is not {expected}: {len(missing)} missing and {len(unexpected)} unexpected "
                        f"keys, e.g. {example!r}")
    wrong = next((k for k, v in state.items() if tuple(v.shape) != tuple(own[k].shape)), None)
    if wrong is not None:
        raise UserError(f"{what} is not {expected}: {wrong} has shape {tuple(state[wrong].shape)}, "
                        f"expected {tuple(own[wrong].shape)}")
    module.load_state_dict(state, strict=False)


# The authors' released text-encoder .pt files are the state dict of their training wrapper:
# the CLIPTextModel under `text_encoder.`, and the same modules again under the wrapper's own
# names. Alias prefix -> the CLIPTextModel prefix it repeats.
WRAPPER_PREFIX = "text_encoder."
WRAPPER_ALIASES = {"embedding.": "embeddings.", "encoder.": "encoder.", "final_layer_norm.": "final_layer_norm."}


def clip_text_state(state: dict[str, torch.Tensor], what: str) -> dict[str, torch.Tensor]:
    """A CLIP text encoder's weights with bare keys ('embeddings.token_embedding.weight', ...) from
    plain CLIPTextModel keys (with or without 'text_model.') or the authors' wrapper layout, whose
    aliases must hold the same tensors as the keys they repeat (a file whose copies disagree is
    ambiguous and refused, naming the key)."""
    if not any(k.startswith(WRAPPER_PREFIX) for k in state):
        return {k.removeprefix(TEXT_MODEL_PREFIX): v for k, v in state.items()}
    bare: dict[str, torch.Tensor] = {}
    aliases: dict[str, tuple[str, torch.Tensor]] = {}
    for key, value in state.items():
        if key.startswith(WRAPPER_PREFIX):
            bare[key.removeprefix(WRAPPER_PREFIX).removeprefix(TEXT_MODEL_PREFIX)] = value
            continue
        alias = next((a for a in WRAPPER_ALIASES if key.startswith(a)), None)
        if alias is None:
            bare[key] = value  # reported as unexpected by the caller
        else:
            aliases[WRAPPER_ALIASES[alias] + key.removeprefix(alias)] = (key, value)
    for name, (key, value) in aliases.items():
        if name.endswith("position_ids"):
            continue  # a buffer some transformers versions save; never a weight
        if name not in bare:
            raise UserError(f"{what}: {key!r} repeats {WRAPPER_PREFIX}{TEXT_MODEL_PREFIX}{name}, which the file lacks")
        if bare[name].shape != value.shape or not torch.equal(bare[name], value):
            raise UserError(f"{what}: {key!r} differs from {WRAPPER_PREFIX}{TEXT_MODEL_PREFIX}{name}, which it "
                            "should repeat: the file is not one encoder")
    return bare
