"""Architecture of the world's text-to-image model: SD v1.x parts, scaled down.

The pieces are the same classes Stable Diffusion v1.x uses (CLIPTextModel,
UNet2DConditionModel, DDIMScheduler), so engines and attacks written for SD run
on it unchanged; only the UNet works in pixel space (no VAE).
"""

from __future__ import annotations

from diffusers import DDIMScheduler, DDPMScheduler, UNet2DConditionModel
from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

from advunlearn_fast.world.render import IMAGE_SIZE

HIDDEN = 64
DEFAULT_STEPS = 20
DEFAULT_GUIDANCE = 4.0

# One schedule for training and sampling. clip_sample stays off: at guidance 4
# the early x0 estimates leave [-1, 1], and clipping them per channel shifts the
# hue and locks in wrong colours (measured in benchmarks/README.md).
SCHEDULE = dict(
    num_train_timesteps=1000,
    beta_schedule="squaredcos_cap_v2",
    prediction_type="epsilon",
    clip_sample=False,
)


def build_text_encoder(tokenizer: CLIPTokenizer) -> CLIPTextModel:
    config = CLIPTextConfig(
        vocab_size=len(tokenizer),
        hidden_size=HIDDEN,
        intermediate_size=4 * HIDDEN,
        num_hidden_layers=2,
        num_attention_heads=4,
        max_position_embeddings=tokenizer.model_max_length,
        projection_dim=HIDDEN,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    return CLIPTextModel(config)


def build_unet() -> UNet2DConditionModel:
    # Attention only at 8x8, 4x4 and the middle: self-attention over the 256 tokens
    # at 16x16 is a large share of a CPU training step (benchmarks/README.md), while
    # colour and shape are global properties the coarse levels can set and the
    # convolutions spread.
    return UNet2DConditionModel(
        sample_size=IMAGE_SIZE,
        in_channels=3,
        out_channels=3,
        block_out_channels=(32, 64, 64),
        layers_per_block=1,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
        cross_attention_dim=HIDDEN,
        attention_head_dim=4,
        norm_num_groups=8,
    )


def build_train_scheduler() -> DDPMScheduler:
    return DDPMScheduler(**SCHEDULE)


def build_sample_scheduler() -> DDIMScheduler:
    # SD v1.x's DDIM settings (steps_offset 1, final alpha not forced to one),
    # so the same sampler code serves both.
    return DDIMScheduler(**SCHEDULE, set_alpha_to_one=False, steps_offset=1)
