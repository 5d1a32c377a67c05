"""`advunlearn export` on the tiny SD folder: each format loads back weight for weight and makes
the images `advunlearn generate --encoder RUN` makes; bad input is one line and leaves nothing."""

import json
import shutil

import numpy as np
import pytest
import torch
from diffusers import StableDiffusionPipeline
from helpers import FAST_ARGS, assert_refused, run_cli
from PIL import Image
from safetensors import safe_open
from safetensors.torch import load_file, save_file
from transformers import CLIPTextConfig, CLIPTextModel

from advunlearn_fast.evaluation.generation import Pipeline, build_pipeline, generate, sampling_defaults, to_uint8
from advunlearn_fast.export.compvis import TEXT_ENCODER_PREFIX
from advunlearn_fast.export.exporter import ExportSettings, export
from advunlearn_fast.models.loading import ModelParts
from advunlearn_fast.models.tiny import build_tiny_model
from advunlearn_fast.outputs import write_text_encoder

PROMPT = "a painting by van gogh of a church"
SEED, STEPS = 5, 3


def _image(folder):
    return np.asarray(Image.open(folder / "0000.png"))


def _generate(*args):
    """The image `advunlearn generate` writes for PROMPT, on the CPU where _engine_image draws."""
    out = args[-1]
    result = run_cli("generate", *args[:-1], "--prompt", PROMPT, "--seed", SEED, "--steps", STEPS, "--out", out,
                     "--device", "cpu")
    assert result.exit_code == 0, result.output
    return _image(out)


def _engine_image(tokenizer, text_encoder, unet, vae, scheduler_config) -> np.ndarray:
    """PROMPT's image from loaded parts, through the same sampler as `generate` (HWC uint8)."""
    parts = ModelParts(tokenizer, text_encoder, unet, dict(scheduler_config), 2, "loaded")
    pipe = Pipeline(parts, text_encoder.float(), vae.float(), torch.device("cpu"), **sampling_defaults(parts))
    return to_uint8(generate(pipe, [PROMPT], [SEED], [7.5], STEPS))[0].permute(1, 2, 0).numpy()


def _assert_same_weights(ours: dict, theirs: dict):
    ours = {k.removeprefix("text_model."): v for k, v in ours.items() if not k.endswith("position_ids")}
    theirs = {k.removeprefix("text_model."): v for k, v in theirs.items() if not k.endswith("position_ids")}
    assert set(ours) == set(theirs)
    for key, value in theirs.items():
        assert ours[key].dtype == value.dtype, key
        assert torch.equal(ours[key], value), key


@pytest.fixture(scope="module")
def run(sd_folder, tmp_path_factory):
    """A train run whose encoder differs visibly from the model's (large learning rate)."""
    out = tmp_path_factory.mktemp("export") / "run"
    result = run_cli("train", "--model", sd_folder, "--concept", "Van Gogh", "--out", out, "--iterations", 2,
                     "--warmup", 1, "--lr", "0.05", "--no-bank", *FAST_ARGS)
    assert result.exit_code == 0, result.output
    return out


@pytest.fixture(scope="module")
def run_encoder(run):
    return CLIPTextModel.from_pretrained(run / "text_encoder").eval()


@pytest.fixture(scope="module")
def run_image(run, sd_folder, tmp_path_factory):
    """`advunlearn generate --encoder RUN`: what every export must reproduce."""
    folder = tmp_path_factory.mktemp("images")
    image = _generate("--model", sd_folder, "--encoder", run, folder / "run")
    # The comparison can tell encoders apart: the model's own encoder draws another image.
    assert not np.array_equal(image, _generate("--model", sd_folder, folder / "base"))
    return image


def _export(*args):
    return run_cli("export", *args)


def _left_behind(folder):
    return sorted(p.name for p in folder.iterdir())


# ---------------------------------------------------------------- diffusers


