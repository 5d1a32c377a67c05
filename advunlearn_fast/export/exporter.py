"""`advunlearn export`: an erased text encoder put back into the files people load.

- `diffusers`: the whole pipeline folder (VAE, UNet, scheduler, tokenizer, safety checker and
  feature extractor where the model has them) with the erased encoder, as
  `StableDiffusionPipeline.save_pretrained` writes it;
- `single-file`: one `.safetensors` SD v1.x checkpoint in the CompVis key layout (compvis.py).
  From a single-file model only its text-encoder keys change; every other tensor is copied as
  it is (unless --dtype asks for another precision). From any other model every part is
  converted;
- `authors-pt`: the authors' wrapper state dict (authors.py).

Everything is checked before anything is written, and the output appears under its name only
once complete.
"""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass
from pathlib import Path

import torch

from advunlearn_fast.errors import UserError, notice
from advunlearn_fast.evaluation.generation import load_encoder, load_vae
from advunlearn_fast.export.authors import authors_state_dict
from advunlearn_fast.export.compvis import TEXT_ENCODER_PREFIX, text_encoder_to_compvis, unet_to_compvis, vae_to_compvis
from advunlearn_fast.models.loading import NO_VAE_MODELS, ModelParts, load_model
from advunlearn_fast.models.statedicts import read_state_dict
from advunlearn_fast.outputs import atomic_dir, atomic_file, check_output_path, write_text_encoder, write_tokenizer

FORMATS = ("diffusers", "single-file", "authors-pt")
DTYPES = {"fp16": torch.float16, "bf16": torch.bfloat16, "fp32": torch.float32}
OUT_SUFFIXES = {"single-file": (".safetensors",), "authors-pt": (".pt", ".pth")}


@dataclass
class ExportSettings:
    model: str
    encoder: str
    format: str
    out: str
    dtype: str | None = None  # None: the precision the model stores its text encoder in
    model_config: str | None = None

    def validate(self) -> "ExportSettings":
        if self.format not in FORMATS:
            raise UserError(f"--format must be one of {', '.join(FORMATS)}, got {self.format!r}")
        if self.dtype is not None and self.dtype not in DTYPES:
            raise UserError(f"--dtype must be one of {', '.join(DTYPES)}, got {self.dtype!r}")
        out = Path(self.out)
        if out.exists() or out.is_symlink():
            raise UserError(f"--out {self.out} already exists; export never overwrites: choose a new path")
        suffixes = OUT_SUFFIXES.get(self.format)
        if suffixes and out.suffix.lower() not in suffixes:
            raise UserError(f"--out {self.out}: {self.format} exports are {' or '.join(suffixes)} files")
        check_output_path(self.out, "--out", folder=False)
        if self.format != "authors-pt" and self.model in NO_VAE_MODELS:
            raise self.needs_vae()
        return self

    def needs_vae(self) -> UserError:
        return UserError(f"--model {self.model} has no VAE, and a {self.format} export is a whole Stable Diffusion "
                         "model: pass a latent SD v1.x model, or use --format authors-pt")


def export(s: ExportSettings) -> Path:
    """Write the export named by `s`; returns its path."""
    s.validate()
    parts = load_model(s.model, s.model_config)
    if s.format != "authors-pt" and parts.vae_scale == 1:  # a pixel-space model
        raise s.needs_vae()
    encoder = load_encoder(s.encoder, parts).eval()  # the model's architecture, only its weights changed
    if same_weights(encoder, parts.text_encoder):
        notice(f"--encoder {s.encoder} holds the weights of --model {s.model}'s own text encoder: nothing is erased "
               "in this export")
    checkpoint = single_file_checkpoint(s.model)
    dtype = DTYPES[s.dtype] if s.dtype else source_dtype(parts, checkpoint)
    out = Path(s.out)
    if s.format == "authors-pt":
        with atomic_file(out) as tmp:
            torch.save(authors_state_dict(encoder, dtype), tmp)
    elif s.format == "single-file" and checkpoint is not None:
        write_single_file_over(checkpoint, encoder, DTYPES.get(s.dtype), dtype, out)
    elif s.format == "single-file":
        write_single_file(full_pipeline(s, parts, encoder, safety_checker=False), dtype, out)
    else:
        # A folder's own index, or, for a checkpoint, that of the folder its configs came from.
        configs = Path(s.model_config) if checkpoint is not None and s.model_config else Path(parts.source)
        write_diffusers(full_pipeline(s, parts, encoder, safety_checker=True), dtype, out, configs / "model_index.json")
    return out


# ---------------------------------------------------------------- checks


def same_weights(a: torch.nn.Module, b: torch.nn.Module) -> bool:
    theirs = b.state_dict()
    return all(name in theirs and torch.equal(value, theirs[name]) for name, value in a.state_dict().items())


def single_file_checkpoint(spec: str) -> Path | None:
    path = Path(spec).expanduser()
    return path if path.is_file() else None


def source_dtype(parts: ModelParts, checkpoint: Path | None) -> torch.dtype:
    """The precision the model stores its text encoder in. transformers loads a folder's encoder
    in that precision; diffusers' single-file loader upcasts, so a checkpoint is read."""
    if checkpoint is None:
        return parts.text_encoder.dtype

    def table(keys):
        return next((k for k in keys if k.startswith(TEXT_ENCODER_PREFIX) and k.endswith("token_embedding.weight")), None)

    if checkpoint.suffix.lower() == ".safetensors":
        from safetensors import safe_open

        with safe_open(str(checkpoint), "pt") as handle:
            key = table(handle.keys())
            return handle.get_tensor(key).dtype if key else parts.text_encoder.dtype
    state = read_state_dict(checkpoint, f"--model {checkpoint}")
    key = table(state)
    return state[key].dtype if key else parts.text_encoder.dtype


