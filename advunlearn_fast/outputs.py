"""Writing run outputs atomically, in formats every SD v1.x tool loads.

A folder appears under its final name only once it is complete, so a killed run
never leaves an encoder that looks finished but is broken.
"""

from __future__ import annotations

import copy
import json
import os
import shutil
import tempfile
from contextlib import contextmanager
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from advunlearn_fast.errors import UserError

# transformers 4.x keys CLIPTextModel weights under `text_model.`; 5.x drops the
# prefix when saving, and 4.x then silently re-initialises every weight. SD v1.x
# checkpoints carry the prefix, and 5.x strips it on load, so writing it serves both.
TEXT_MODEL_PREFIX = "text_model."


def check_output_path(value: str | Path, flag: str, folder: bool = True) -> None:
    """Refuse, before any work, an output path that cannot be written: otherwise the command
    fails with an OS traceback after its work (eval and attack after generating every image).
    Nothing is created: the nearest existing folder on the way is probed with a scratch file,
    which also catches what permission bits do not show (read-only mounts, immutable folders)."""
    if not str(value).strip():
        raise UserError(f"{flag} is empty: name a {'folder' if folder else 'file'}")
    path = Path(value).expanduser()
    if folder and path.exists() and not path.is_dir():
        raise UserError(f"{flag} {value} is a file, not a folder")
    existing = path if path.is_dir() else path.parent
    while not existing.exists():
        existing = existing.parent
    if not existing.is_dir():
        raise UserError(f"{flag} {value}: {existing} is a file, not a folder")
    try:
        handle, probe = tempfile.mkstemp(dir=existing, prefix=".advunlearn-write-test-")
    except OSError as err:
        raise UserError(f"{flag} {value}: cannot write in {existing} ({err.strerror})") from None
    os.close(handle)
    os.unlink(probe)


@contextmanager
def atomic_dir(final: Path):
    """Yield a scratch folder that replaces `final` only if the block completes."""
    final = Path(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = final.parent / f".{final.name}.partial"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    try:
        yield tmp
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    if final.exists():
        old = final.parent / f".{final.name}.old"
        shutil.rmtree(old, ignore_errors=True)
        os.replace(final, old)
        os.replace(tmp, final)
        shutil.rmtree(old)
    else:
        os.replace(tmp, final)


@contextmanager
def atomic_file(final: Path):
    """Yield a scratch path that replaces `final` only if the block completes; a failed or
    interrupted block leaves no file behind."""
    final = Path(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = final.with_name(f".{final.name}.partial")
    try:
        yield tmp
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    os.replace(tmp, final)


def write_text_atomic(path: Path, text: str) -> None:
    with atomic_file(path) as tmp:
        tmp.write_text(text, encoding="utf-8")


def write_json_atomic(path: Path, data: dict) -> None:
    write_text_atomic(path, json.dumps(data, indent=2, default=str) + "\n")


def text_encoder_state(text_encoder) -> dict[str, torch.Tensor]:
    """State dict in SD v1.x's layout: every key under `text_model.`."""
    state = text_encoder.state_dict()
    return {
        (k if k.startswith(TEXT_MODEL_PREFIX) else TEXT_MODEL_PREFIX + k): v.detach().contiguous().cpu()
        for k, v in state.items()
    }


def write_text_encoder(text_encoder, folder: Path) -> None:
    """config.json + model.safetensors that `CLIPTextModel.from_pretrained` loads in 4.x and 5.x.
    The model's own config is left as it was (a copy names the architecture)."""
    config = copy.deepcopy(text_encoder.config)
    config.architectures = ["CLIPTextModel"]
    config.save_pretrained(folder)
    save_file(text_encoder_state(text_encoder), str(Path(folder) / "model.safetensors"), metadata={"format": "pt"})


def write_tokenizer(tokenizer, folder: Path) -> None:
    """The tokenizer, plus vocab.json/merges.txt for transformers 4.x's slow CLIPTokenizer."""
    tokenizer.save_pretrained(folder)
    folder = Path(folder)
    if not (folder / "vocab.json").exists():
        (folder / "vocab.json").write_text(json.dumps(tokenizer.get_vocab(), ensure_ascii=False), encoding="utf-8")
    if not (folder / "merges.txt").exists():
        merges = json.loads(tokenizer.backend_tokenizer.to_str())["model"]["merges"]
        lines = [m if isinstance(m, str) else " ".join(m) for m in merges]
        (folder / "merges.txt").write_text("#version: 0.2\n" + "\n".join(lines) + "\n", encoding="utf-8")


def write_unet(unet, folder: Path) -> None:
    unet.save_pretrained(folder, safe_serialization=True)


def load_module_weights(module, weights_file: Path) -> None:
    """Load weights written by this module back into `module` (prefix-agnostic, strict)."""
    try:
        state = load_file(str(weights_file))
    except Exception as err:
        raise UserError(f"cannot read {weights_file}: {str(err).splitlines()[0]}") from None
    own = module.state_dict()
    if all(not k.startswith(TEXT_MODEL_PREFIX) for k in own):
        state = {k.removeprefix(TEXT_MODEL_PREFIX): v for k, v in state.items()}
    module.load_state_dict(state, strict=True)
