"""--attention sdpa|xformers on every command that runs the UNet.

xformers is CUDA-only and not installed here: its refusals are tested for real, and the path that
installs its processors is tested with the availability check faked, by the processors set on the
UNet (never by running xformers)."""

import importlib.util
import sys
import types

import pytest
import torch
from diffusers.models.attention_processor import AttnProcessor2_0, XFormersAttnProcessor
from helpers import FAST_ARGS, assert_refused, run_cli

import advunlearn_fast.evaluation.generation as generation
import advunlearn_fast.training.trainer as trainer
from advunlearn_fast.errors import UserError
from advunlearn_fast.models.attention import check_attention
from advunlearn_fast.training.config import TrainConfig


def _processors(unet) -> set:
    return {type(p) for p in unet.attn_processors.values()}


@pytest.mark.parametrize("engine", ["fast", "reference"])
@pytest.mark.parametrize("attention, processor", [("sdpa", AttnProcessor2_0), ("xformers", XFormersAttnProcessor)])
def test_training_sets_the_attention_processors(sd_folder, monkeypatch, engine, attention, processor):
    monkeypatch.setattr(trainer, "check_attention", lambda name, device: None)  # as if on a GPU with xformers
    cfg = TrainConfig(model=str(sd_folder), concepts=["church"], out="unused", ddim_steps=3, bank=False,
                      engine=engine, attention=attention, device="cpu").validate()
    s = trainer.build_setup(cfg)
    assert len(s.unet.attn_processors) == 8
    # The UNet being trained (or the reference engine's copy) and the frozen one alike.
    assert _processors(s.unet) == _processors(s.frozen.unet) == {processor}


@pytest.mark.parametrize("attention, processor", [("sdpa", AttnProcessor2_0), ("xformers", XFormersAttnProcessor)])
def test_pipelines_set_the_attention_processors(monkeypatch, attention, processor):
    monkeypatch.setattr(generation, "check_attention", lambda name, device: None)
    pipe = generation.build_pipeline("tiny", None, torch.device("cpu"), attention=attention)
    assert _processors(pipe.unet) == {processor}


def test_xformers_is_refused_off_cuda():
    with pytest.raises(UserError, match=r"needs a CUDA GPU .* use --attention sdpa"):
        check_attention("xformers", torch.device("cpu"))
    check_attention("sdpa", torch.device("cpu"))


def test_xformers_is_refused_when_not_installed(monkeypatch):
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *args: None)
    with pytest.raises(UserError, match=r"xformers is not installed .* --attention sdpa"):
        check_attention("xformers", torch.device("cuda"))


def test_xformers_that_does_not_run_is_one_line(monkeypatch):
    """A wheel built for another torch: installed, but its ops do not import."""
    fake = types.ModuleType("xformers")
    fake.__spec__ = importlib.machinery.ModuleSpec("xformers", None)
    monkeypatch.setitem(sys.modules, "xformers", fake)
    monkeypatch.setitem(sys.modules, "xformers.ops", None)  # `import xformers.ops` raises ImportError
    with pytest.raises(UserError) as refused:
        check_attention("xformers", torch.device("cuda"))
    message = str(refused.value)
    assert "does not run with torch" in message and "--attention sdpa" in message and "\n" not in message


COMMANDS = {
    "train": ["train", "--model", "tiny", "--concept", "church", *FAST_ARGS],
    "generate": ["generate", "--model", "tiny", "--prompt", "a photo of a cat"],
    "eval": ["eval", "--model", "world", "--prompts", "PROMPTS"],
    "attack": ["attack", "--model", "world", "--prompts", "PROMPTS", "--judge", "world:colour=red"],
}


def _argv(tmp_path, command):
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("a red circle\n")
    return [str(prompts) if a == "PROMPTS" else a for a in COMMANDS[command]] + ["--out", tmp_path / "out"]


@pytest.mark.parametrize("command", sorted(COMMANDS))
def test_every_command_refuses_xformers_on_a_cpu_in_one_line_and_writes_nothing(tmp_path, command):
    result = run_cli(*_argv(tmp_path, command), "--attention", "xformers", "--device", "cpu")
    assert_refused(result, "--attention xformers needs a CUDA GPU")
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("command", sorted(COMMANDS))
def test_an_unknown_attention_is_refused(tmp_path, command):
    result = run_cli(*_argv(tmp_path, command), "--attention", "flash")
    assert result.exit_code == 2 and "flash" in result.output and "sdpa" in result.output, result.output
    assert not (tmp_path / "out").exists()
