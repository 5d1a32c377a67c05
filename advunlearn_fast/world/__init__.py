"""The concept world: a tiny text-to-image world, its judge and a shipped base model.

16x16 images of one shape (circle, square, triangle, cross) in one of five
colours with a texture (solid, striped, dotted), captioned from templates. The
shipped model uses SD v1.x's classes in pixel space, so erasure and attacks can
be shown end to end on a CPU.
"""

from __future__ import annotations

from pathlib import Path

import torch

from advunlearn_fast.models.loading import WORLD_MODEL_DIR


def world_folder(model: str) -> Path | None:
    """The folder of the concept-world model that `--model` names ('world', or a folder with
    a world.json), None for any other model."""
    folder = WORLD_MODEL_DIR if model == "world" else Path(model).expanduser()
    return folder if (folder / "world.json").is_file() else None


def load_world_model(folder: str | Path = WORLD_MODEL_DIR, device: str = "cpu", dtype: torch.dtype = torch.float32):
    """Tokenizer, text encoder, UNet, DDIM scheduler and world.json of the (shipped) world model."""
    # Imported here so that reading WORLD_MODEL_DIR does not pull in diffusers.
    from advunlearn_fast.world.io import load_world_model as load

    return load(Path(folder), device=device, dtype=dtype)
