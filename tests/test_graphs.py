"""The attack step replayed from a recording (graphs.GraphedStep) is the eager attack step.

CUDA graphs cannot be recorded on a CPU, so these tests give GraphedStep recorders with a CUDA
graph's contract: a replay reads its inputs from the buffers the step was recorded with and
writes into the recorded output tensors, in place; before the first replay those hold garbage
(NaN here). A step that forgot to copy an input in, skipped the replay, or handed out the
recorded outputs themselves (overwritten by the next replay) would attack differently from the
eager step. What the fake cannot show, parameters replaced instead of updated in place between
replays, is checked on the optimisers directly.
"""

import json

import pytest
import torch

import advunlearn_fast.training.trainer as trainer
from advunlearn_fast.errors import UserError
from advunlearn_fast.training.config import TrainConfig
from advunlearn_fast.training.graphs import GraphedStep
from advunlearn_fast.training.optim import build_optimizer
from advunlearn_fast.training.runfolder import attack_step_mode
from advunlearn_fast.training.trainer import attack_step, build_setup, run_attack


class ReplayingRecorder:
    """A CUDA graph's contract on any device: `replay` reruns the step on the recorded buffers
    and writes into the recorded outputs."""

    recordings = 0

    def capture(self, run):
        type(self).recordings += 1
        recorded = tuple(torch.full_like(o, float("nan")) for o in run())

        def replay():
            for out, new in zip(recorded, run()):
                out.copy_(new)

        return recorded, replay


class FrozenRecorder(ReplayingRecorder):
    """Replays what the step gave at recording time whatever the buffers hold since: a
    recording with a value frozen into it (as a timestep read as a Python number would be)."""

    def capture(self, run):
        snapshot = tuple(o.clone() for o in run())
        recorded = tuple(torch.full_like(o, float("nan")) for o in snapshot)

        def replay():
            for out, old in zip(recorded, snapshot):
                out.copy_(old)

        return recorded, replay


class FailingRecorder:
    def capture(self, run):
        try:
            raise RuntimeError("operation not permitted when stream is capturing")
        finally:  # as torch.cuda.graph does: ending the capture raises over the cause
            raise RuntimeError("operation failed due to a previous error during capture")  # noqa: B012


def _setup():
    cfg = TrainConfig(model="tiny", concepts=["Van Gogh"], out="unused", ddim_steps=4, adv_tokens=2,
                      attack_steps=5, attack_restarts=2, bank=False, device="cpu").validate()
    return build_setup(cfg)


def _attack(s):
    adv0 = torch.randn(2, 2, s.te.get_input_embeddings().weight.shape[1], generator=torch.Generator().manual_seed(1))
    return run_attack(s, 0, adv0, torch.Generator().manual_seed(2))


def test_a_replayed_attack_equals_the_eager_attack():
    eager = _attack(_setup())
    s = _setup()
    ReplayingRecorder.recordings = 0
    s.attack_step_by_concept[0] = GraphedStep(attack_step(s, 0), ReplayingRecorder())
    replayed = _attack(s)

    assert ReplayingRecorder.recordings == 1  # one signature: recorded once, replayed every step
    torch.testing.assert_close(replayed[0], eager[0], rtol=0, atol=0)
    assert replayed[1] == eager[1]  # the loss of every step
    assert replayed[2] == eager[2]
    assert len(set(replayed[1])) == len(replayed[1])  # the losses move: a stale input would repeat one
    assert attack_step_mode(s) == "cuda-graph"


def test_a_new_input_shape_is_recorded_again():
    ReplayingRecorder.recordings = 0
    step = GraphedStep(lambda x: (x * 2,), ReplayingRecorder())
    for x in (torch.ones(2), torch.ones(3), torch.zeros(2), torch.arange(3.0)):
        assert torch.equal(step(x)[0], x * 2)
    assert ReplayingRecorder.recordings == 2


def test_a_recording_that_ignores_new_inputs_is_caught_and_the_step_runs_eagerly():
    eager = _attack(_setup())
    s = _setup()
    s.attack_step_by_concept[0] = GraphedStep(attack_step(s, 0), FrozenRecorder())
    with pytest.warns(UserWarning, match="differs from the eager step"):
        checked = _attack(s)
    # The second step's eager check replaced the replay, so no wrong step was taken.
    torch.testing.assert_close(checked[0], eager[0], rtol=0, atol=0)
    assert checked[1] == eager[1]
    assert attack_step_mode(s).startswith("eager (CUDA graph not used")


def test_a_failed_recording_stops_with_the_cause_and_the_way_out():
    step = GraphedStep(lambda x: (x + 1,), FailingRecorder())
    with pytest.raises(UserError) as refused:
        step(torch.zeros(2))
    message = str(refused.value)
    assert "operation not permitted when stream is capturing" in message and "--no-cuda-graphs" in message


def test_training_with_replayed_attack_steps_equals_eager_training(tmp_path, monkeypatch):
    """Attack, defender step (the encoder's weights change in place), attack again: the replays
    see the new weights, and every loss of the run is the eager run's."""

    def run(out):
        cfg = TrainConfig(model="tiny", concepts=["Van Gogh"], out=str(out), iterations=3, warmup=0, ddim_steps=4,
                          attack_steps=3, retain_batch=2, bank=False, lr=1e-3, device="cpu")
        summary = trainer.train(cfg, progress=False)
        return summary, [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]

    eager_summary, eager_log = run(tmp_path / "eager")
    monkeypatch.setattr(trainer, "uses_cuda_graphs", lambda cfg, device: True)
    monkeypatch.setattr(trainer, "CudaRecorder", ReplayingRecorder)
    graphed_summary, graphed_log = run(tmp_path / "graphed")

    assert eager_summary["attack_step"] == "eager" and graphed_summary["attack_step"] == "cuda-graph"
    for key in ("loss", "unlearn_loss", "retain_loss", "attack_loss_start", "attack_loss_end"):
        assert [r[key] for r in graphed_log] == [r[key] for r in eager_log], key
    assert len({r["attack_loss_start"] for r in eager_log}) == 3  # the encoder moved between rounds


@pytest.mark.parametrize("name", ["adam", "adam8bit"])
def test_the_optimisers_update_the_weights_in_place(name):
    """A replay reads the weights at the addresses it was recorded with: an optimiser that put
    new tensors in their place would leave the graph attacking the original model."""
    if name == "adam8bit":
        pytest.importorskip("bitsandbytes", reason="bitsandbytes is not installed (pip install -e '.[dev]')")
    weights = [torch.nn.Parameter(torch.randn(64, 128)), torch.nn.Parameter(torch.randn(10))]  # 8-bit and 32-bit state
    addresses = [w.data_ptr() for w in weights]
    before = [w.detach().clone() for w in weights]
    optimizer = build_optimizer(name, weights, lr=1e-2)
    for _ in range(2):
        optimizer.zero_grad(set_to_none=True)
        sum((w**2).sum() for w in weights).backward()
        optimizer.step()
    assert [w.data_ptr() for w in weights] == addresses
    assert all(not torch.equal(w, b) for w, b in zip(weights, before))


def test_the_cpu_runs_the_attack_step_eagerly():
    s = _setup()
    assert attack_step_mode(s) == "no attack step ran"
    _attack(s)
    assert not isinstance(s.attack_step_by_concept[0], GraphedStep)
    assert attack_step_mode(s) == "eager"
