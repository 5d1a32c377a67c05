"""Bad input: one clear line, a non-zero exit, no traceback, no output that looks complete."""

import pytest
from helpers import FAST_ARGS, assert_refused, run_cli


@pytest.mark.parametrize(
    "args, message",
    [
        (["--concept", "  "], "--concept must be given"),
        ([], "--concept must be given"),
        (["--concept", "x", "--layers", "12"], "layers 0-11"),
        (["--concept", "x", "--layers", "one"], "cannot be parsed"),
        (["--concept", "x", "--iterations", "0"], "--iterations must be a positive integer"),
        (["--concept", "x", "--attack-steps", "-3"], "--attack-steps must be a positive integer"),
        (["--concept", "x", "--retain-batch", "0"], "--retain-batch must be a positive integer"),
        (["--concept", "x", "--lr", "0"], "--lr must be positive"),
        (["--concept", "x", "--lr", "inf"], "--lr must be a finite number, got inf"),
        (["--concept", "x", "--attack-lr", "inf"], "--attack-lr must be a finite number"),
        (["--concept", "x", "--retain-weight", "inf"], "--retain-weight must be a finite number"),
        (["--concept", "x", "--negative-guidance", "inf"], "--negative-guidance must be a finite number"),
        (["--concept", "x", "--start-guidance", "nan"], "--start-guidance must be a finite number"),
        (["--concept", "x", "--attack", "fgsm"], "--attack must be one of"),
        (["--concept", "x", "--insert", "middle"], "--insert must be one of"),
        (["--concept", "x", "--retain-filter", "words"], "--retain-filter must be one of phrase, related, none"),
        (["--concept", "x", "--retain-prompts", "/no/such/file.txt"], "retain prompt file not found"),
        (["--concept", "x", "--adv-tokens", "80"], "does not fit"),
        (["--concept", "x", "--image-size", "18"], "--image-size must be a multiple of 4"),
    ],
)
def test_bad_training_input(sd_folder, tmp_path, args, message):
    out = tmp_path / "out"
    # A bound on iterations keeps a wrongly accepted input from training for long.
    result = run_cli("train", "--model", sd_folder, "--out", out, "--iterations", 1, *FAST_ARGS, *args)
    assert_refused(result, message)
    assert not out.exists()  # stopped before --out is created


def test_bad_models(tmp_path):
    assert_refused(run_cli("train", "--model", tmp_path / "missing", "--concept", "x"), "does not exist")
    (tmp_path / "empty").mkdir()
    assert_refused(run_cli("train", "--model", tmp_path / "empty", "--concept", "x"), "not a Stable Diffusion diffusers folder")
    # The design card's command as written: the default hub model is not on this machine.
    result = run_cli("train", "--concept", "Van Gogh", "--layers", "all", "--out", tmp_path / "o")
    assert_refused(result, "--model /path/to/a/diffusers/folder")


def test_output_path_that_is_a_file(tmp_path):
    target = tmp_path / "file"
    target.write_text("x")
    assert_refused(run_cli("train", "--model", "tiny", "--concept", "x", "--out", target), "is a file")


def test_empty_output_path(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # accepted, it would write here
    assert_refused(run_cli("train", "--model", "tiny", "--concept", "x", "--iterations", 1, *FAST_ARGS, "--out", ""),
                   "--out is empty")
    assert not list(tmp_path.iterdir())


def test_cuda_without_cuda(tmp_path):
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    assert_refused(run_cli("train", "--model", "tiny", "--concept", "x", "--device", "cuda", "--out", tmp_path / "o"),
             "CUDA is not available")


def test_config_file(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("concept: [unclosed\n")
    assert_refused(run_cli("train", "--config", bad), "cannot be parsed")
    unknown = tmp_path / "unknown.toml"
    unknown.write_text('concept = "x"\nlearning_rate = 1\n')
    assert_refused(run_cli("train", "--config", unknown), "unknown setting 'learning_rate'")
    assert_refused(run_cli("train", "--config", tmp_path / "none.yaml"), "--config file not found")
    infinite = tmp_path / "infinite.yaml"
    infinite.write_text("concept: x\nmodel: tiny\nretain_weight: .inf\n")
    assert_refused(run_cli("train", "--config", infinite, "--out", tmp_path / "o"), "--retain-weight must be a finite number")


def test_config_file_with_flag_override(tmp_path):
    cfg = tmp_path / "run.yaml"
    cfg.write_text("model: tiny\nconcept: church\niterations: 2\nwarmup: 5\nddim-steps: 3\nretain_batch: 2\n")
    out = tmp_path / "out"
    result = run_cli("train", "--config", cfg, "--out", out, "--iterations", 1, "--quiet")
    assert result.exit_code == 0, result.output
    import json

    run = json.loads((out / "run.json").read_text())["config"]
    assert run["iterations"] == 1 and run["concepts"] == ["church"] and run["ddim_steps"] == 3