def test_diffusers_export_is_a_pipeline_that_draws_the_runs_images(run, run_encoder, run_image, sd_folder, tmp_path,
                                                                    no_network):
    out = tmp_path / "erased-pipeline"
    result = _export("--model", sd_folder, "--encoder", run, "--format", "diffusers", "--out", out)
    assert result.exit_code == 0, result.output
    pipe = StableDiffusionPipeline.from_pretrained(out, local_files_only=True)
    _assert_same_weights(pipe.text_encoder.state_dict(), run_encoder.state_dict())
    source = build_tiny_model()
    _assert_same_weights(pipe.unet.state_dict(), source["unet"].state_dict())
    _assert_same_weights(pipe.vae.state_dict(), source["vae"].state_dict())
    assert type(pipe.scheduler).__name__ == "PNDMScheduler"  # the model's own scheduler
    # the encoder in the layout transformers 4.x loads too, and the tokenizer with its 4.x files
    assert all(k.startswith("text_model.") for k in load_file(str(out / "text_encoder" / "model.safetensors")))
    assert (out / "tokenizer" / "vocab.json").is_file() and (out / "tokenizer" / "merges.txt").is_file()

    assert np.array_equal(_generate("--model", out, tmp_path / "generated"), run_image)
    # diffusers' own sampler agrees too: the export draws what the model with the run's encoder draws
    plugged = StableDiffusionPipeline.from_pretrained(sd_folder, text_encoder=run_encoder, safety_checker=None,
                                                      requires_safety_checker=False)
    kwargs = dict(num_inference_steps=2, height=16, width=16, output_type="np")
    a = plugged(PROMPT, generator=torch.Generator().manual_seed(1), **kwargs).images
    b = pipe(PROMPT, generator=torch.Generator().manual_seed(1), **kwargs).images
    np.testing.assert_array_equal(a, b)


def _with_safety_checker(sd_folder, folder):
    """The tiny SD folder plus a (tiny, random) safety checker and feature extractor, as SD v1.4 ships them."""
    from diffusers.pipelines.stable_diffusion.safety_checker import StableDiffusionSafetyChecker
    from transformers import CLIPConfig, CLIPImageProcessor

    shutil.copytree(sd_folder, folder)
    config = CLIPConfig(
        text_config=dict(hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=4),
        vision_config=dict(image_size=32, patch_size=8, hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                           num_attention_heads=4),
        projection_dim=16,
    )
    torch.manual_seed(0)
    StableDiffusionSafetyChecker(config).save_pretrained(folder / "safety_checker")
    CLIPImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32}).save_pretrained(
        folder / "feature_extractor")
    index = json.loads((folder / "model_index.json").read_text())
    index.update(safety_checker=["stable_diffusion", "StableDiffusionSafetyChecker"],
                 feature_extractor=["transformers", "CLIPImageProcessor"])
    (folder / "model_index.json").write_text(json.dumps(index))
    return folder


def test_diffusers_export_keeps_the_safety_checker_and_casts_to_dtype(sd_folder, tmp_path, no_network):
    source = _with_safety_checker(sd_folder, tmp_path / "sd-with-checker")
    # an encoder as transformers 5 saves a model built in code: keys without `text_model.`
    encoder = build_tiny_model(seed=3)["text_encoder"]
    encoder.save_pretrained(tmp_path / "encoder")
    assert not any(k.startswith("text_model.") for k in load_file(str(tmp_path / "encoder" / "model.safetensors")))
    out = tmp_path / "erased-fp16"
    result = _export("--model", source, "--encoder", tmp_path / "encoder", "--format", "diffusers", "--out", out,
                     "--dtype", "fp16")
    assert result.exit_code == 0, result.output
    # written with the prefix, which transformers 4.x needs to load the weights at all
    written = load_file(str(out / "text_encoder" / "model.safetensors"))
    _assert_same_weights(written, {k: v.half() for k, v in encoder.state_dict().items()})
    assert all(k.startswith("text_model.") for k in written)
    index = json.loads((out / "model_index.json").read_text())
    assert index["safety_checker"] == ["stable_diffusion", "StableDiffusionSafetyChecker"]
    assert index["feature_extractor"][1] == "CLIPImageProcessor"
    for part in ("unet/diffusion_pytorch_model", "vae/diffusion_pytorch_model", "text_encoder/model",
                 "safety_checker/model"):
        with safe_open(str(out / f"{part}.safetensors"), "pt") as handle:
            assert {handle.get_slice(k).get_dtype() for k in handle.keys()} <= {"F16", "I64"}, part
    pipe = StableDiffusionPipeline.from_pretrained(out, local_files_only=True)
    original = StableDiffusionPipeline.from_pretrained(source, local_files_only=True)
    _assert_same_weights(pipe.safety_checker.state_dict(),
                         {k: v.half() for k, v in original.safety_checker.state_dict().items()})


