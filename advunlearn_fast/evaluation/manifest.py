"""What every report records so that a number can be traced: versions and content hashes."""

from __future__ import annotations

import hashlib
import platform
from pathlib import Path

import torch

from advunlearn_fast import __version__

# Files of a model folder that decide its outputs. Other weight formats a hub snapshot may
# also hold (TensorFlow, Flax, ONNX) are never read by this tool, so they are not hashed.
FOLDER_FILE_SUFFIXES = (".json", ".txt", ".safetensors", ".bin", ".model")


def file_sha256(path: str | Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        # Weight files are gigabytes: read them in pieces.
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def path_sha256(path: str | Path) -> str:
    """The hash of a file, or of a model folder's config, tokenizer and weight files (their
    relative names and contents, in sorted order)."""
    path = Path(path)
    if path.is_file():
        return file_sha256(path)
    digest = hashlib.sha256()
    for file in sorted(p for p in path.rglob("*") if p.is_file() and p.suffix.lower() in FOLDER_FILE_SUFFIXES):
        digest.update(f"{file.relative_to(path).as_posix()}\0{file_sha256(file)}\n".encode())
    return digest.hexdigest()


def versions() -> dict:
    import diffusers
    import transformers

    return {"advunlearn": __version__, "torch": torch.__version__, "diffusers": diffusers.__version__,
            "transformers": transformers.__version__, "python": platform.python_version()}
