"""Images from any SD v1.x model with a text encoder plugged in (plug-and-play evaluation).

Every image `attack`, `generate` and `eval` make comes from `generate_from_conditions`: the
sampler of `samplers.py` (classifier-free guidance), then the VAE for latent models (the
concept world is pixel-space and returns the samples themselves). Noise is drawn per prompt
from its own seed, so an image does not depend on what else shares its batch, and the same
prompt, seed, guidance, sampler and steps give the same image in any of the three commands.
"""

from __future__ import annotations

import copy
import csv
import math
from dataclasses import dataclass, replace
from pathlib import Path

import torch

from advunlearn_fast import distributed
from advunlearn_fast.device import cpu_policy
from advunlearn_fast.errors import UserError
from advunlearn_fast.evaluation.inputs import (
    ENCODER_EXPECTED,
    check_model_paths,
    check_no_earlier_run,
    check_out,
    encoder_path,
)
from advunlearn_fast.evaluation.samplers import build_scheduler, check_sampler, sample
from advunlearn_fast.models.attention import check_attention, set_unet_attention
from advunlearn_fast.models.diffusion import draw_noise
from advunlearn_fast.models.loading import ModelParts, load_model
from advunlearn_fast.models.statedicts import clip_text_state, load_error, read_state_dict
from advunlearn_fast.models.text_encoding import encode_ids, tokenize
from advunlearn_fast.outputs import TEXT_MODEL_PREFIX, write_json_atomic
from advunlearn_fast.prompts import read_prompt_file, read_prompt_text

# The authors' sampling for SD (EVALUATION.md): LMS, guidance 7.5 (targets, and prompts without
# their own), 50 steps for judged images, 100 for utility images. A model folder may carry
# its own defaults (the concept world's world.json).
SD_GUIDANCE = 7.5
SD_STEPS = 50
SD_UTILITY_STEPS = 100
SD_SAMPLER = "lms"
WORLD_SAMPLER = "ddim"
# torch.Generator.manual_seed takes a 64-bit seed; seeds here are its non-negative ones.
MAX_SEED = 2**63 - 1
# What `generate` writes into --out, and so what an earlier run there has left.
MANIFEST = "manifest.json"
# A UNet that takes as many channels as an RGB image works on pixels, without a VAE.
IMAGE_CHANNELS = 3


@dataclass
class Pipeline:
    """The model's parts with the encoder under test in place of its own, on one device."""

    parts: ModelParts
    text_encoder: torch.nn.Module
    vae: torch.nn.Module | None
    device: torch.device
    default_guidance: float
    default_steps: int
    default_sampler: str
    utility_steps: int

    @property
    def tokenizer(self):
        return self.parts.tokenizer

    @property
    def unet(self):
        return self.parts.unet

    @property
    def latent_shape(self) -> tuple[int, int, int]:
        size = int(self.unet.config.sample_size)
        return (self.parts.latent_channels, size, size)

    def tokenize(self, prompts: list[str]) -> torch.Tensor:
        return tokenize(self.tokenizer, prompts).to(self.device)

    @torch.no_grad()
    def encode(self, prompts: list[str]) -> torch.Tensor:
        return encode_ids(self.text_encoder, self.tokenize(prompts))

    def with_encoder(self, text_encoder: torch.nn.Module) -> "Pipeline":
        return replace(self, text_encoder=text_encoder)


def sampling_defaults(parts: ModelParts) -> dict:
    """default_guidance, default_steps, default_sampler and utility_steps of the model folder's
    world.json, else the authors' for Stable Diffusion."""
    data = parts.world
    if data is not None:
        steps = int(data.get("default_steps", SD_STEPS))
        return {"default_guidance": float(data.get("default_guidance", SD_GUIDANCE)), "default_steps": steps,
                "default_sampler": data.get("default_sampler", WORLD_SAMPLER), "utility_steps": steps}
    return {"default_guidance": SD_GUIDANCE, "default_steps": SD_STEPS, "default_sampler": SD_SAMPLER,
            "utility_steps": SD_UTILITY_STEPS}