# ---------------------------------------------------------------- the model's other parts


def full_pipeline(s: ExportSettings, parts: ModelParts, encoder, safety_checker: bool):
    """A diffusers StableDiffusionPipeline of the model with `encoder` in place of its own and
    the UNet and tokenizer already loaded; the rest (VAE, scheduler and, when asked and the
    model has them, safety checker and feature extractor) loaded from the model."""
    from diffusers import DDIMScheduler, StableDiffusionPipeline

    given = {"text_encoder": encoder, "unet": parts.unet, "tokenizer": parts.tokenizer}
    no_checker = {"safety_checker": None, "requires_safety_checker": False}
    if s.model == "tiny":
        return StableDiffusionPipeline(vae=load_vae(parts), scheduler=DDIMScheduler.from_config(parts.scheduler_config),
                                       feature_extractor=None, **given, **no_checker)
    path = Path(s.model).expanduser()
    try:
        if path.is_file():  # a checkpoint holds no safety checker
            return StableDiffusionPipeline.from_single_file(
                str(path), config=s.model_config, local_files_only=s.model_config is not None, **given, **no_checker
            )
        # A hub id reads the Hugging Face cache, and downloads what it lacks unless HF_HUB_OFFLINE is set.
        return StableDiffusionPipeline.from_pretrained(
            str(path) if path.is_dir() else s.model, local_files_only=path.is_dir(), **given,
            **({} if safety_checker else no_checker),
        )
    except Exception as err:
        first = (str(err).strip().splitlines() or [err.__class__.__name__])[0]
        raise UserError(f"cannot load the rest of the model (VAE, scheduler) from {s.model}: {first}") from None


# ---------------------------------------------------------------- writers


def write_diffusers(pipe, dtype: torch.dtype, out: Path, source_index: Path | None) -> None:
    """The pipeline folder; `source_index` is the model's own model_index.json, if it has one."""
    with atomic_dir(out) as tmp:
        pipe.to(dtype=dtype)
        pipe.save_pretrained(tmp, safe_serialization=True)
        # transformers 5 may write the encoder without the `text_model.` prefix (when its weights
        # came without one), which 4.x would silently re-initialise, and the tokenizer without
        # 4.x's vocab.json/merges.txt: the project's writers serve both.
        for name in ("text_encoder", "tokenizer"):
            shutil.rmtree(tmp / name)
        write_text_encoder(pipe.text_encoder, tmp / "text_encoder")
        write_tokenizer(pipe.tokenizer, tmp / "tokenizer")
        if source_index is not None and source_index.is_file():
            keep_class_names(tmp / "model_index.json", source_index)


def keep_class_names(index_file: Path, source_index: Path) -> None:
    """Name each part by the class the model's own index names it. Loading may substitute a
    class (transformers without torchvision loads CLIPImageProcessor as CLIPImageProcessorPil),
    and the substitute's name would then be written: other installations may lack that class."""
    index = json.loads(index_file.read_text(encoding="utf-8"))
    source = json.loads(source_index.read_text(encoding="utf-8"))
    for name, entry in index.items():
        theirs = source.get(name)
        if isinstance(entry, list) and entry[0] is not None and isinstance(theirs, list) and theirs[0] is not None:
            index[name] = theirs
    index_file.write_text(json.dumps(index, indent=2) + "\n", encoding="utf-8")


def _cast(state: dict[str, torch.Tensor], dtype: torch.dtype | None) -> dict[str, torch.Tensor]:
    """Floating-point tensors in `dtype` (None: as they are; integer buffers such as
    position_ids always stay), each in its own contiguous memory as safetensors requires."""
    out, seen = {}, set()
    for key, value in state.items():
        value = value.detach().cpu()
        if dtype is not None and value.is_floating_point():
            value = value.to(dtype)
        storage = value.untyped_storage().data_ptr()
        if storage in seen or not value.is_contiguous():
            value = value.contiguous().clone()
        seen.add(value.untyped_storage().data_ptr())
        out[key] = value
    return out


def write_single_file(pipe, dtype: torch.dtype, out: Path) -> None:
    from safetensors.torch import save_file

    state = text_encoder_to_compvis(pipe.text_encoder)
    state.update(unet_to_compvis(pipe.unet.state_dict(), pipe.unet.config))
    state.update(vae_to_compvis(pipe.vae.state_dict(), pipe.vae.config))
    with atomic_file(out) as tmp:
        save_file(_cast(state, dtype), str(tmp), metadata={"format": "pt"})


def write_single_file_over(checkpoint: Path, encoder, cast_to: torch.dtype | None, dtype: torch.dtype, out: Path) -> None:
    """The checkpoint with its text-encoder keys replaced by `encoder`'s (in `dtype`); the other
    tensors as they are, or cast to `cast_to` when --dtype was given."""
    from safetensors.torch import save_file

    metadata = {"format": "pt"}
    if checkpoint.suffix.lower() == ".safetensors":
        from safetensors import safe_open

        with safe_open(str(checkpoint), "pt") as handle:
            metadata = handle.metadata() or metadata
    source = read_state_dict(checkpoint, f"--model {checkpoint}")
    if not any(k.startswith(TEXT_ENCODER_PREFIX) for k in source):
        raise UserError(f"--model {checkpoint} has no text encoder under {TEXT_ENCODER_PREFIX!r}: not an SD v1.x checkpoint")
    kept = {k: v for k, v in source.items() if not k.startswith(TEXT_ENCODER_PREFIX)}
    state = {**_cast(kept, cast_to), **_cast(text_encoder_to_compvis(encoder), dtype)}
    with atomic_file(out) as tmp:
        save_file(state, str(tmp), metadata=metadata)
