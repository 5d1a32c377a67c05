"""The diffusers -> CompVis key mapping on SD v1.x's block layout (four levels, two layers per
block, cross-attention in all but the deepest level) at narrow widths: the keys SD v1.x
checkpoints have, and a round trip through diffusers' own single-file loader."""

import pytest
import torch
from diffusers import AutoencoderKL, StableDiffusionPipeline, UNet2DConditionModel
from helpers import save_sd_folder
from safetensors.torch import save_file

from advunlearn_fast.errors import UserError
from advunlearn_fast.export.compvis import text_encoder_to_compvis, unet_to_compvis, vae_to_compvis
from advunlearn_fast.models.tiny import build_tiny_model

# Keys of the released SD v1.4/v1.5 checkpoints where the two layouts differ most: the
# downsamplers (op), the upsamplers (slot 1 after a block without attention, 2 after one with),
# ResBlock renames and skip connections, the middle block, and the VAE's reversed decoder levels
# and 1x1-convolution attention.
SD_V1_KEYS = [
    "model.diffusion_model.input_blocks.0.0.weight",
    "model.diffusion_model.input_blocks.1.1.transformer_blocks.0.attn2.to_k.weight",
    "model.diffusion_model.input_blocks.3.0.op.weight",
    "model.diffusion_model.input_blocks.4.0.skip_connection.weight",
    "model.diffusion_model.input_blocks.6.0.op.weight",
    "model.diffusion_model.input_blocks.9.0.op.weight",
    "model.diffusion_model.input_blocks.11.0.out_layers.3.weight",
    "model.diffusion_model.input_blocks.11.0.emb_layers.1.weight",
    "model.diffusion_model.middle_block.0.in_layers.2.weight",
    "model.diffusion_model.middle_block.1.proj_in.weight",
    "model.diffusion_model.middle_block.2.out_layers.0.bias",
    "model.diffusion_model.output_blocks.0.0.skip_connection.weight",
    "model.diffusion_model.output_blocks.2.1.conv.weight",
    "model.diffusion_model.output_blocks.3.1.transformer_blocks.0.ff.net.0.proj.weight",
    "model.diffusion_model.output_blocks.5.2.conv.weight",
    "model.diffusion_model.output_blocks.8.2.conv.weight",
    "model.diffusion_model.output_blocks.11.1.proj_out.weight",
    "model.diffusion_model.time_embed.0.weight",
    "model.diffusion_model.time_embed.2.bias",
    "model.diffusion_model.out.0.weight",
    "model.diffusion_model.out.2.bias",
    "first_stage_model.encoder.down.0.downsample.conv.weight",
    "first_stage_model.encoder.down.1.block.0.nin_shortcut.weight",
    "first_stage_model.encoder.down.3.block.1.conv2.weight",
    "first_stage_model.encoder.mid.attn_1.proj_out.weight",
    "first_stage_model.encoder.norm_out.weight",
    "first_stage_model.decoder.up.3.upsample.conv.weight",
    "first_stage_model.decoder.up.1.block.0.nin_shortcut.weight",
    "first_stage_model.decoder.up.0.block.2.conv2.weight",
    "first_stage_model.decoder.mid.block_2.norm1.weight",
    "first_stage_model.quant_conv.weight",
    "first_stage_model.post_quant_conv.bias",
    "cond_stage_model.transformer.text_model.embeddings.position_ids",
    "cond_stage_model.transformer.text_model.encoder.layers.11.mlp.fc2.weight",
    "cond_stage_model.transformer.text_model.final_layer_norm.weight",
]
ABSENT = [  # what SD v1.x's layout does not have
    "model.diffusion_model.input_blocks.12.0.op.weight",
    "model.diffusion_model.output_blocks.11.2.conv.weight",
    "first_stage_model.encoder.down.3.downsample.conv.weight",
    "first_stage_model.decoder.up.0.upsample.conv.weight",
]


def sd_shaped_models(seed=0):
    """SD v1.x's UNet and VAE block layout with channels divided by 40 and 8."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        unet = UNet2DConditionModel(
            sample_size=8, in_channels=4, out_channels=4, layers_per_block=2, block_out_channels=(8, 16, 32, 32),
            down_block_types=("CrossAttnDownBlock2D",) * 3 + ("DownBlock2D",),
            up_block_types=("UpBlock2D",) + ("CrossAttnUpBlock2D",) * 3,
            cross_attention_dim=32, attention_head_dim=8, norm_num_groups=4,
        )
        vae = AutoencoderKL(
            in_channels=3, out_channels=3, latent_channels=4, block_out_channels=(16, 32, 64, 64),
            down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4,
            layers_per_block=2, norm_num_groups=8, sample_size=64,
        )
    return unet.eval(), vae.eval()


def to_checkpoint(text_encoder, unet, vae) -> dict:
    state = text_encoder_to_compvis(text_encoder)
    state.update(unet_to_compvis(unet.state_dict(), unet.config))
    state.update(vae_to_compvis(vae.state_dict(), vae.config))
    return state


def test_sd_v1_layout_has_the_released_checkpoints_keys(tmp_path, no_network):
    unet, vae = sd_shaped_models()
    text_encoder = build_tiny_model()["text_encoder"]
    state = to_checkpoint(text_encoder, unet, vae)
    missing = [k for k in SD_V1_KEYS if k not in state]
    assert not missing
    assert not [k for k in ABSENT if k in state]
    assert state["first_stage_model.encoder.mid.attn_1.q.weight"].shape == (64, 64, 1, 1)
    assert len(state) == len(unet.state_dict()) + len(vae.state_dict()) + len(text_encoder.state_dict()) + 1

    # diffusers' own single-file loader, pointed at configs of this shape, reads it back exactly
    folder = tmp_path / "configs"
    save_sd_folder(folder)
    unet.save_pretrained(folder / "unet")
    vae.save_pretrained(folder / "vae")
    path = tmp_path / "sd-shaped.safetensors"
    save_file({k: v.contiguous() for k, v in state.items()}, str(path))
    pipe = StableDiffusionPipeline.from_single_file(str(path), config=str(folder), local_files_only=True)
    for ours, theirs in ((unet, pipe.unet), (vae, pipe.vae), (text_encoder, pipe.text_encoder)):
        loaded = theirs.state_dict()
        assert set(loaded) == set(ours.state_dict())
        for key, value in ours.state_dict().items():
            assert torch.equal(loaded[key], value), key


def test_a_part_outside_the_layout_is_refused_not_dropped():
    unet, _ = sd_shaped_models()
    state = dict(unet.state_dict())
    state["add_embedding.linear_1.weight"] = torch.zeros(2, 2)  # an SDXL-style part
    with pytest.raises(UserError, match=r"UNet has a part SD v1.x's layout does not \(add_embedding"):
        unet_to_compvis(state, unet.config)