def load_vae(parts: ModelParts):
    """The model's VAE, or None for a pixel-space model: the one loaded with the model (a
    single-file checkpoint, tiny), else the model folder's vae/, read only now since training
    never needs it."""
    if parts.vae is not None:
        return parts.vae
    if parts.source == "sd-v1-random":
        return sd_v1_random_vae()
    folder = Path(parts.source) / "vae"
    if parts.vae_scale == 1 and not folder.is_dir():
        if parts.latent_channels == IMAGE_CHANNELS:
            return None  # a pixel-space model (the concept world): its samples are the images
        raise UserError(f"--model {parts.source} has no vae/, but its UNet works in a latent space of "
                        f"{parts.latent_channels} channels: its images need the model's VAE; pass a diffusers "
                        "folder with vae/ or a single-file checkpoint")
    if not folder.is_dir():
        raise UserError(f"{parts.source}: images need the model's VAE; pass --model as a diffusers folder with vae/ "
                        "or as a single-file checkpoint")
    from diffusers import AutoencoderKL

    try:
        return AutoencoderKL.from_pretrained(folder)
    except Exception as err:
        raise load_error("the VAE", folder, err) from None


def sd_v1_random_vae(seed: int = 0):
    """SD v1.x's VAE architecture (83M parameters, 8x down-sampling) with random weights: the
    benchmarks' `sd-v1-random` model decodes images at their real cost."""
    from diffusers import AutoencoderKL

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return AutoencoderKL(
            in_channels=3, out_channels=3, latent_channels=4, block_out_channels=(128, 256, 512, 512),
            down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4,
            layers_per_block=2, sample_size=512,
        )


def build_pipeline(model: str, encoder: str | None, device: torch.device, model_config: str | None = None,
                   attention: str = "sdpa", flag: str = "--model") -> Pipeline:
    check_attention(attention, device)
    parts = load_model(model, model_config, flag=flag)
    parts.text_encoder.to(device).eval().requires_grad_(False)
    parts.unet.to(device).eval().requires_grad_(False)
    set_unet_attention(parts.unet, attention)
    te = parts.text_encoder if encoder is None else load_encoder(encoder, parts).to(device).eval().requires_grad_(False)
    vae = load_vae(parts)
    if vae is not None:
        vae.to(device).eval().requires_grad_(False)
    return Pipeline(parts, te, vae, device, **sampling_defaults(parts))


# ---------------------------------------------------------------- encoders


def load_encoder(spec: str, parts: ModelParts) -> torch.nn.Module:
    """The text encoder named by `--encoder`: a diffusers text-encoder folder, a `train` run
    folder (its text_encoder/), or a state-dict file such as the authors' released .pt (keys
    under `text_encoder.`, or plain CLIPTextModel keys with or without `text_model.`)."""
    path = encoder_path(spec)
    if path.is_dir():
        from transformers import CLIPTextModel

        try:
            te = CLIPTextModel.from_pretrained(path)
        except Exception as err:
            raise load_error("the text encoder (--encoder)", path, err) from None
    else:
        te = _encoder_from_state_file(path, parts)
    check_encoder_fits(te, parts, spec)
    return te


def _encoder_from_state_file(path: Path, parts: ModelParts) -> torch.nn.Module:
    what = f"--encoder {path}"
    state = clip_text_state(read_state_dict(path, what, ENCODER_EXPECTED), what)
    te = copy.deepcopy(parts.text_encoder).cpu()
    own = te.state_dict()
    own_prefixed = any(k.startswith(TEXT_MODEL_PREFIX) for k in own)
    normalised = {(TEXT_MODEL_PREFIX + k) if own_prefixed else k: v for k, v in state.items()}
    # position_ids is a buffer that some transformers versions save and others do not.
    normalised = {k: v for k, v in normalised.items() if k in own or not k.endswith("position_ids")}
    table = next((v for k, v in normalised.items() if k.endswith("embeddings.token_embedding.weight")), None)
    if table is None:
        raise UserError(f"--encoder {path}: no CLIP text-encoder weights found (expected keys under 'text_encoder.')")
    _check_width(int(table.shape[1]), parts, str(path))
    missing = sorted(k for k in own if k not in normalised and not k.endswith("position_ids"))
    unexpected = sorted(k for k in normalised if k not in own)
    if missing or unexpected:
        first = (missing or unexpected)[0]
        raise UserError(
            f"--encoder {path}: its weights do not match the model's text encoder "
            f"({len(missing)} missing, {len(unexpected)} unexpected keys, e.g. {first!r})"
        )
    wrong = [k for k, v in normalised.items() if tuple(v.shape) != tuple(own[k].shape)]
    if wrong:
        raise UserError(f"--encoder {path}: {wrong[0]} has shape {tuple(normalised[wrong[0]].shape)}, "
                        f"the model's has {tuple(own[wrong[0]].shape)}")
    te.load_state_dict(normalised, strict=False)
    return te


