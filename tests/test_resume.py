"""An interrupted-and-resumed run ends with the same weights as an uninterrupted one."""

import pytest
import torch
from helpers import FAST_ARGS, assert_refused, run_cli
from safetensors.torch import load_file

import advunlearn_fast.training.trainer as trainer

ARGS = ["--concept", "nudity", "--layers", "0-1", "--iterations", 4, "--warmup", 1, "--save-every", 2,
        "--attack-init", "latest", *FAST_ARGS]


# What --train trains, and the weights file the run writes for it.
TRAINED = {"text-encoder": "text_encoder/model.safetensors", "unet-xattn": "unet/diffusion_pytorch_model.safetensors"}


@pytest.mark.parametrize("train, extra", [
    ("text-encoder", []),
    ("unet-xattn", []),
    # Resumed at iteration 2, between two draws: the concept drawn at 0 must be the one held.
    ("text-encoder", ["--concept", "naked", "--attack-every", 3]),
], ids=["text-encoder", "unet-xattn", "attack-every-3"])
def test_resume_matches_uninterrupted_run(sd_folder, tmp_path, monkeypatch, train, extra):
    args = [*ARGS, "--train", train, *extra]
    whole = tmp_path / "whole"
    assert run_cli("train", "--model", sd_folder, "--out", whole, *args).exit_code == 0

    cut = tmp_path / "cut"
    real_step = trainer.defender_step
    calls = []

    def interrupted_step(*args, **kwargs):
        calls.append(1)
        if len(calls) == 4:  # the 4th iteration: after the step-2 checkpoint
            raise KeyboardInterrupt
        return real_step(*args, **kwargs)

    monkeypatch.setattr(trainer, "defender_step", interrupted_step)
    result = run_cli("train", "--model", sd_folder, "--out", cut, *args)
    assert result.exit_code == 130 and "--resume" in result.output
    assert not (cut / TRAINED[train]).parent.exists()  # nothing that looks finished
    assert (cut / "checkpoints" / "step-000002" / "training_state.pt").is_file()
    monkeypatch.setattr(trainer, "defender_step", real_step)
    result = run_cli("train", "--model", sd_folder, "--out", cut, *args)  # without --resume: not started over
    assert_refused(result, f"--out {cut} holds an unfinished run (checkpoints up to step-000002): pass --resume")

    result = run_cli("train", "--model", sd_folder, "--out", cut, *args, "--resume")
    assert result.exit_code == 0, result.output
    a = load_file(str(whole / TRAINED[train]))
    b = load_file(str(cut / TRAINED[train]))
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), key
    start = load_file(str(sd_folder / TRAINED[train]))
    assert any(not torch.equal(a[key], start[key]) for key in a if key in start)  # the run trained it
    assert (whole / "log.jsonl").read_text().count("\n") == (cut / "log.jsonl").read_text().count("\n") == 4


def test_resume_refuses_changed_settings_and_missing_runs(sd_folder, tmp_path):
    out = tmp_path / "run"
    assert_refused(run_cli("train", "--model", sd_folder, "--out", out, *ARGS, "--resume"),
                   f"--resume: there is no training run in {out} to resume")
    assert not out.exists()
    # click keeps the last value of a repeated option: a 2-iteration run with the same settings
    assert run_cli("train", "--model", sd_folder, "--out", out, *ARGS, "--iterations", 2).exit_code == 0
    # Read from the checkpoint, after the model has loaded (its notices come first).
    result = run_cli("train", "--model", sd_folder, "--out", out, *ARGS, "--lr", "1e-3", "--resume")
    assert result.exit_code == 2 and result.output.splitlines()[-1] == (
        "advunlearn: error: --resume: --lr differs from the checkpoint's run (--lr was 1e-05, now 0.001); "
        "keep it as it was")
    result = run_cli("train", "--model", sd_folder, "--out", out, *ARGS, "--concept", "nudes", "--seed", 3, "--resume")
    assert result.exit_code == 2 and "--resume: --concept and --seed differ from the checkpoint's run" in result.output
    result = run_cli("train", "--model", sd_folder, "--out", out, *ARGS, "--iterations", 2, "--resume")
    assert result.exit_code == 2 and "raise --iterations" in result.output
    result = run_cli("train", "--model", sd_folder, "--out", out, *ARGS)
    assert_refused(result, f"--out {out} holds a finished run: choose another folder, or pass --resume")


def test_out_holding_something_else_is_never_written_into(sd_folder, tmp_path):
    mine = tmp_path / "myproj"
    mine.mkdir()
    (mine / "README.md").write_text("# My precious notes\n")
    assert_refused(run_cli("train", "--model", sd_folder, "--out", mine, *ARGS),
                   f"--out {mine} is not empty and holds no training run (README.md)")
    assert_refused(run_cli("train", "--model", sd_folder, "--out", mine, *ARGS, "--resume"),
                   f"--resume: there is no training run in {mine} to resume")
    assert [p.name for p in mine.iterdir()] == ["README.md"]
    assert (mine / "README.md").read_text() == "# My precious notes\n"
    empty = tmp_path / "empty"
    empty.mkdir()
    assert run_cli("train", "--model", sd_folder, "--out", empty, *ARGS, "--iterations", 1).exit_code == 0
