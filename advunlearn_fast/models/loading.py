"""Loading what training needs from a Stable Diffusion v1.x model: tokenizer, text
encoder, UNet and the noise schedule. Training never decodes images, so a folder's VAE is left
on disk for evaluation to read; a single-file checkpoint's VAE comes with the file and is kept.

A model is a local diffusers folder, a single-file .safetensors/.ckpt checkpoint,
a hub id (downloaded or already cached), the built-in `tiny` model, `sd-v1-random` (SD v1's full-size architecture with random
weights, for benchmarks), or `world`, the
shipped concept-world model (a pixel-space SD-v1-style folder, loaded like any other).
A folder may carry `retain_prompts.txt`: the default retain set for that model, and `world.json`:
the concept world's description (its attributes, aliases and sampling defaults).
"""

from __future__ import annotations

import json
import os
import warnings
from dataclasses import dataclass
from pathlib import Path

from advunlearn_fast.errors import UserError
from advunlearn_fast.models.statedicts import WEIGHTS_ONLY_REFUSAL, load_error, refused_by_weights_only, weights_damage

SINGLE_FILE_SUFFIXES = (".safetensors", ".ckpt", ".pt", ".pth", ".bin")
BUILT_IN_MODELS = ("tiny", "sd-v1-random", "world")
# Built-in models without a VAE: nothing a Stable Diffusion pipeline could decode with.
NO_VAE_MODELS = ("world", "sd-v1-random")
NEEDED_PARTS = ("tokenizer", "text_encoder", "unet", "scheduler")
# The shipped concept-world model (`--model world`), a diffusers folder inside the package.
WORLD_MODEL_DIR = Path(__file__).resolve().parents[1] / "world" / "weights"


@dataclass
class ModelParts:
    tokenizer: object
    text_encoder: object
    unet: object
    scheduler_config: dict
    vae_scale: int  # pixels per latent pixel; 1 for pixel-space models
    source: str
    default_retain_file: str | None = None  # a model folder's own retain_prompts.txt
    vae: object | None = None  # loaded with the model (single files, tiny); else read from disk when needed
    world: dict | None = None  # a concept-world model's world.json

    @property
    def native_image_size(self) -> int:
        return int(self.unet.config.sample_size) * self.vae_scale

    @property
    def latent_channels(self) -> int:
        return int(self.unet.config.in_channels)


def _vae_scale_from_config(config: dict) -> int:
    return 2 ** (len(config["block_out_channels"]) - 1)


def load_model_folder(folder: Path) -> ModelParts:
    """A diffusers Stable Diffusion folder (model_index.json and component subfolders)."""
    from diffusers import UNet2DConditionModel
    from transformers import CLIPTextModel, CLIPTokenizer

    missing = [p for p in NEEDED_PARTS if not (folder / p).is_dir()]
    if missing and (folder / "run.json").is_file():
        raise UserError(f"{folder} is an advunlearn train run, not a model: pass it as --encoder, and its model "
                        "(run.json's config.model) as --model")
    if missing:
        raise UserError(f"{folder} is not a Stable Diffusion diffusers folder: missing {', '.join(p + '/' for p in missing)}")
    index = folder / "model_index.json"
    scheduler_config = _read_json(folder / "scheduler" / "scheduler_config.json")
    check_sd_v1(
        folder, _read_json(index) if index.is_file() else {}, _read_json(folder / "unet" / "config.json"),
        _read_json(folder / "text_encoder" / "config.json"), scheduler_config,
        has_second_encoder=(folder / "text_encoder_2").is_dir(),
    )
    try:
        tokenizer = CLIPTokenizer.from_pretrained(folder / "tokenizer")
    except Exception as err:
        raise load_error("the tokenizer", folder / "tokenizer", err) from None
    try:
        text_encoder = CLIPTextModel.from_pretrained(folder / "text_encoder")
    except Exception as err:
        raise load_error("the text encoder", folder / "text_encoder", err) from None
    try:
        unet = UNet2DConditionModel.from_pretrained(folder / "unet")
    except Exception as err:
        raise load_error("the UNet", folder / "unet", err) from None
    vae_config = folder / "vae" / "config.json"
    vae_scale = _vae_scale_from_config(_read_json(vae_config)) if vae_config.is_file() else 1
    retain_file = folder / "retain_prompts.txt"
    return ModelParts(
        tokenizer, text_encoder, unet, scheduler_config, vae_scale, str(folder),
        str(retain_file) if retain_file.is_file() else None, world=read_world_meta(folder),
    )


