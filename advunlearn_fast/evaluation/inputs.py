"""The paths `attack`, `generate` and `eval` are given, checked before any model loads and
before anything is written: a refused command leaves no folder or file behind. Each command
checks its options in the order it lists them (--model, --model-config, --encoder, then the
prompts, --out and the rest), so that of two mistakes the first option is the one named.
"""

from __future__ import annotations

import re
from pathlib import Path

from advunlearn_fast.errors import UserError
from advunlearn_fast.models.loading import BUILT_IN_MODELS, check_model_config, check_model_spec
from advunlearn_fast.models.statedicts import STATE_DICT_SUFFIXES, file_kind
from advunlearn_fast.outputs import check_output_path

ENCODER_EXPECTED = ("a text-encoder folder, a train run folder, a pipeline folder (its text_encoder/), or a "
                    ".pt/.safetensors state dict")


def check_model_paths(model: str | None, model_config: str | None, encoder: str | None) -> None:
    """--model, --model-config and --encoder, in that order, name things that exist and are of
    the right kind (what they hold is checked when they load)."""
    if model is not None:
        check_model_spec(model)
    check_model_config(model_config, model)
    if encoder is not None:
        encoder_path(encoder)


def check_target_model(spec: str) -> None:
    """--target-model names a model as --model does, but not a single-file checkpoint: that would
    need configs of its own (--model-config is --model's)."""
    check_model_spec(spec, "--target-model")
    if spec not in BUILT_IN_MODELS and Path(spec).expanduser().is_file():
        raise UserError(f"--target-model {spec} is a single-file checkpoint; pass a diffusers folder or a hub id "
                        "(e.g. CompVis/stable-diffusion-v1-4)")


def encoder_path(spec: str) -> Path:
    """What --encoder names, as the text-encoder folder or the state-dict file to load: a
    text-encoder folder, a `train` run folder or a diffusers pipeline folder (its text_encoder/),
    or a state-dict file."""
    path = Path(spec).expanduser()
    if path.is_dir():
        run = (path / "run.json").is_file()
        folder = path / "text_encoder" if run or (path / "text_encoder").is_dir() else path
        if run and not (folder / "config.json").is_file():
            raise UserError(f"--encoder {spec}: the run folder has no text_encoder/ (a UNet run, or one that has not "
                            "finished)")
        if not (folder / "config.json").is_file():
            raise UserError(f"--encoder {spec} is a folder without config.json; expected {ENCODER_EXPECTED}")
        return folder
    if path.is_file():
        if path.suffix.lower() not in STATE_DICT_SUFFIXES:
            raise UserError(f"--encoder {spec} is {file_kind(path)}; expected {ENCODER_EXPECTED}")
        return path
    raise UserError(f"--encoder {spec} does not exist")


def check_out(out: str | Path) -> None:
    check_output_path(out, "--out")


def check_no_earlier_run(out: str | Path, command: str, files: tuple[str, ...], images: str) -> None:
    """Refuse an --out that holds what an earlier `command` run wrote there (`files`, or numbered
    images NNNN.png in its `images` subfolder): the new run's files would mix with the stale
    ones, or replace results (as `attack` refuses a folder with a report.json)."""
    folder = Path(out).expanduser()
    found = [name for name in files if (folder / name).exists()]
    pictures = folder / images
    if pictures.is_dir():
        numbered = sorted(p.name for p in pictures.iterdir() if re.fullmatch(r"\d{4,}\.png", p.name))
        if numbered:
            where = "" if images == "." else f"{images}/"
            found.append(f"{len(numbered)} images ({where}{numbered[0]}, ...)" if len(numbered) > 1
                         else f"{where}{numbered[0]}")
    if found:
        raise UserError(f"--out {out} already holds an earlier {command} run's {' and '.join(found)}; "
                        "choose another folder, or remove them first")


def check_folder(flag: str, value: str | None) -> None:
    if value is not None and not Path(value).expanduser().is_dir():
        raise UserError(f"{flag} {value} is not a folder")