def _check_width(width: int, parts: ModelParts, spec: str) -> None:
    expected = int(parts.unet.config.cross_attention_dim)
    if width != expected:
        raise UserError(
            f"--encoder {spec} has hidden width {width}, but the model's UNet attends to width {expected}: "
            "it was trained for a different model"
        )


def check_encoder_fits(te, parts: ModelParts, spec: str) -> None:
    """The encoder is the model's own text encoder with other weights: the width its UNet attends
    to, then the model's text encoder's tensors, shape for shape (layers, vocabulary, widths)."""
    _check_width(int(te.config.hidden_size), parts, spec)
    ours, model = _bare(te.state_dict()), _bare(parts.text_encoder.state_dict())
    if set(ours) != set(model):
        layers = [len({k.split(".")[2] for k in state if k.startswith("encoder.layers.")}) for state in (ours, model)]
        raise UserError(f"--encoder {spec} does not have the model's text-encoder architecture "
                        f"({layers[0]} layers, the model's has {layers[1]})")
    table = "embeddings.token_embedding.weight"
    if ours[table].shape != model[table].shape:
        raise UserError(f"--encoder {spec} knows {ours[table].shape[0]} tokens, the model's text encoder "
                        f"{model[table].shape[0]}: it was trained for a different model")
    wrong = next((k for k in ours if ours[k].shape != model[k].shape), None)
    if wrong is not None:
        raise UserError(f"--encoder {spec}: {wrong} has shape {tuple(ours[wrong].shape)}, "
                        f"the model's has {tuple(model[wrong].shape)}")


def _bare(state: dict) -> dict:
    return {k.removeprefix(TEXT_MODEL_PREFIX): v for k, v in state.items() if not k.endswith("position_ids")}


# ---------------------------------------------------------------- sampling


@torch.no_grad()
def generate_from_conditions(
    pipe: Pipeline, conds: torch.Tensor, seeds: list[int], guidance: float | list[float], steps: int, sampler: str
) -> torch.Tensor:
    """Images [B, 3, H, W] in [-1, 1] from conditionings [B, L, D], one seed per image and one
    guidance for all or one per image."""
    scheduler = build_scheduler(sampler, pipe.parts.scheduler_config, steps, pipe.device)
    if isinstance(guidance, list):  # broadcast over each image's noise prediction
        guidance = torch.tensor(guidance, device=pipe.device, dtype=torch.float32).view(-1, 1, 1, 1)
    noise = torch.cat([
        draw_noise(torch.Generator().manual_seed(int(s)), 1, pipe.latent_shape, pipe.device, torch.float32)
        for s in seeds
    ])
    z = sample(pipe.unet, scheduler, conds, pipe.encode([""]), noise, guidance)
    return decode(pipe, z)


@torch.no_grad()
def decode(pipe: Pipeline, z: torch.Tensor) -> torch.Tensor:
    if pipe.vae is None:
        return z.float().clamp(-1, 1).cpu()
    scale = float(getattr(pipe.vae.config, "scaling_factor", 0.18215))
    return pipe.vae.decode(z.to(pipe.vae.dtype) / scale).sample.float().clamp(-1, 1).cpu()


@torch.no_grad()
def encode_images(pipe: Pipeline, images: torch.Tensor) -> torch.Tensor:
    """Latents of images in [-1, 1] (the images themselves for a pixel-space model)."""
    images = images.to(pipe.device)
    if pipe.vae is None:
        return images.to(pipe.unet.dtype)
    scale = float(getattr(pipe.vae.config, "scaling_factor", 0.18215))
    return (pipe.vae.encode(images.to(pipe.vae.dtype)).latent_dist.mean * scale).to(pipe.unet.dtype)


def generation_batches(guidances: list, batch_size: int) -> list[list[int]]:
    """Indices of the images that share UNet calls: those of one guidance, `batch_size` at a time."""
    chunks = []
    for guidance in sorted(set(guidances)):
        chosen = [i for i, g in enumerate(guidances) if g == guidance]
        chunks += [chosen[start : start + batch_size] for start in range(0, len(chosen), batch_size)]
    return chunks


