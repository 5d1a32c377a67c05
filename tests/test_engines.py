"""The fast engine computes the reference engine's algorithm, and costs far fewer UNet passes.

Both engines' z_t are checked against a transcription of the authors' sampler in
test_schedule.py; here, whole iterations of the two engines against each other."""

import json

import pytest
from helpers import FAST_ARGS, run_cli

from advunlearn_fast.training.costs import CONDITIONING_BACKWARD

ARGS = ["--concept", "church", "--iterations", 2, "--warmup", 0, "--layers", "all", "--lr", "1e-3", *FAST_ARGS]


def _log(out):
    return [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]


def test_fast_engine_without_bank_matches_the_reference(sd_folder, tmp_path):
    runs = {}
    for engine in ("reference", "fast"):
        out = tmp_path / engine
        result = run_cli("train", "--model", sd_folder, "--out", out, "--engine", engine, "--no-bank", *ARGS)
        assert result.exit_code == 0, result.output
        runs[engine] = _log(out)
    assert len(runs["reference"]) == len(runs["fast"]) == 2
    for ref, fast in zip(runs["reference"], runs["fast"]):
        for key in ("loss", "unlearn_loss", "retain_loss", "attack_loss_start", "attack_loss_end"):
            assert fast[key] == pytest.approx(ref[key], rel=1e-4, abs=1e-9), key
        assert fast["t"] == ref["t"]
        assert fast["unet_fwd_equiv"] == ref["unet_fwd_equiv"]


def test_bank_removes_rollouts_from_the_iteration(sd_folder, tmp_path):
    out = tmp_path / "banked"
    bank = ["--bank", "--bank-size", 4, "--bank-dir", tmp_path / "bank"]  # its own: other tests fill the session's
    assert run_cli("train", "--model", sd_folder, "--out", out, *bank, *ARGS).exit_code == 0
    costs = [r["unet_fwd_equiv"] for r in _log(out)]
    assert all("rollout" not in c and "targets" not in c for c in costs)
    # A frozen UNet's backward computes no weight gradients: about one forward (costs.py), not two.
    sample = 1 + CONDITIONING_BACKWARD
    assert costs[0] == pytest.approx({"attack": 2 * sample, "train": sample, "retain": 2 * sample})
    run = json.loads((out / "run.json").read_text())
    # The concept and the 2 x 2 retain prompts the two iterations draw, nothing more.
    assert run["bank"]["entries_built"] == 1 + 4 and run["unet_dtype"] == "float32"

    # A second run on the same model reuses every entry.
    again = tmp_path / "again"
    assert run_cli("train", "--model", sd_folder, "--out", again, *bank, *ARGS).exit_code == 0
    assert json.loads((again / "run.json").read_text())["bank"]["entries_built"] == 0
    assert _log(again) == [dict(r, seconds=a["seconds"]) for r, a in zip(_log(out), _log(again))]
