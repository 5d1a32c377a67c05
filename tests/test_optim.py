"""--optim: torch Adam or bitsandbytes' 8-bit Adam, recorded in run.json and restored by --resume."""

import functools
import json
import math

import pytest
import torch
from helpers import FAST_ARGS, run_cli
from safetensors.torch import load_file

import advunlearn_fast.training.optim as optim
import advunlearn_fast.training.trainer as trainer

ARGS = ["--concept", "nudity", "--layers", "0-1", "--iterations", 3, "--warmup", 1, "--save-every", 2, *FAST_ARGS]


def test_adam8bit_without_bitsandbytes_is_one_clear_line(sd_folder, tmp_path, monkeypatch):
    monkeypatch.setattr(optim, "_bitsandbytes", lambda: None)
    result = run_cli("train", "--model", sd_folder, "--out", tmp_path / "run", *ARGS, "--optim", "adam8bit")
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert result.exit_code == 2 and len(lines) == 1, result.output
    assert "pip install bitsandbytes" in lines[0]
    assert not (tmp_path / "run").exists()  # refused before anything was written


@pytest.mark.parametrize("engine", ["fast", "reference"])
def test_the_default_is_torch_adam_on_cuda_too(engine, monkeypatch):
    """The authors' torch.optim.Adam, whatever the engine, on a GPU machine with bitsandbytes installed."""
    pytest.importorskip("bitsandbytes", reason="bitsandbytes is not installed (pip install -e '.[dev]')")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(trainer, "resolve_device", lambda name: torch.device("cuda"))
    monkeypatch.setattr(trainer.distributed, "start", lambda device: None)
    ran = []
    monkeypatch.setattr(trainer, "_train", lambda cfg, progress, after: ran.append(cfg))
    trainer.train(trainer.TrainConfig(concepts=["nudity"], engine=engine, device="cuda"))
    (cfg,) = ran
    assert cfg.optim == "adam"
    built = optim.build_optimizer(cfg.optim, [torch.nn.Parameter(torch.zeros(2))], cfg.lr)
    assert type(built) is torch.optim.Adam and built.defaults["lr"] == 1e-5


@pytest.fixture
def small_tensors_quantised(monkeypatch):
    """The tiny model's tensors are below bitsandbytes' 4096-element threshold for 8-bit state;
    lowering it makes the test exercise the quantised state that full-size layers get."""
    bnb = pytest.importorskip("bitsandbytes", reason="bitsandbytes is not installed (pip install -e '.[dev]')")
    monkeypatch.setattr(bnb.optim, "Adam8bit", functools.partial(bnb.optim.Adam8bit, min_8bit_size=256))


def test_adam8bit_trains_and_resumes_bit_for_bit(sd_folder, tmp_path, monkeypatch, small_tensors_quantised):
    args = [*ARGS, "--optim", "adam8bit", "--iterations", 4]
    whole = tmp_path / "whole"
    assert run_cli("train", "--model", sd_folder, "--out", whole, *args).exit_code == 0
    run = json.loads((whole / "run.json").read_text())
    assert run["config"]["optim"] == "adam8bit" and run["versions"]["bitsandbytes"]
    assert all(math.isfinite(json.loads(line)["loss"]) for line in (whole / "log.jsonl").read_text().splitlines())
    base = load_file(str(sd_folder / "text_encoder" / "model.safetensors"))
    trained = load_file(str(whole / "text_encoder" / "model.safetensors"))
    assert any(not torch.equal(base[k], trained[k]) for k in trained)
    state = torch.load(whole / "checkpoints" / "step-000004" / "training_state.pt", weights_only=True)
    quantised = [v for s in state["optimizer"]["state"].values() for v in _tensors(s) if v.dtype == torch.uint8]
    assert quantised, "no 8-bit optimizer state was saved"

    cut = tmp_path / "cut"
    real_step, calls = trainer.defender_step, []

    def interrupted_step(*a, **k):
        calls.append(1)
        if len(calls) == 3:  # after the step-2 checkpoint
            raise KeyboardInterrupt
        return real_step(*a, **k)

    monkeypatch.setattr(trainer, "defender_step", interrupted_step)
    assert run_cli("train", "--model", sd_folder, "--out", cut, *args).exit_code == 130
    monkeypatch.setattr(trainer, "defender_step", real_step)
    result = run_cli("train", "--model", sd_folder, "--out", cut, *args, "--resume")
    assert result.exit_code == 0, result.output
    resumed = load_file(str(cut / "text_encoder" / "model.safetensors"))
    for key in trained:  # the optimiser's 8-bit state came back exactly, or the weights would differ
        assert torch.equal(trained[key], resumed[key]), key
    result = run_cli("train", "--model", sd_folder, "--out", cut, *args, "--optim", "adam", "--iterations", 5, "--resume")
    assert result.exit_code == 2 and "--optim differ" in result.output


def _tensors(value):
    """Every tensor in an optimizer state entry (bitsandbytes nests its quantised state in a dict)."""
    if isinstance(value, torch.Tensor):
        return [value]
    if isinstance(value, dict):
        return [t for v in value.values() for t in _tensors(v)]
    return []
