"""Reading weights that a user names by path: state dicts only, never code.

Pickle files are read weights-only (`torch.load(..., weights_only=True)`), so a file that
holds anything but tensors and plain containers is refused instead of executed.
"""

from __future__ import annotations

from pathlib import Path

import torch

from advunlearn_fast.errors import UserError


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
