"""The world model as a diffusers-style folder, readable by SD v1.x loaders.

The text encoder and tokenizer are written as a train run's are (outputs.py): the
encoder's keys under `text_model.` and the tokenizer with the `vocab.json` and
`merges.txt` transformers 4.x's slow CLIPTokenizer reads.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import diffusers
import torch
from diffusers import DDIMScheduler, UNet2DConditionModel
from transformers import CLIPTextModel, CLIPTokenizer

from advunlearn_fast.models.loading import read_world_meta
from advunlearn_fast.outputs import write_text_encoder, write_tokenizer
from advunlearn_fast.world.model import build_sample_scheduler


@dataclass
class WorldModel:
    tokenizer: CLIPTokenizer
    text_encoder: CLIPTextModel
    unet: UNet2DConditionModel
    scheduler: DDIMScheduler
    meta: dict


def save_world_model(
    folder: Path, tokenizer: CLIPTokenizer, text_encoder: CLIPTextModel, unet: UNet2DConditionModel, meta: dict
) -> None:
    """Writes tokenizer/, text_encoder/, unet/, scheduler/, model_index.json and world.json.

    Other entries of `folder` (the judge's weights) are left alone.
    """
    folder = Path(folder)
    write_tokenizer(tokenizer, folder / "tokenizer")
    write_text_encoder(text_encoder, folder / "text_encoder")
    unet.save_pretrained(folder / "unet", safe_serialization=True)
    build_sample_scheduler().save_pretrained(folder / "scheduler")
    index = {
        "_class_name": "StableDiffusionPipeline",
        "_diffusers_version": diffusers.__version__,
        "feature_extractor": [None, None],
        "requires_safety_checker": False,
        "safety_checker": [None, None],
        "scheduler": ["diffusers", "DDIMScheduler"],
        "text_encoder": ["transformers", "CLIPTextModel"],
        "tokenizer": ["transformers", "CLIPTokenizer"],
        "unet": ["diffusers", "UNet2DConditionModel"],
        "vae": [None, None],
    }
    (folder / "model_index.json").write_text(json.dumps(index, indent=2) + "\n")
    (folder / "world.json").write_text(json.dumps(meta, indent=2) + "\n")


def make_readable(folder: Path) -> None:
    """Mode 0644 on every file: safetensors writes 0600, and an installed package
    must be readable by every user, not only by whoever trained it."""
    for path in Path(folder).rglob("*"):
        if path.is_file():
            path.chmod(0o644)


def load_world_model(folder: Path, device: str | torch.device = "cpu", dtype: torch.dtype = torch.float32) -> WorldModel:
    folder = Path(folder)
    text_encoder = CLIPTextModel.from_pretrained(folder / "text_encoder", local_files_only=True)
    unet = UNet2DConditionModel.from_pretrained(folder / "unet", local_files_only=True, torch_dtype=dtype)
    return WorldModel(
        tokenizer=CLIPTokenizer.from_pretrained(folder / "tokenizer", local_files_only=True),
        text_encoder=text_encoder.to(device=device, dtype=dtype).eval().requires_grad_(False),
        unet=unet.to(device).eval().requires_grad_(False),
        scheduler=DDIMScheduler.from_pretrained(folder / "scheduler", local_files_only=True),
        meta=read_world_meta(folder),
    )
