import json

import pytest
import torch
from diffusers import DiffusionPipeline
from safetensors import safe_open
from transformers import CLIPTextModel

from advunlearn_fast.world import WORLD_MODEL_DIR, load_world_model
from advunlearn_fast.world.evaluate import heldout_accuracy
from advunlearn_fast.world.render import COLOURS, SHAPES, TEXTURES

TARGET = 0.9
# The shipped model measured texture 93.3% on 360 held-out captions (world.json);
# on the 60 captions below one standard error is ~3 points, so the texture guard
# sits lower than the target that the full measurement has to meet.
SMALL_SAMPLE_TEXTURE_FLOOR = 0.8


@pytest.fixture(scope="module")
def world():
    return load_world_model()


def test_folder_layout_and_size():
    for name in ("model_index.json", "world.json", "scheduler/scheduler_config.json", "text_encoder/config.json",
                 "text_encoder/model.safetensors", "unet/config.json", "unet/diffusion_pytorch_model.safetensors",
                 "tokenizer/tokenizer.json", "tokenizer/vocab.json", "tokenizer/merges.txt",
                 "judge/model.safetensors"):
        assert (WORLD_MODEL_DIR / name).is_file(), name
    size = sum(f.stat().st_size for f in WORLD_MODEL_DIR.rglob("*") if f.is_file())
    assert size <= 20 * 2**20
    index = json.loads((WORLD_MODEL_DIR / "model_index.json").read_text())
    assert index["vae"] == [None, None]


def test_world_metadata_describes_the_world(world):
    meta = world.meta
    assert meta["attributes"] == {"colour": list(COLOURS), "shape": list(SHAPES), "texture": list(TEXTURES)}
    assert meta["default_steps"] == 20 and meta["default_guidance"] == 4.0
    assert set(meta["train_templates"]).isdisjoint(meta["heldout_templates"])
    for attribute in ("colour", "shape", "texture"):
        assert meta["heldout_accuracy"][attribute] >= TARGET
    assert meta["heldout_accuracy"]["samples"] >= 300


def test_diffusers_loads_the_folder_as_a_stable_diffusion_pipeline_without_vae():
    pipeline = DiffusionPipeline.from_pretrained(
        WORLD_MODEL_DIR, local_files_only=True, vae=None, safety_checker=None, feature_extractor=None
    )
    assert type(pipeline).__name__ == "StableDiffusionPipeline"
    assert pipeline.vae is None
    assert pipeline.unet.config.in_channels == 3 and pipeline.unet.config.sample_size == 16


def test_scheduler_is_cosine_ddim_without_clipping(world):
    config = world.scheduler.config
    assert type(world.scheduler).__name__ == "DDIMScheduler"
    assert config.beta_schedule == "squaredcos_cap_v2"
    assert config.clip_sample is False
    assert config.prediction_type == "epsilon"


def test_text_encoder_uses_the_sd_v1_key_layout_and_loads_weight_for_weight(world):
    path = WORLD_MODEL_DIR / "text_encoder" / "model.safetensors"
    with safe_open(str(path), "pt") as f:
        stored = {key: f.get_tensor(key) for key in f.keys()}
    assert stored and all(key.startswith("text_model.") for key in stored)
    loaded = CLIPTextModel.from_pretrained(WORLD_MODEL_DIR / "text_encoder", local_files_only=True).state_dict()
    loaded = {key if key.startswith("text_model.") else "text_model." + key: value for key, value in loaded.items()}
    assert loaded.keys() == stored.keys()
    for key, value in stored.items():
        assert torch.equal(loaded[key], value), key


def test_shipped_model_draws_the_prompted_attributes(world):
    # 60 captions: every colour x shape x texture combination once.
    accuracy, _ = heldout_accuracy(world.tokenizer, world.text_encoder, world.unet, world.scheduler, n=60, seed=0)
    assert accuracy["colour"] >= TARGET, accuracy
    assert accuracy["shape"] >= TARGET, accuracy
    assert accuracy["texture"] >= SMALL_SAMPLE_TEXTURE_FLOOR, accuracy
