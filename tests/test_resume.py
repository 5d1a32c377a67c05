"""An interrupted-and-resumed run ends with the same weights as an uninterrupted one."""

import torch
from helpers import FAST_ARGS, run_cli
from safetensors.torch import load_file

import advunlearn_fast.training.trainer as trainer

ARGS = ["--concept", "nudity", "--layers", "0-1", "--iterations", 4, "--warmup", 1, "--save-every", 2,
        "--attack-init", "latest", *FAST_ARGS]


def test_resume_matches_uninterrupted_run(sd_folder, tmp_path, monkeypatch):
    whole = tmp_path / "whole"
    assert run_cli("train", "--model", sd_folder, "--out", whole, *ARGS).exit_code == 0

    cut = tmp_path / "cut"
    real_step = trainer.defender_step
    calls = []

    def interrupted_step(*args, **kwargs):
        calls.append(1)
        if len(calls) == 4:  # the 4th iteration: after the step-2 checkpoint
            raise KeyboardInterrupt
        return real_step(*args, **kwargs)

    monkeypatch.setattr(trainer, "defender_step", interrupted_step)
    result = run_cli("train", "--model", sd_folder, "--out", cut, *ARGS)
    assert result.exit_code == 130 and "--resume" in result.output
    assert not (cut / "text_encoder").exists()  # nothing that looks finished
    assert (cut / "checkpoints" / "step-000002" / "training_state.pt").is_file()
    monkeypatch.setattr(trainer, "defender_step", real_step)

    result = run_cli("train", "--model", sd_folder, "--out", cut, *ARGS, "--resume")
    assert result.exit_code == 0, result.output
    a = load_file(str(whole / "text_encoder" / "model.safetensors"))
    b = load_file(str(cut / "text_encoder" / "model.safetensors"))
    for key in a:
        assert torch.equal(a[key], b[key]), key
    assert (whole / "log.jsonl").read_text().count("\n") == (cut / "log.jsonl").read_text().count("\n") == 4


def test_resume_refuses_changed_settings_and_missing_checkpoints(sd_folder, tmp_path):
    out = tmp_path / "run"
    result = run_cli("train", "--model", sd_folder, "--out", out, *ARGS, "--resume")
    assert result.exit_code == 2 and "no checkpoint to resume" in result.output
    # click keeps the last value of a repeated option: a 2-iteration run with the same settings
    assert run_cli("train", "--model", sd_folder, "--out", out, *ARGS, "--iterations", 2).exit_code == 0
    result = run_cli("train", "--model", sd_folder, "--out", out, *ARGS, "--lr", "1e-3", "--resume")
    assert result.exit_code == 2 and "--lr differ" in result.output
    result = run_cli("train", "--model", sd_folder, "--out", out, *ARGS, "--iterations", 2, "--resume")
    assert result.exit_code == 2 and "raise --iterations" in result.output
    result = run_cli("train", "--model", sd_folder, "--out", out, *ARGS)
    assert result.exit_code == 2 and "already holds a run" in result.output
