"""A seeded, tiny, SD-v1-shaped model built in code, for smoke runs and tests.

It has SD v1.x's structure where the code cares: a 12-layer CLIP text encoder
whose config carries SD v1.4's legacy token ids (bos 0, eos 2, pad 1), a
cross-attention UNet over 4-channel latents, a KL VAE (so that it also runs in
`StableDiffusionPipeline`), and SD's DDIM noise schedule. Widths are tiny.
"""

from __future__ import annotations

import torch
from diffusers import AutoencoderKL, DDIMScheduler, UNet2DConditionModel
from transformers import CLIPTextConfig, CLIPTextModel

from advunlearn_fast.models.vocab import build_clip_tokenizer
from advunlearn_fast.prompts import RELATED_TERMS, authors_retain_prompts

TINY_WIDTH = 32
TINY_LAYERS = 12


def _vocabulary() -> list[str]:
    """One token each: the words of the built-in retain set and of the known concepts and their
    related terms."""
    text = " ".join(authors_retain_prompts() + list(RELATED_TERMS))
    text += " " + " ".join(w for terms in RELATED_TERMS.values() for w in terms)
    return sorted({w for w in text.lower().split() if w.isalpha()})


def tiny_scheduler() -> DDIMScheduler:
    return DDIMScheduler(
        beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
        clip_sample=False, set_alpha_to_one=False, steps_offset=1,
    )


def build_tiny_model(seed: int = 0) -> dict:
    """Tokenizer, text encoder, UNet, VAE and scheduler of the tiny model, seeded."""
    tokenizer = build_clip_tokenizer(_vocabulary(), model_max_length=77)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        text_encoder = CLIPTextModel(
            CLIPTextConfig(
                vocab_size=len(tokenizer), hidden_size=TINY_WIDTH, intermediate_size=2 * TINY_WIDTH,
                num_hidden_layers=TINY_LAYERS, num_attention_heads=4, max_position_embeddings=77,
                hidden_act="quick_gelu", bos_token_id=0, eos_token_id=2, pad_token_id=1,
            )
        )
        unet = UNet2DConditionModel(
            sample_size=8, in_channels=4, out_channels=4, layers_per_block=1,
            block_out_channels=(32, 64), down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
            up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"), cross_attention_dim=TINY_WIDTH,
            attention_head_dim=8, norm_num_groups=8,
        )
        vae = AutoencoderKL(
            in_channels=3, out_channels=3, latent_channels=4, block_out_channels=(16, 32),
            down_block_types=("DownEncoderBlock2D",) * 2, up_block_types=("UpDecoderBlock2D",) * 2,
            layers_per_block=1, norm_num_groups=8, sample_size=16,
        )
    return {
        "tokenizer": tokenizer, "text_encoder": text_encoder.eval(), "unet": unet.eval(),
        "vae": vae.eval(), "scheduler": tiny_scheduler(),
    }


def build_sd_v1_random(seed: int = 0) -> dict:
    """SD v1.x's full-size architecture (CLIP ViT-L/14 text encoder, 860M-parameter UNet) with
    random weights and a byte-level tokenizer padded to CLIP's 49408 ids: benchmarks measure
    real sizes without downloading weights. Its outputs mean nothing."""
    tokenizer = build_clip_tokenizer(_vocabulary(), model_max_length=77)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        text_encoder = CLIPTextModel(
            CLIPTextConfig(
                vocab_size=49408, hidden_size=768, intermediate_size=3072, num_hidden_layers=12,
                num_attention_heads=12, max_position_embeddings=77, hidden_act="quick_gelu",
                bos_token_id=0, eos_token_id=2, pad_token_id=1,
            )
        )
        unet = UNet2DConditionModel(
            sample_size=64, in_channels=4, out_channels=4, layers_per_block=2,
            block_out_channels=(320, 640, 1280, 1280), cross_attention_dim=768, attention_head_dim=8,
            down_block_types=("CrossAttnDownBlock2D",) * 3 + ("DownBlock2D",),
            up_block_types=("UpBlock2D",) + ("CrossAttnUpBlock2D",) * 3,
        )
    return {"tokenizer": tokenizer, "text_encoder": text_encoder.eval(), "unet": unet.eval(), "scheduler": tiny_scheduler()}
