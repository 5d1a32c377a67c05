import json
import os

import pytest
import torch
from checkpoints import save_single_file
from helpers import FAST_ARGS, run_cli
from PIL import Image
from safetensors.torch import load_file
from weights import save_tiny_clip

from advunlearn_fast.errors import UserError
from advunlearn_fast.evaluation.generation import load_vae
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


def test_a_damaged_world_json_is_refused_and_a_sound_one_read_once(sd_folder, tmp_path):
    import shutil

    folder = tmp_path / "world-like"
    shutil.copytree(sd_folder, folder)
    (folder / "world.json").write_text('{"default_steps": 7')
    with pytest.raises(UserError, match="cannot load the config from .*world.json"):
        load_model(str(folder))
    (folder / "world.json").write_text('{"default_steps": 7}')
    assert load_model(str(folder)).world == {"default_steps": 7}
    assert load_model(str(sd_folder)).world is None


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
    with pytest.raises(UserError, match="holds objects other than weights .*, which weights-only loading refuses for safety"):
        load_model(str(ckpt), config_dir=str(sd_folder))


def test_non_checkpoint_file_is_refused(tmp_path):
    path = tmp_path / "notes.txt"
    path.write_text("hello")
    with pytest.raises(UserError, match="not a .safetensors/.ckpt"):
        load_model(str(path))


@pytest.fixture(scope="module", params=[".safetensors", ".ckpt"])
def single_file(request, tmp_path_factory):
    """The tiny model with other weights than sd_folder's (seed 1), as an SD v1 single file:
    whatever loads from it must come from the file, not from the config folder."""
    parts = build_tiny_model(seed=1)
    path = save_single_file(parts, tmp_path_factory.mktemp("single") / f"sd-v1{request.param}")
    return path, parts


def assert_same_weights(module, reference):
    ours, theirs = module.state_dict(), reference.state_dict()
    assert ours.keys() == theirs.keys()
    for name, value in theirs.items():
        assert torch.equal(ours[name], value), name


def test_single_file_checkpoint_loads_weight_for_weight(single_file, sd_folder):
    path, parts = single_file
    loaded = load_model(str(path), config_dir=str(sd_folder))
    assert_same_weights(loaded.text_encoder, parts["text_encoder"])
    assert_same_weights(loaded.unet, parts["unet"])
    assert loaded.tokenizer("a cat").input_ids == parts["tokenizer"]("a cat").input_ids
    assert loaded.vae_scale == 2 and loaded.native_image_size == 16
    assert loaded.scheduler_config["beta_schedule"] == "scaled_linear"


def test_train_from_a_single_file(single_file, sd_folder, tmp_path):
    path, parts = single_file
    out = tmp_path / "run"
    result = run_cli("train", "--model", path, "--model-config", sd_folder, "--concept", "cat", "--layers", "1",
                     "--out", out, "--iterations", 2, "--warmup", 1, *FAST_ARGS)
    assert result.exit_code == 0, result.output
    saved = load_file(str(out / "text_encoder" / "model.safetensors"))
    start = {"text_model." + k: v for k, v in parts["text_encoder"].state_dict().items()}
    changed = {k for k, v in saved.items() if not torch.equal(v, start[k])}
    # Trained from the file's weights: everything but the trained layer is the file's, bit for bit.
    assert changed and all(k.startswith("text_model.encoder.layers.1.") for k in changed)


def test_a_single_files_vae_is_the_files(single_file, sd_folder):
    path, parts = single_file
    loaded = load_model(str(path), config_dir=str(sd_folder))
    assert_same_weights(load_vae(loaded), parts["vae"])


def test_generate_from_a_single_file(single_file, sd_folder, other_sd_folder, tmp_path):
    """The file's own VAE decodes: the image is the one the same weights give as a folder."""
    path, _ = single_file
    for name, model in (("file", path), ("folder", other_sd_folder)):
        configs = ["--model-config", sd_folder] if name == "file" else []
        result = run_cli("generate", "--model", model, *configs, "--prompt", "a cat", "--out", tmp_path / name,
                         "--steps", 2)
        assert result.exit_code == 0, result.output
    image = Image.open(tmp_path / "file" / "0000.png")
    assert image.size == (16, 16)
    assert image.tobytes() == Image.open(tmp_path / "folder" / "0000.png").tobytes()


def test_attack_and_eval_from_a_single_file(single_file, sd_folder, tmp_path):
    path, _ = single_file
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("a cat\na dog\n")
    judge = tmp_path / "judge.py"
    judge.write_text("def never(images, prompts):\n    return [False for _ in images]\n")
    attack = run_cli("attack", "--model", path, "--model-config", sd_folder, "--prompts", prompts, "--method", "none",
                     "--judge", f"{judge}:never", "--gen-steps", 2, "--out", tmp_path / "attack", "--quiet")
    assert attack.exit_code == 0, attack.output
    report = json.loads((tmp_path / "attack" / "report.json").read_text())
    assert report["n"] == 2 and report["manifest"]["model"] == str(path)
    clip = save_tiny_clip(tmp_path / "clip")
    evaluated = run_cli("eval", "--model", path, "--model-config", sd_folder, "--prompts", prompts, "--clip", clip,
                        "--steps", 2, "--out", tmp_path / "eval", "--quiet")
    assert evaluated.exit_code == 0, evaluated.output
    assert json.loads((tmp_path / "eval" / "eval.json").read_text())["n"] == 2


@pytest.mark.parametrize("change, named", [
    ({"text_encoder_2/": True}, "SDXL"),
    ({"unet": {"addition_embed_type": "text_time"}}, "SDXL"),
    ({"scheduler": {"prediction_type": "v_prediction"}}, "UNet predicts v_prediction"),
    ({"text_encoder": {"hidden_act": "gelu"}}, "SD 2.x"),
    ({"unet": {"use_linear_projection": True}}, "SD 2.x"),
    ({"unet": {"cross_attention_dim": 48}}, "does not match its UNet's cross-attention (48)"),
])
def test_models_that_are_not_sd_v1_are_refused_before_any_work(sd_folder, tmp_path, change, named):
    """SD 2.x (v-prediction, OpenCLIP encoder) and SDXL folders: judged from their configs, so a
    refused run writes nothing (an SD 2.x one used to train to the end, reading v as the noise)."""
    import shutil

    folder = tmp_path / "model"
    shutil.copytree(sd_folder, folder)
    for part, values in change.items():
        if part.endswith("/"):
            (folder / part).mkdir()
            continue
        config = folder / part / ("scheduler_config.json" if part == "scheduler" else "config.json")
        config.write_text(json.dumps({**json.loads(config.read_text()), **values}))
    out = tmp_path / "out"
    result = run_cli("train", "--model", folder, "--concept", "x", "--out", out, *FAST_ARGS)
    assert result.exit_code == 2 and "Traceback" not in result.output
    assert result.output.strip().splitlines()[-1].endswith(
        "advunlearn works on Stable Diffusion v1.x models only") and named in result.output
    assert not out.exists()


def test_a_train_run_given_as_model_is_named_for_what_it_is(sd_folder, tmp_path):
    run = tmp_path / "run"
    assert run_cli("train", "--model", sd_folder, "--concept", "x", "--out", run, "--iterations", 1,
                   *FAST_ARGS).exit_code == 0
    with pytest.raises(UserError, match="is an advunlearn train run, not a model: pass it as --encoder"):
        load_model(str(run))