# ---------------------------------------------------------------- single file


def test_single_file_from_a_diffusers_folder_converts_every_part(run, run_encoder, run_image, sd_folder, tmp_path,
                                                                  no_network):
    out = tmp_path / "erased.safetensors"
    result = _export("--model", sd_folder, "--encoder", run, "--format", "single-file", "--out", out)
    assert result.exit_code == 0, result.output
    keys = load_file(str(out)).keys()
    prefixes = (TEXT_ENCODER_PREFIX, "model.diffusion_model.", "first_stage_model.")
    assert all(k.startswith(prefixes) for k in keys)
    assert "cond_stage_model.transformer.text_model.embeddings.position_ids" in keys
    assert "model.diffusion_model.input_blocks.0.0.weight" in keys and "first_stage_model.quant_conv.weight" in keys

    pipe = StableDiffusionPipeline.from_single_file(str(out), config=str(sd_folder), local_files_only=True)
    source = build_tiny_model()
    _assert_same_weights(pipe.text_encoder.state_dict(), run_encoder.state_dict())
    _assert_same_weights(pipe.unet.state_dict(), source["unet"].state_dict())
    _assert_same_weights(pipe.vae.state_dict(), source["vae"].state_dict())
    image = _engine_image(pipe.tokenizer, pipe.text_encoder, pipe.unet, pipe.vae, pipe.scheduler.config)
    assert np.array_equal(image, run_image)


@pytest.fixture
def checkpoint(sd_folder, tmp_path):
    """The tiny model as a single-file checkpoint (its own encoder) with the extra tensors and
    metadata real checkpoints carry, one of them in another precision."""
    plain = tmp_path / "plain.safetensors"
    result = _export("--model", sd_folder, "--encoder", sd_folder / "text_encoder", "--format", "single-file",
                     "--out", plain)
    assert result.exit_code == 0, result.output
    state = load_file(str(plain))
    state["alphas_cumprod"] = torch.linspace(1, 0, 1000, dtype=torch.float64)
    state["model_ema.decay"] = torch.tensor(0.9999, dtype=torch.float16)
    path = tmp_path / "sd-tiny.safetensors"
    save_file(state, str(path), metadata={"format": "pt", "modelspec.title": "tiny"})
    return path


def _encoder_keys(state):
    return {k.removeprefix(TEXT_ENCODER_PREFIX): v for k, v in state.items() if k.startswith(TEXT_ENCODER_PREFIX)}


def _assert_kept(before, after):
    """Every tensor but the text encoder's byte for byte: the same dtype and values."""
    assert set(before) == set(after)
    for key in before:
        if not key.startswith(TEXT_ENCODER_PREFIX):
            assert after[key].dtype == before[key].dtype and torch.equal(after[key], before[key]), key


def test_single_file_over_a_checkpoint_replaces_only_the_text_encoder(run, run_encoder, run_image, checkpoint,
                                                                       sd_folder, tmp_path, no_network):
    out = tmp_path / "erased.safetensors"
    result = _export("--model", checkpoint, "--model-config", sd_folder, "--encoder", run, "--format", "single-file",
                     "--out", out)
    assert result.exit_code == 0, result.output
    after = load_file(str(out))
    _assert_kept(load_file(str(checkpoint)), after)
    with safe_open(str(out), "pt") as handle:
        assert handle.metadata()["modelspec.title"] == "tiny"
    encoder = _encoder_keys(after)
    assert encoder["text_model.embeddings.position_ids"].dtype == torch.int64
    _assert_same_weights(encoder, run_encoder.state_dict())

    pipe = StableDiffusionPipeline.from_single_file(str(out), config=str(sd_folder), local_files_only=True)
    image = _engine_image(pipe.tokenizer, pipe.text_encoder, pipe.unet, pipe.vae, pipe.scheduler.config)
    assert np.array_equal(image, run_image)