def read_world_meta(folder: Path) -> dict | None:
    """A concept-world model folder's world.json, None for any other folder."""
    meta = Path(folder) / "world.json"
    return _read_json(meta) if meta.is_file() else None


def _read_json(path: Path) -> dict:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise UserError(f"missing {path}") from None
    except (OSError, ValueError) as err:
        raise load_error("the config", path, err) from None


def load_single_file(path: Path, config_dir: str | None) -> ModelParts:
    """An original-format SD v1.x checkpoint through diffusers' single-file loader."""
    from diffusers import StableDiffusionPipeline

    damage = weights_damage(path)
    if damage is not None:
        raise UserError(f"--model {path} is truncated or corrupt ({damage})")
    try:
        with warnings.catch_warnings():  # torch's note on the pickle protocol of a file it then refuses
            warnings.simplefilter("ignore")
            pipe = StableDiffusionPipeline.from_single_file(
                str(path), config=config_dir, local_files_only=config_dir is not None or _offline(),
                safety_checker=None, requires_safety_checker=False,
            )
    except Exception as err:
        if refused_by_weights_only(err):
            raise UserError(f"--model {path} was refused: it {WEIGHTS_ONLY_REFUSAL}; convert it to .safetensors "
                            "or use a trusted diffusers folder") from None
        if config_dir is None:
            raise UserError(
                f"cannot load {path} without its configs: pass --model-config DIR, a local SD v1.x "
                "diffusers folder (its unet/, text_encoder/, tokenizer/ and scheduler/ configs are used)"
            ) from None
        raise load_error("the checkpoint", path, err) from None
    check_sd_v1(path, {}, dict(pipe.unet.config), pipe.text_encoder.config.to_dict(), dict(pipe.scheduler.config))
    return ModelParts(
        pipe.tokenizer, pipe.text_encoder, pipe.unet, dict(pipe.scheduler.config),
        _vae_scale_from_config(dict(pipe.vae.config)), str(path), vae=pipe.vae,
    )


def check_sd_v1(source, model_index: dict, unet: dict, text_encoder: dict, scheduler: dict,
                has_second_encoder: bool = False) -> None:
    """Refuse a model that is not SD v1.x-shaped, from its configs alone (no width is checked, so
    the small built-in models pass): training and the attack read the UNet's output as the noise
    and condition it on one CLIP text encoder, so an SD 2.x or SDXL model would run to the end
    with meaningless results or fail deep inside diffusers."""
    if has_second_encoder or unet.get("addition_embed_type") or "XL" in model_index.get("_class_name", ""):
        kind = "SDXL (two text encoders, added conditioning)"
    elif scheduler.get("prediction_type", "epsilon") != "epsilon":
        kind = f"a model whose UNet predicts {scheduler['prediction_type']} (as SD 2.x at 768 px), not the noise"
    elif text_encoder.get("hidden_act", "quick_gelu") != "quick_gelu" or unet.get("use_linear_projection"):
        kind = "SD 2.x (an OpenCLIP text encoder, linear-projection attention)"
    elif text_encoder.get("hidden_size") != unet.get("cross_attention_dim"):
        kind = (f"a model whose text encoder ({text_encoder.get('hidden_size')} wide) does not match its UNet's "
                f"cross-attention ({unet.get('cross_attention_dim')})")
    else:
        return
    raise UserError(f"{source} looks like {kind}: advunlearn works on Stable Diffusion v1.x models only")


