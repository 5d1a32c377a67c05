import os

import pytest
import torch

from advunlearn_fast.errors import UserError
from advunlearn_fast.models.loading import load_model
from advunlearn_fast.models.tiny import build_tiny_model


def test_sd14_style_folder_loads_weight_for_weight(sd_folder):
    parts = load_model(str(sd_folder))
    reference = build_tiny_model()
    ours = parts.text_encoder.state_dict()
    for name, value in reference["text_encoder"].state_dict().items():
        torch.testing.assert_close(ours[name], value, rtol=0, atol=0)
    for name, value in reference["unet"].state_dict().items():
        torch.testing.assert_close(parts.unet.state_dict()[name], value, rtol=0, atol=0)
    assert parts.text_encoder.config.eos_token_id == 2  # the legacy quirk is kept as shipped
    assert parts.vae_scale == 2 and parts.native_image_size == 16
    assert parts.tokenizer("a cat").input_ids == reference["tokenizer"]("a cat").input_ids


def test_folder_missing_parts_is_refused(tmp_path):
    (tmp_path / "unet").mkdir()
    with pytest.raises(UserError, match="missing tokenizer/, text_encoder/, scheduler/"):
        load_model(str(tmp_path))


def test_truncated_weights_are_refused(sd_folder, tmp_path):
    import shutil

    broken = tmp_path / "broken"
    shutil.copytree(sd_folder, broken)
    weights = broken / "unet" / "diffusion_pytorch_model.safetensors"
    weights.write_bytes(weights.read_bytes()[: os.path.getsize(weights) // 2])
    with pytest.raises(UserError, match="cannot load the UNet"):
        load_model(str(broken))


def test_missing_path_and_offline_hub_id(tmp_path):
    with pytest.raises(UserError, match="does not exist"):
        load_model(str(tmp_path / "nowhere"))
    with pytest.raises(UserError, match="--model /path/to/a/diffusers/folder"):
        load_model("CompVis/stable-diffusion-v1-4")


def test_single_file_needs_its_configs_offline(tmp_path):
    from safetensors.torch import save_file

    ckpt = tmp_path / "model.safetensors"
    save_file({"x": torch.zeros(2)}, str(ckpt))
    with pytest.raises(UserError, match="--model-config"):
        load_model(str(ckpt))
    with pytest.raises(UserError, match="not a diffusers Stable Diffusion folder"):
        load_model(str(ckpt), config_dir=str(tmp_path))


def test_pickled_checkpoint_is_refused(tmp_path, sd_folder):
    ckpt = tmp_path / "evil.ckpt"

    class Payload:
        def __reduce__(self):
            return (os.getcwd, ())

    torch.save({"state_dict": {"x": Payload()}}, ckpt)
    with pytest.raises(UserError, match="pickled objects"):
        load_model(str(ckpt), config_dir=str(sd_folder))


def test_non_checkpoint_file_is_refused(tmp_path):
    path = tmp_path / "notes.txt"
    path.write_text("hello")
    with pytest.raises(UserError, match="not a .safetensors/.ckpt"):
        load_model(str(path))
