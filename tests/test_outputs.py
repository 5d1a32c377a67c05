"""The writers every output folder uses (outputs.py): what they write, and what they leave alone."""

import json

import torch
from transformers import CLIPTextModel

from advunlearn_fast.models.tiny import build_tiny_model
from advunlearn_fast.outputs import write_text_encoder


def test_write_text_encoder_names_the_architecture_in_the_file_not_on_the_model(tmp_path):
    te = build_tiny_model()["text_encoder"]
    te.config.architectures = None  # as a config built in code has it
    write_text_encoder(te, tmp_path / "te")
    assert te.config.architectures is None
    assert json.loads((tmp_path / "te" / "config.json").read_text())["architectures"] == ["CLIPTextModel"]
    loaded = CLIPTextModel.from_pretrained(tmp_path / "te", local_files_only=True).state_dict()
    for key, value in te.state_dict().items():
        assert torch.equal(loaded[key], value), key