def check_model_config(config_dir: str | None, model: str | None) -> None:
    """--model-config names a diffusers folder, and only beside a single-file --model: any other
    model carries its own configs, and would silently ignore it."""
    if config_dir is None:
        return
    folder = Path(config_dir).expanduser()
    if not folder.exists():
        raise UserError(f"--model-config {config_dir} does not exist")
    if not (folder / "unet").is_dir():
        raise UserError(f"--model-config {config_dir} is not a diffusers Stable Diffusion folder (no unet/)")
    if model is not None and (model in BUILT_IN_MODELS or not Path(model).expanduser().is_file()):
        raise UserError(f"--model-config is for a single-file --model (.safetensors/.ckpt checkpoint); --model {model} "
                        "carries its own configs")


def _offline() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "0").lower() in ("1", "true", "yes")


def load_hub_model(repo_id: str, flag: str = "--model") -> ModelParts:
    """A hub id (given as `flag`): its diffusers folder from the local cache, downloaded first when online."""
    from huggingface_hub import snapshot_download

    patterns = [f"{p}/*" for p in NEEDED_PARTS] + ["vae/config.json", "model_index.json"]
    try:
        folder = snapshot_download(repo_id, allow_patterns=patterns, local_files_only=_offline())
    except Exception:
        raise UserError(
            f"model {repo_id!r} is not a local path and could not be found in the Hugging Face cache "
            f"or downloaded; pass {flag} /path/to/a/diffusers/folder"
            + (" (or a .safetensors/.ckpt file with --model-config DIR)" if flag == "--model" else "")
        ) from None
    return load_model_folder(Path(folder))


def load_built_in_model(name: str) -> ModelParts:
    """One of BUILT_IN_MODELS: the tiny and the full-size random SD v1 models built in code
    (seed 0), the concept world from its folder in the package."""
    if name == "world":
        return load_model_folder(WORLD_MODEL_DIR)
    from advunlearn_fast.models.tiny import build_sd_v1_random, build_tiny_model

    if name == "tiny":
        parts = build_tiny_model(seed=0)
        return ModelParts(
            parts["tokenizer"], parts["text_encoder"], parts["unet"], dict(parts["scheduler"].config),
            _vae_scale_from_config(dict(parts["vae"].config)), name, vae=parts["vae"],
        )
    parts = build_sd_v1_random(seed=0)
    return ModelParts(parts["tokenizer"], parts["text_encoder"], parts["unet"], dict(parts["scheduler"].config), 8, name)


def load_model(spec: str, config_dir: str | None = None, flag: str = "--model") -> ModelParts:
    """Everything training needs from `spec` (given as `flag`); every failure is one clear UserError."""
    check_model_spec(spec, flag)
    check_model_config(config_dir, spec)
    if spec in BUILT_IN_MODELS:
        return load_built_in_model(spec)
    path = Path(spec).expanduser()
    if path.is_dir():
        return load_model_folder(path)
    if path.is_file():
        return load_single_file(path, config_dir)
    return load_hub_model(spec, flag)


def check_model_spec(spec: str, flag: str = "--model") -> None:
    """Refuse a model (`flag`) that names a path that is not there, or a file that is no
    checkpoint; the built-in names, folders and hub ids pass (what they hold is checked when loaded)."""
    if spec in BUILT_IN_MODELS:
        return
    path = Path(spec).expanduser()
    if path.is_file() and path.suffix.lower() not in SINGLE_FILE_SUFFIXES:
        raise UserError(f"{flag} {spec} is a file but not a .safetensors/.ckpt checkpoint")
    looks_like_path = spec.startswith((".", "/", "~")) or spec.endswith(SINGLE_FILE_SUFFIXES) or spec.count("/") != 1
    if not path.exists() and looks_like_path:
        raise UserError(f"{flag} {spec} does not exist")

