"""Reading weights that a user names by path: state dicts only, never code.

Pickle files are read weights-only (`torch.load(..., weights_only=True)`), so a file that
holds anything but tensors and plain containers is refused instead of executed. A file that
cannot be read is described to the user (empty, text, cut short) rather than reported in the
words of the library that failed on it.
"""

from __future__ import annotations

import json
import zipfile
from pathlib import Path

import torch

from advunlearn_fast.errors import UserError
from advunlearn_fast.outputs import TEXT_MODEL_PREFIX

STATE_DICT_SUFFIXES = (".safetensors", ".pt", ".pth", ".bin", ".ckpt")
STATE_DICT = "a state dict (.safetensors, .pt, .pth, .bin or .ckpt)"
ZIP_MAGIC = b"PK\x03\x04"  # torch.save's format since PyTorch 1.6


def _first_line(err: Exception) -> str:
    return (str(err).strip().splitlines() or [err.__class__.__name__])[0]


def file_kind(path: Path) -> str:
    """What a file looks like from its first bytes, for messages: 'an empty file', 'a text file',
    'a zip archive', else by its suffix."""
    with open(path, "rb") as handle:
        head = handle.read(4096)
    if not head:
        return "an empty file"
    if head.startswith(ZIP_MAGIC):
        return "a zip archive"
    if b"\0" not in head and _is_utf8(head, cut=len(head) == 4096):
        return "a text file"
    return f"a {path.suffix} file" if path.suffix else "a binary file"


def _is_utf8(data: bytes, cut: bool) -> bool:
    """Whether `data` is UTF-8, allowing a character split at its end when it was `cut` from a
    longer file."""
    try:
        data.decode("utf-8")
        return True
    except UnicodeDecodeError as err:
        return cut and err.start >= len(data) - 3


def safetensors_damage(path: Path) -> str | None:
    """Why a .safetensors file cannot be whole, or None: the format is an 8-byte header length,
    a JSON header giving each tensor's byte range, then the tensors, so a file cut short (an
    interrupted download or copy) no longer ends where its header says."""
    size = path.stat().st_size
    if size < 8:
        return f"{size} bytes, less than the 8-byte header length"
    with open(path, "rb") as handle:
        header_size = int.from_bytes(handle.read(8), "little")
        if 8 + header_size > size:
            return f"its header is {header_size} bytes long, the file holds {size - 8} after the length"
        try:
            header = json.loads(handle.read(header_size))
            end = max((int(t["data_offsets"][1]) for k, t in header.items() if k != "__metadata__"), default=0)
        except (ValueError, TypeError, KeyError, IndexError, AttributeError):
            return "its header is not a safetensors header"
    if 8 + header_size + end != size:
        return f"its header describes {8 + header_size + end} bytes, the file has {size}"
    return None


def weights_damage(path: Path) -> str | None:
    """Why a weights file cannot be whole, or None where nothing is seen wrong: a .safetensors
    file whose size disagrees with its header, a torch zip archive without its directory (which
    sits at the end of the file)."""
    if path.suffix.lower() == ".safetensors":
        return safetensors_damage(path)
    with open(path, "rb") as handle:
        zipped = handle.read(4) == ZIP_MAGIC
    if zipped and not zipfile.is_zipfile(path):
        return "a torch zip archive without its directory: the end of the file is missing"
    return None


# Why a pickle file was not read: torch's weights-only unpickler, which runs no code, stopped on it.
WEIGHTS_ONLY_REFUSAL = ("holds objects other than weights (or is no torch checkpoint at all), which weights-only "
                        "loading refuses for safety")


def refused_by_weights_only(err: BaseException) -> bool:
    """Whether torch's weights-only unpickler refused the file behind `err`, or behind the error
    a library raised in its place (diffusers' single-file loader re-raises it)."""
    while err is not None:
        if "weights only load failed" in str(err).lower():
            return True
        err = err.__cause__ or err.__context__
    return False


def load_error(what: str, path: str | Path, err: Exception) -> UserError:
    """The error for `what` at `path` (a file, or a folder) that a library failed to load: a
    damaged weights file by name and what is wrong with it, else the library's first line."""
    path = Path(path)
    files = sorted(path.rglob("*")) if path.is_dir() else [path]
    for file in files:
        if file.is_file() and file.suffix.lower() in STATE_DICT_SUFFIXES:
            damage = weights_damage(file)
            if damage is not None:
                return UserError(f"cannot load {what}: {file} is truncated or corrupt ({damage})")
    return UserError(f"cannot load {what} from {path}: {_first_line(err)}")


