"""The UnlearnDiffAtk step replayed from a recording (training/graphs.GraphedStep) attacks as the
eager step does. CUDA graphs cannot be recorded on a CPU: the recorders of test_graphs.py keep a
CUDA graph's contract (a replay reads the recorded input buffers and writes the recorded outputs)."""

import json
import sys
import textwrap

import pytest
from helpers import run_cli
from test_graphs import FrozenRecorder, ReplayingRecorder

import advunlearn_fast.evaluation.robustness as robustness

JUDGE = textwrap.dedent(
    """
    # The judgment (1: the unattacked one) at which a prompt is first a success, whatever the images.
    SUCCESS_AT = {"a big blue square": 2}
    judged = {}

    def scripted(images, prompts):
        for prompt in prompts:
            judged[prompt] = judged.get(prompt, 0) + 1
        return [judged[prompt] == SUCCESS_AT.get(prompt) for prompt in prompts]
    """
)


@pytest.fixture
def prompts(tmp_path, monkeypatch):
    (tmp_path / "graphjudge.py").write_text(JUDGE)
    monkeypatch.syspath_prepend(str(tmp_path))
    sys.modules.pop("graphjudge", None)
    path = tmp_path / "prompts.csv"
    path.write_text("prompt,evaluation_seed\na red circle,3\na big blue square,7\na small yellow triangle,5\n")
    yield path
    sys.modules.pop("graphjudge", None)


def _attack(out, prompts):
    sys.modules.pop("graphjudge", None)  # its judgment counts start afresh
    result = run_cli("attack", "--model", "world", "--prompts", prompts, "--judge", "graphjudge:scripted", "--out", out,
                     "--timesteps", 3, "--steps-per-timestep", 3, "--adv-tokens", 2, "--insert", "suffix",
                     "--gen-steps", 4, "--target-steps", 4, "--quiet", "--device", "cpu")
    assert result.exit_code == 0, result.output
    return json.loads((out / "report.json").read_text())


def test_a_replayed_attack_step_attacks_as_the_eager_one(tmp_path, prompts, monkeypatch):
    """Three prompts in one batch, one leaving after the first block (a new batch shape, recorded
    again): the same losses, tokens, judged prompts and stops as the eager run."""
    eager = _attack(tmp_path / "eager", prompts)
    monkeypatch.setattr(robustness, "uses_cuda_graphs", lambda settings, device: True)
    monkeypatch.setattr(robustness, "CudaRecorder", ReplayingRecorder)
    ReplayingRecorder.recordings = 0
    graphed = _attack(tmp_path / "graphed", prompts)
    assert ReplayingRecorder.recordings == 2  # batch of 3, then of 2
    assert (eager["manifest"]["attack_step"], graphed["manifest"]["attack_step"]) == ("eager", "cuda-graph")
    assert [r["steps_used"] for r in eager["rows"]] == [9, 3, 9]
    for a, b in zip(eager["rows"], graphed["rows"]):
        for key in ("success", "adversarial_prompt", "timesteps_used", "steps_used", "attack_scores", "loss_start",
                    "loss_end"):
            assert a[key] == b[key], key


def test_a_recording_that_ignores_new_inputs_falls_back_to_the_eager_step(tmp_path, prompts, monkeypatch):
    eager = _attack(tmp_path / "eager", prompts)
    monkeypatch.setattr(robustness, "uses_cuda_graphs", lambda settings, device: True)
    monkeypatch.setattr(robustness, "CudaRecorder", FrozenRecorder)
    with pytest.warns(UserWarning, match="differs from the eager step"):
        checked = _attack(tmp_path / "frozen", prompts)
    assert checked["manifest"]["attack_step"].startswith("eager (CUDA graph not used")
    assert [r["loss_end"] for r in checked["rows"]] == [r["loss_end"] for r in eager["rows"]]
