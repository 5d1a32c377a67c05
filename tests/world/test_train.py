import json

import torch
from safetensors.torch import load_file
from transformers import CLIPTokenizer

from advunlearn_fast.world.captions import PAD_LENGTH, build_world_tokenizer
from advunlearn_fast.world.io import load_world_model
from advunlearn_fast.world.train import WorldTrainConfig, train_world


def _tiny(out, steps):
    return WorldTrainConfig(
        out=out, steps=steps, batch_size=4, eval_every=100, eval_samples=2, checkpoint_every=2, warmup=2, seed=3
    )


def test_training_resumes_bit_for_bit(tmp_path):
    straight = train_world(_tiny(tmp_path / "straight", 4))
    train_world(_tiny(tmp_path / "resumed", 2))
    resumed = train_world(_tiny(tmp_path / "resumed", 4), resume=True)
    assert straight["steps"] == resumed["steps"] == 4
    a = torch.load(tmp_path / "straight" / "checkpoint.pt", weights_only=False)
    b = torch.load(tmp_path / "resumed" / "checkpoint.pt", weights_only=False)
    for part in ("unet", "text_encoder", "ema_unet"):
        for key in a[part]:
            assert torch.equal(a[part][key], b[part][key]), f"{part}.{key}"
    assert (tmp_path / "resumed" / "best" / "world.json").is_file()


def test_the_best_model_folder_loads_weight_for_weight(tmp_path):
    """The folder training writes is the one `load_world_model` and transformers 4.x read: the
    EMA weights it held, bit for bit, and a tokenizer that reads the same from its BPE files."""
    train_world(_tiny(tmp_path / "run", 2))  # evaluated, so written, at its last step
    held = torch.load(tmp_path / "run" / "checkpoint.pt", weights_only=False)
    best = tmp_path / "run" / "best"
    world = load_world_model(best)
    for part, module in (("ema_text", world.text_encoder), ("ema_unet", world.unet)):
        loaded = module.state_dict()
        assert loaded.keys() == held[part].keys(), part
        for key, value in held[part].items():
            assert torch.equal(loaded[key], value), f"{part}.{key}"
    stored = load_file(str(best / "text_encoder" / "model.safetensors"))
    assert stored and all(key.startswith("text_model.") for key in stored)
    assert json.loads((best / "text_encoder" / "config.json").read_text())["architectures"] == ["CLIPTextModel"]
    text = ["a picture showing one dotted purple cross", "van gogh painting of a church"]
    from_bpe_files = CLIPTokenizer(vocab=str(best / "tokenizer" / "vocab.json"),
                                   merges=str(best / "tokenizer" / "merges.txt"), model_max_length=PAD_LENGTH)
    expected = build_world_tokenizer()(text, padding="max_length").input_ids
    assert from_bpe_files(text, padding="max_length").input_ids == world.tokenizer(text, padding="max_length").input_ids
    assert world.tokenizer(text, padding="max_length").input_ids == expected