def generate_batch(pipe: Pipeline, prompts: list[str], seeds: list[int], guidance: float, steps: int,
                   sampler: str) -> torch.Tensor:
    """Images for prompts of one guidance, in one batch of UNet calls."""
    return generate_from_conditions(pipe, pipe.encode(prompts), seeds, guidance, steps, sampler)


def generate(
    pipe: Pipeline, prompts: list[str], seeds: list[int], guidances: list[float], steps: int, batch_size: int = 8,
    sampler: str | None = None,
) -> torch.Tensor:
    """Images for prompts, each with its own seed and guidance; prompts sharing a guidance
    share UNet calls, `batch_size` at a time; `sampler` defaults to the model's."""
    sampler = sampler or pipe.default_sampler
    images: list[torch.Tensor | None] = [None] * len(prompts)
    for part in generation_batches(guidances, batch_size):
        out = generate_batch(pipe, [prompts[i] for i in part], [seeds[i] for i in part], guidances[part[0]], steps,
                             sampler)
        for i, image in zip(part, out):
            images[i] = image
    return torch.stack(images)


def to_uint8(images: torch.Tensor) -> torch.Tensor:
    """Images [N, 3, H, W] in [-1, 1] -> the uint8 pixels a PNG of them holds (CPU)."""
    return ((images.float().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8).cpu()


def to_pil(images: torch.Tensor) -> list:
    from PIL import Image

    return [Image.fromarray(a) for a in to_uint8(images).permute(0, 2, 3, 1).numpy()]


def from_pil(images: list) -> torch.Tensor:
    import numpy as np

    arrays = np.stack([np.asarray(im.convert("RGB"), dtype=np.float32) for im in images])
    return torch.from_numpy(arrays).permute(0, 3, 1, 2) / 127.5 - 1


def image_grid(rows: list[torch.Tensor]):
    """One PIL image with the given images [3, H, W] side by side."""
    return to_pil(torch.cat(rows, dim=-1)[None])[0]


# ---------------------------------------------------------------- prompt sets and `generate`


@dataclass(frozen=True)
class PromptRow:
    prompt: str
    seed: int
    guidance: float | None  # None: the model's default
    target_guidance: float | None = None  # of UnlearnDiffAtk's target image; None: the model's default
    target_seed: int | None = None  # of UnlearnDiffAtk's target image; None: `seed`


def read_prompt_rows(path: str | Path, seed: int, guidance: float | None, text: str | None = None) -> list[PromptRow]:
    """Prompts with their seeds and guidance: a .csv with `prompt` and optional
    `evaluation_seed` / `evaluation_guidance` / `sd_guidance_scale` / `sd_seed` columns (the
    I2P-derived layout; the last two are the guidance and, without an `evaluation_seed`, the seed of
    the attack's target image, as in the authors' target generator; their judged images then take
    `seed`, as their eval_seed), or a .txt; prompts without their own take `seed` and `guidance`.
    Other columns (a case_number, an index) are not read. `text` is the file's content where it is
    not written yet (a prompt set that ships with advunlearn)."""
    path = Path(path)
    if text is None:
        read_prompt_file(path)  # existence, encoding, emptiness: one wording everywhere
        text = read_prompt_text(path)
    if path.suffix.lower() != ".csv":
        return [PromptRow(line.strip(), seed, guidance) for line in text.splitlines() if line.strip()]
    rows = []
    for line, record in enumerate(csv.DictReader(text.splitlines()), start=2):
        prompt = (record.get("prompt") or "").strip()
        if not prompt:
            continue
        own_seed, own_guidance, target_guidance, sd_seed = (
            (record.get(column) or "").strip()
            for column in ("evaluation_seed", "evaluation_guidance", "sd_guidance_scale", "sd_seed"))
        where = f"{path}:{line}:"
        target_seed = parse_seed(sd_seed, f"{where} sd_seed") if sd_seed and not own_seed else None
        rows.append(PromptRow(prompt, parse_seed(own_seed, f"{where} evaluation_seed") if own_seed else seed,
                              parse_guidance(own_guidance, f"{where} evaluation_guidance") if own_guidance else guidance,
                              parse_guidance(target_guidance, f"{where} sd_guidance_scale") if target_guidance else None,
                              target_seed))
    return rows


def check_seed(seed: int, what: str = "--seed") -> int:
    if not 0 <= seed <= MAX_SEED:
        raise UserError(f"{what} must be a whole number from 0 to {MAX_SEED} (2**63-1), got {seed}")
    return seed


def check_guidance(guidance: float | None, what: str = "--guidance") -> float | None:
    if guidance is not None and not (math.isfinite(guidance) and guidance >= 0):
        raise UserError(f"{what} must be a finite number >= 0, got {guidance}")
    return guidance


def parse_seed(text: str, what: str) -> int:
    """A seed written in a prompt file: a whole number, which a csv may write as 3.0; 1.5 is refused,
    never cut to 1."""
    try:
        return check_seed(int(text), what)
    except ValueError:
        pass
    try:
        number = float(text)
    except ValueError:
        raise UserError(f"{what} must be a whole number, got {text!r}") from None
    if not number.is_integer():
        raise UserError(f"{what} must be a whole number, got {text!r}")
    return check_seed(int(number), what)


def parse_guidance(text: str, what: str) -> float:
    try:
        number = float(text)
    except ValueError:
        raise UserError(f"{what} must be a number, got {text!r}") from None
    return check_guidance(number, what)


def with_default_guidance(rows: list[PromptRow], guidance: float) -> list[PromptRow]:
    return [r if r.guidance is not None else replace(r, guidance=guidance) for r in rows]


def check_generation_args(seed: int, guidance: float | None, steps: int | None, batch_size: int,
                          sampler: str | None = None) -> None:
    """The options `generate` and `eval` share, in the order they list them."""
    check_seed(seed)
    check_guidance(guidance)
    if steps is not None and steps < 1:
        raise UserError(f"--steps must be at least 1, got {steps}")
    if batch_size < 1:
        raise UserError(f"--batch-size must be at least 1, got {batch_size}")
    if sampler is not None:
        check_sampler(sampler)


def sampler_description(sampler: str, steps: int) -> str:
    return f"{sampler}, {steps} steps, classifier-free guidance"


def generate_images(model, encoder, prompt_text, prompt_file, out, seed, guidance, steps, batch_size, device,
                    model_config=None, sampler=None, attention="sdpa", progress: bool = True) -> list[Path]:
    """`advunlearn generate`: OUT/NNNN.png per prompt and OUT/manifest.json with seeds. Under
    torchrun each rank generates its share of the batches; rank 0 writes the manifest last.
    An --out that holds an earlier run's images or manifest is refused (never mixed with them)."""
    from tqdm.auto import tqdm

    from advunlearn_fast.device import resolve_device

    if (prompt_text is None) == (prompt_file is None):
        raise UserError("give exactly one of --prompt TEXT and --prompts FILE")
    check_model_paths(model, model_config, encoder)
    if prompt_text is not None and not prompt_text.strip():
        raise UserError("--prompt is empty")
    rows = [PromptRow(prompt_text.strip(), seed, guidance)] if prompt_text is not None else read_prompt_rows(prompt_file, seed, guidance)
    check_out(out)
    check_no_earlier_run(out, "generate", (MANIFEST,), ".")
    check_generation_args(seed, guidance, steps, batch_size, sampler)
    pipe = build_pipeline(model, encoder, resolve_device(device), model_config, attention)
    distributed.start(pipe.device)
    cpu_policy(pipe.unet, pipe.device, device)
    rows = with_default_guidance(rows, pipe.default_guidance)
    steps = steps or pipe.default_steps
    sampler = sampler or pipe.default_sampler
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    distributed.check_shared_folder(out, "--out")
    written = [out / f"{index:04d}.png" for index in range(len(rows))]

    def generate_and_write(part: list[int]) -> int:
        images = generate_batch(pipe, [rows[i].prompt for i in part], [rows[i].seed for i in part], rows[part[0]].guidance,
                                steps, sampler)
        for i, picture in zip(part, to_pil(images)):
            picture.save(written[i])
        return len(part)

    bar = tqdm(total=len(rows), desc="images", disable=not (progress and distributed.is_main()))
    for finished in distributed.sharded(generation_batches([r.guidance for r in rows], batch_size), generate_and_write):
        bar.update(sum(finished))
    bar.close()
    if distributed.is_main():
        write_json_atomic(out / MANIFEST, {
            "model": pipe.parts.source, "encoder": encoder, "steps": steps, "sampler": sampler_description(sampler, steps),
            "attention": attention, "world_size": distributed.world_size(),
            "images": [{"file": p.name, "prompt": r.prompt, "seed": r.seed, "guidance": r.guidance}
                       for p, r in zip(written, rows)],
        })
    return written