def read_state_dict(path: str | Path, what: str, expected: str = STATE_DICT) -> dict[str, torch.Tensor]:
    """The tensors of a .safetensors file or a torch-saved state dict (optionally wrapped as
    {'state_dict': ...}); `what` starts every error message, e.g. '--encoder FILE', and
    `expected` says what the file should have been."""
    path = Path(path)
    damage = weights_damage(path)
    if damage is not None:
        raise UserError(f"{what} is truncated or corrupt ({damage})")
    try:
        if path.suffix.lower() == ".safetensors":
            from safetensors.torch import load_file

            state = load_file(str(path))
        else:
            state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:
        kind = file_kind(path)
        if kind in ("an empty file", "a text file"):
            raise UserError(f"{what} is {kind}; expected {expected}") from None
        if refused_by_weights_only(err):
            raise UserError(f"{what} {WEIGHTS_ONLY_REFUSAL}: save a plain state dict of tensors") from None
        raise UserError(f"{what}: cannot read the state dict: {_first_line(err)}") from None
    if isinstance(state, dict) and isinstance(state.get("state_dict"), dict):
        state = state["state_dict"]
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise UserError(f"{what}: expected a state dict of tensors")
    return state


def load_weights(module: torch.nn.Module, state: dict[str, torch.Tensor], what: str, expected: str) -> None:
    """Load `state` into `module`, every key and shape accounted for. BatchNorm's
    num_batches_tracked counter may be absent: older torch versions did not save it and it
    plays no part at inference."""
    own = module.state_dict()
    missing = sorted(k for k in own if k not in state and not k.endswith("num_batches_tracked"))
    unexpected = sorted(k for k in state if k not in own)
    if missing or unexpected:
        example = (missing or unexpected)[0]
        raise UserError(f"{what} is not {expected}: {len(missing)} missing and {len(unexpected)} unexpected "
                        f"keys, e.g. {example!r}")
    wrong = next((k for k, v in state.items() if tuple(v.shape) != tuple(own[k].shape)), None)
    if wrong is not None:
        raise UserError(f"{what} is not {expected}: {wrong} has shape {tuple(state[wrong].shape)}, "
                        f"expected {tuple(own[wrong].shape)}")
    module.load_state_dict(state, strict=False)


# The authors' released text-encoder .pt files are the state dict of their training wrapper:
# the CLIPTextModel under `text_encoder.`, and the same modules again under the wrapper's own
# names. Alias prefix -> the CLIPTextModel prefix it repeats.
WRAPPER_PREFIX = "text_encoder."
WRAPPER_ALIASES = {"embedding.": "embeddings.", "encoder.": "encoder.", "final_layer_norm.": "final_layer_norm."}


def clip_text_state(state: dict[str, torch.Tensor], what: str) -> dict[str, torch.Tensor]:
    """A CLIP text encoder's weights with bare keys ('embeddings.token_embedding.weight', ...) from
    plain CLIPTextModel keys (with or without 'text_model.') or the authors' wrapper layout, whose
    aliases must hold the same tensors as the keys they repeat (a file whose copies disagree is
    ambiguous and refused, naming the key)."""
    if not any(k.startswith(WRAPPER_PREFIX) for k in state):
        return {k.removeprefix(TEXT_MODEL_PREFIX): v for k, v in state.items()}
    bare: dict[str, torch.Tensor] = {}
    aliases: dict[str, tuple[str, torch.Tensor]] = {}
    for key, value in state.items():
        if key.startswith(WRAPPER_PREFIX):
            bare[key.removeprefix(WRAPPER_PREFIX).removeprefix(TEXT_MODEL_PREFIX)] = value
            continue
        alias = next((a for a in WRAPPER_ALIASES if key.startswith(a)), None)
        if alias is None:
            bare[key] = value  # reported as unexpected by the caller
        else:
            aliases[WRAPPER_ALIASES[alias] + key.removeprefix(alias)] = (key, value)
    for name, (key, value) in aliases.items():
        if name.endswith("position_ids"):
            continue  # a buffer some transformers versions save; never a weight
        if name not in bare:
            raise UserError(f"{what}: {key!r} repeats {WRAPPER_PREFIX}{TEXT_MODEL_PREFIX}{name}, which the file lacks")
        if bare[name].shape != value.shape or not torch.equal(bare[name], value):
            raise UserError(f"{what}: {key!r} differs from {WRAPPER_PREFIX}{TEXT_MODEL_PREFIX}{name}, which it "
                            "should repeat: the file is not one encoder")
    return bare