def test_single_file_precision(run, run_encoder, checkpoint, sd_folder, tmp_path):
    # --dtype casts every floating-point tensor; integer buffers stay
    half = tmp_path / "half.safetensors"
    result = _export("--model", checkpoint, "--model-config", sd_folder, "--encoder", run, "--format", "single-file",
                     "--out", half, "--dtype", "fp16")
    assert result.exit_code == 0, result.output
    state = load_file(str(half))
    assert {v.dtype for v in state.values()} == {torch.float16, torch.int64}
    _assert_same_weights(_encoder_keys(state), {k: v.half() for k, v in run_encoder.state_dict().items()})
    # without --dtype, the encoder takes the precision the model stores its own in, the rest is kept
    again = tmp_path / "again.safetensors"
    result = _export("--model", half, "--model-config", sd_folder, "--encoder", run, "--format", "single-file",
                     "--out", again)
    assert result.exit_code == 0, result.output
    after = load_file(str(again))
    _assert_kept(state, after)
    _assert_same_weights(_encoder_keys(after), {k: v.half() for k, v in run_encoder.state_dict().items()})


# ---------------------------------------------------------------- the authors' .pt


class _Holder(torch.nn.Module):
    """transformers 4.25's CLIPTextModel layout: the text transformer under `text_model`."""

    def __init__(self, text_model):
        super().__init__()
        self.text_model = text_model


class _AuthorsWrapper(torch.nn.Module):
    """The shape of the authors' CustomTextEncoder: the model, and three of its parts again."""

    def __init__(self, text_model):
        super().__init__()
        self.text_encoder = _Holder(text_model)
        self.embedding = text_model.embeddings
        self.encoder = text_model.encoder
        self.final_layer_norm = text_model.final_layer_norm


def test_authors_pt_is_their_wrapper_state_dict(run, run_encoder, run_image, sd_folder, tmp_path):
    out = tmp_path / "TextEncoder-vangogh.pt"
    result = _export("--model", sd_folder, "--encoder", run, "--format", "authors-pt", "--out", out)
    assert result.exit_code == 0, result.output
    state = torch.load(out, map_location="cpu", weights_only=True)
    model = build_tiny_model()["text_encoder"]
    wrapper = _AuthorsWrapper(model)
    # every key of the wrapper, in its order, plus the position_ids buffer transformers 4.25 saved
    positions = ["text_encoder.text_model.embeddings.position_ids", "embedding.position_ids"]
    assert [k for k in state if k not in positions] == list(wrapper.state_dict())
    keys = list(state)  # torch writes a module's buffers before its children's tensors
    assert keys[0] == positions[0] and keys[keys.index(positions[1]) + 1] == "embedding.token_embedding.weight"
    for key in positions:
        assert state[key].dtype == torch.int64 and state[key].tolist() == [list(range(77))]
    # the aliases are the same tensors, stored once
    assert state["embedding.token_embedding.weight"].data_ptr() == \
        state["text_encoder.text_model.embeddings.token_embedding.weight"].data_ptr()

    wrapper.load_state_dict({k: v for k, v in state.items() if k not in positions}, strict=True)
    _assert_same_weights(model.state_dict(), run_encoder.state_dict())
    # the authors' scripts load the keys under `text_encoder.` into a CLIPTextModel
    theirs = {k.removeprefix("text_encoder.text_model."): v for k, v in state.items()
              if k.startswith("text_encoder.") and not k.endswith("position_ids")}
    fresh = build_tiny_model(seed=1)["text_encoder"]
    fresh.load_state_dict(theirs, strict=True)
    base = build_pipeline(str(sd_folder), None, torch.device("cpu"))
    image = to_uint8(generate(base.with_encoder(fresh), [PROMPT], [SEED], [7.5], STEPS))[0].permute(1, 2, 0).numpy()
    assert np.array_equal(image, run_image)

    half = tmp_path / "half.pt"
    assert _export("--model", sd_folder, "--encoder", run, "--format", "authors-pt", "--out", half,
                   "--dtype", "bf16").exit_code == 0
    state = torch.load(half, map_location="cpu", weights_only=True)
    assert {v.dtype for v in state.values()} == {torch.bfloat16, torch.int64}


# ---------------------------------------------------------------- bad input


def _encoder_folder(folder, **changes):
    """A text encoder of the tiny model's shape but for `changes` to its config."""
    base = build_tiny_model()["text_encoder"].config.to_dict()
    config = CLIPTextConfig(**{**base, **changes})
    torch.manual_seed(0)
    write_text_encoder(CLIPTextModel(config), folder)
    return folder


