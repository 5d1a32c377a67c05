"""Building SD-v1-shaped model folders in code, the way other tools lay them out."""

from __future__ import annotations

import json
from pathlib import Path

import torch
from advunlearn_fast.cli.main import cli
from click.testing import CliRunner
from diffusers import PNDMScheduler
from safetensors.torch import save_file

from advunlearn_fast.models.tiny import build_tiny_model
from advunlearn_fast.outputs import write_tokenizer

# Fast settings for end-to-end runs on the tiny model. On the CPU: the golden losses were recorded
# there, and on CUDA the fast engine's UNet is bf16 and the attack step a CUDA graph.
FAST_ARGS = ["--ddim-steps", "4", "--attack-steps", "2", "--retain-batch", "2", "--quiet", "--device", "cpu"]


def sd14_text_encoder_config(te) -> dict:
    """config.json as SD v1.4 ships it (transformers 4.22 era), legacy token ids included."""
    c = te.config
    return {
        "_name_or_path": "openai/clip-vit-large-patch14", "architectures": ["CLIPTextModel"],
        "attention_dropout": 0.0, "bos_token_id": 0, "dropout": 0.0, "eos_token_id": 2,
        "hidden_act": "quick_gelu", "hidden_size": c.hidden_size, "initializer_factor": 1.0,
        "initializer_range": 0.02, "intermediate_size": c.intermediate_size, "layer_norm_eps": 1e-05,
        "max_position_embeddings": c.max_position_embeddings, "model_type": "clip_text_model",
        "num_attention_heads": c.num_attention_heads, "num_hidden_layers": c.num_hidden_layers,
        "pad_token_id": 1, "projection_dim": 768, "torch_dtype": "float32",
        "transformers_version": "4.22.0.dev0", "vocab_size": c.vocab_size,
    }


def save_sd_folder(folder: Path, seed: int = 0) -> dict:
    """A diffusers SD folder of the tiny model, laid out as SD v1.4's (prefixed text-encoder
    keys, position_ids buffer, 4.x config, PNDM scheduler config). Returns the parts."""
    parts = build_tiny_model(seed)
    folder = Path(folder)
    for sub in ("tokenizer", "text_encoder", "scheduler"):
        (folder / sub).mkdir(parents=True, exist_ok=True)
    write_tokenizer(parts["tokenizer"], folder / "tokenizer")
    te = parts["text_encoder"]
    state = {"text_model." + k: v.contiguous() for k, v in te.state_dict().items()}
    state["text_model.embeddings.position_ids"] = torch.arange(te.config.max_position_embeddings)[None]
    save_file(state, str(folder / "text_encoder" / "model.safetensors"))
    (folder / "text_encoder" / "config.json").write_text(json.dumps(sd14_text_encoder_config(te)))
    parts["unet"].save_pretrained(folder / "unet")
    parts["vae"].save_pretrained(folder / "vae")
    PNDMScheduler.from_config(parts["scheduler"].config, skip_prk_steps=True).save_pretrained(folder / "scheduler")
    (folder / "model_index.json").write_text(json.dumps({
        "_class_name": "StableDiffusionPipeline", "_diffusers_version": "0.2.2",
        "scheduler": ["diffusers", "PNDMScheduler"], "text_encoder": ["transformers", "CLIPTextModel"],
        "tokenizer": ["transformers", "CLIPTokenizer"], "unet": ["diffusers", "UNet2DConditionModel"],
        "vae": ["diffusers", "AutoencoderKL"], "safety_checker": [None, None], "feature_extractor": [None, None],
    }))
    return parts


def save_narrow_encoder(folder: Path) -> Path:
    """A text encoder 16 wide, which fits no model here (the tiny model attends to width 32, the world to 64)."""
    from transformers import CLIPTextConfig, CLIPTextModel

    te = CLIPTextModel(CLIPTextConfig(vocab_size=2000, hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                                      num_attention_heads=2, max_position_embeddings=77))
    te.save_pretrained(folder)
    return folder


def run_cli(*args):
    """Invoke `advunlearn` through click; returns the click Result."""
    return CliRunner().invoke(cli, [str(a) for a in args], catch_exceptions=True)


def assert_refused(result, message):
    """Bad input: exit status 2 and one line, `advunlearn: error: ...` naming the problem."""
    assert result.exit_code == 2, result.output
    assert "Traceback" not in result.output
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("advunlearn: error:"), result.output
    assert message in lines[0], lines[0]
