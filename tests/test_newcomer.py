"""A newcomer's first minutes: smoke runs cost no more than they use, messages say what to do,
failures leave nothing behind, and help is instant."""

import json
import subprocess
import sys

import pytest
from helpers import FAST_ARGS, run_cli

import advunlearn_fast.training.trainer as trainer
from advunlearn_fast.training.config import TrainConfig
from advunlearn_fast.training.trainer import choose_trajectories


def test_a_short_run_costs_no_more_than_its_fresh_rollouts(sd_folder, tmp_path):
    """The README's smoke run: 3 iterations, published settings otherwise (50 DDIM steps, retain
    batch 5), with everything the run computed counted, a trajectory bank included."""
    runs = {}
    for name, flags in (("auto", []), ("fresh", ["--no-bank"])):
        out = tmp_path / name
        result = run_cli("train", "--model", sd_folder, "--concept", "Van Gogh", "--iterations", 3, "--out", out,
                         "--quiet", *flags)
        assert result.exit_code == 0, result.output
        runs[name] = json.loads((out / "run.json").read_text())
    assert sum(runs["auto"]["unet_fwd_equiv_total"].values()) <= sum(runs["fresh"]["unet_fwd_equiv_total"].values())
    assert runs["auto"]["trajectories"]["source"] == "fresh"


def test_the_choice_is_said_in_one_line_and_a_long_run_gets_the_bank(sd_folder, tmp_path):
    result = run_cli("train", "--model", sd_folder, "--concept", "church", "--iterations", 2, "--out", tmp_path / "r",
                     *FAST_ARGS)
    lines = [line for line in result.output.splitlines() if "trajectories:" in line]
    assert len(lines) == 1 and "fresh rollouts" in lines[0] and "--bank" in lines[0]
    long_run = TrainConfig(concepts=["nudity"]).validate()  # published: 1000 iterations, 800 attacked
    choice = choose_trajectories(long_run, retain_count=243, train_timesteps=1000)
    assert choice["source"] == "bank" and choice["bank_cost"] < choice["fresh_cost"] / 10
    forced = TrainConfig(concepts=["nudity"], iterations=3, bank=True).validate()
    assert choose_trajectories(forced, 243, 1000)["source"] == "bank"


def test_a_run_that_never_attacks_says_so(sd_folder, tmp_path):
    result = run_cli("train", "--model", sd_folder, "--concept", "church", "--iterations", 3, "--out", tmp_path / "r",
                     *FAST_ARGS)
    assert result.exit_code == 0
    assert "--warmup 200 >= --iterations 3: no attack step will run" in result.output
    quiet = run_cli("train", "--model", sd_folder, "--concept", "church", "--iterations", 3, "--warmup", 1,
                    "--out", tmp_path / "r2", *FAST_ARGS)
    assert "no attack step" not in quiet.output


def test_bad_input_leaves_no_output_folder(tmp_path):
    out = tmp_path / "never"
    result = run_cli("train", "--model", tmp_path / "missing-model", "--concept", "church", "--out", out)
    assert result.exit_code == 2 and not out.exists()


def test_interrupted_bank_build_says_what_is_kept(sd_folder, tmp_path, monkeypatch):
    def interrupt(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(trainer.TrajectoryBank, "build", interrupt)
    out = tmp_path / "run"
    result = run_cli("train", "--model", sd_folder, "--concept", "church", "--out", out, "--bank", *FAST_ARGS)
    assert result.exit_code == 130
    assert "trajectory-bank entries are kept" in result.output and "run the same command again" in result.output
    assert "--resume" not in result.output and not out.exists()


def test_interrupted_setup_without_a_bank_names_no_bank(sd_folder, tmp_path, monkeypatch):
    def interrupt(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(trainer, "load_model", interrupt)
    out = tmp_path / "run"
    result = run_cli("train", "--model", sd_folder, "--concept", "church", "--out", out, "--no-bank", *FAST_ARGS)
    assert result.exit_code == 130 and f"nothing was written to {out}: run the same command again" in result.output
    assert "trajectory-bank" not in result.output and not out.exists()


def test_interrupted_before_a_checkpoint_starts_over(sd_folder, tmp_path, monkeypatch):
    real = trainer.defender_step

    def interrupt(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(trainer, "defender_step", interrupt)
    out = tmp_path / "run"
    args = ["train", "--model", sd_folder, "--concept", "church", "--out", out, "--iterations", 2, *FAST_ARGS]
    result = run_cli(*args)
    assert result.exit_code == 130 and "no checkpoint was saved yet" in result.output
    assert "--resume" not in result.output
    resumed = run_cli(*args, "--resume")
    assert resumed.exit_code == 2 and "without --resume" in resumed.output
    monkeypatch.setattr(trainer, "defender_step", real)
    again = run_cli(*args)  # the same command again: starts over
    assert again.exit_code == 0, again.output
    assert json.loads((out / "run.json").read_text())["status"] == "complete"
    assert len((out / "log.jsonl").read_text().splitlines()) == 2


@pytest.mark.parametrize("text, message", [
    ('iterations: "lots"\n', "iterations must be an integer, got 'lots'"),
    ("learning_rate: 0.001\n", "unknown setting 'learning_rate' (did you mean 'lr'?)"),
    ("attack_step: 3\n", "unknown setting 'attack_step' (did you mean 'attack_steps'?)"),
    ("retain_weigth: 1\n", "(did you mean 'retain_weight'?)"),
    ("bank: maybe\n", "bank must be true or false, got 'maybe'"),
])
def test_config_file_errors_name_the_key(tmp_path, text, message):
    config = tmp_path / "c.yaml"
    config.write_text(text)
    result = run_cli("train", "--config", config, "--concept", "church", "--out", tmp_path / "r")
    assert result.exit_code == 2 and message in result.output
    assert len(result.output.strip().splitlines()) == 1


def test_config_file_numbers_written_as_text_are_read(tmp_path):
    from advunlearn_fast.training.config import read_config_file

    config = tmp_path / "c.yaml"
    config.write_text("lr: 1e-5\niterations: 10\nattack_lr: 2\n")
    assert read_config_file(str(config)) == {"lr": 1e-5, "iterations": 10, "attack_lr": 2.0}


def test_help_and_argument_errors_import_no_heavy_library():
    probe = (
        "import sys\n"
        "from advunlearn_fast.cli.main import cli\n"
        "for args in (['--help'], ['train', '--help'], ['attack', '--help'], ['train', '--iterations', 'lots']):\n"
        "    try:\n"
        "        cli(args, prog_name='advunlearn')\n"
        "    except SystemExit:\n"
        "        pass\n"
        "print(sorted(m for m in ('torch', 'diffusers', 'transformers') if m in sys.modules))\n"
    )
    run = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True)
    assert run.returncode == 0, run.stderr
    assert run.stdout.strip().splitlines()[-1] == "[]"