@pytest.mark.parametrize("fmt, out_name", [("diffusers", "pipe"), ("single-file", "m.safetensors"), ("authors-pt", "m.pt")])
def test_bad_input_is_one_line_and_writes_nothing(run, sd_folder, tmp_path, fmt, out_name):
    where = tmp_path / "exports"
    where.mkdir()
    out = where / out_name
    cases = [
        (["--encoder", _encoder_folder(tmp_path / "narrow", hidden_size=16, intermediate_size=32)], "hidden width 16"),
        (["--encoder", _encoder_folder(tmp_path / "few-words", vocab_size=100)], "knows 100 tokens"),
        (["--encoder", _encoder_folder(tmp_path / "many-words", vocab_size=2000)], "knows 2000 tokens"),
        (["--encoder", _encoder_folder(tmp_path / "shallow", num_hidden_layers=2)], "(2 layers, the model's has 12)"),
        (["--encoder", tmp_path / "nowhere"], "does not exist"),
        (["--format", "ckpt"], "--format must be one of diffusers, single-file, authors-pt, got 'ckpt'"),
        (["--dtype", "fp8"], "--dtype must be one of fp16, bf16, fp32"),
    ]
    for extra, message in cases:
        result = _export("--model", sd_folder, "--encoder", run, "--format", fmt, "--out", out, *extra)
        assert_refused(result, message)
        assert _left_behind(where) == []


def test_existing_out_wrong_suffix_and_models_without_vae_are_refused(run, sd_folder, tmp_path):
    taken = tmp_path / "taken.safetensors"
    taken.write_bytes(b"mine")
    assert_refused(_export("--model", sd_folder, "--encoder", run, "--format", "single-file", "--out", taken),
                   "already exists")
    assert taken.read_bytes() == b"mine"
    folder = tmp_path / "pipe"
    (folder / "unet").mkdir(parents=True)
    assert_refused(_export("--model", sd_folder, "--encoder", run, "--format", "diffusers", "--out", folder),
                   "already exists")
    assert _left_behind(folder) == ["unet"]
    assert_refused(_export("--model", sd_folder, "--encoder", run, "--format", "single-file",
                           "--out", tmp_path / "m.ckpt"), "single-file exports are .safetensors files")
    assert_refused(_export("--model", sd_folder, "--encoder", run, "--format", "authors-pt",
                           "--out", tmp_path / "m.safetensors"), "authors-pt exports are .pt or .pth files")
    assert_refused(_export("--model", "world", "--encoder", run, "--format", "diffusers", "--out", tmp_path / "w"),
                   "--model world has no VAE")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["pipe", "taken.safetensors"]


@pytest.mark.parametrize("fmt, out_name", [("diffusers", "pipe"), ("single-file", "m.safetensors"), ("authors-pt", "m.pt")])
def test_an_interrupted_export_leaves_nothing(run, sd_folder, tmp_path, monkeypatch, fmt, out_name):
    """Killed in the middle of writing (here: after part of the weights are on disk), an export
    leaves no file or folder that could pass for a complete one."""
    import safetensors.torch

    real_save_file, real_torch_save = safetensors.torch.save_file, torch.save
    calls = []

    def save_then_die(save):
        def fail(obj, path, *args, **kwargs):
            save(obj, path, *args, **kwargs)
            calls.append(path)
            raise KeyboardInterrupt

        return fail

    monkeypatch.setattr(safetensors.torch, "save_file", save_then_die(real_save_file))
    monkeypatch.setattr(torch, "save", save_then_die(real_torch_save))
    where = tmp_path / "exports"
    with pytest.raises(KeyboardInterrupt):
        export(ExportSettings(str(sd_folder), str(run), fmt, str(where / out_name)))
    assert calls  # it did die while writing
    assert _left_behind(where) == []


def test_an_encoder_that_is_the_models_own_is_said(run, sd_folder, tmp_path):
    """A pipeline folder passed as --encoder (here the model itself) exports the model unchanged:
    said in one line; a trained encoder is not."""
    same = _export("--model", sd_folder, "--encoder", sd_folder, "--format", "authors-pt", "--out", tmp_path / "same.pt")
    assert same.exit_code == 0, same.output
    assert "holds the weights of --model" in same.output and "nothing is erased" in same.output
    trained = _export("--model", sd_folder, "--encoder", run, "--format", "authors-pt", "--out", tmp_path / "trained.pt")
    assert trained.exit_code == 0 and "nothing is erased" not in trained.output
