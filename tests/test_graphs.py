"""The attack step replayed from a recording (graphs.GraphedStep) is the eager attack step.

CUDA graphs cannot be recorded on a CPU, so these tests give GraphedStep a recorder with a CUDA
graph's semantics: a replay reads its inputs from the buffers the step was recorded with and
writes its outputs into the recorded output tensors, in place. A step that forgot to copy an
input in, or handed out the recorded outputs themselves (overwritten by the next replay), would
then attack differently from the eager step.
"""

import pytest
import torch

from advunlearn_fast.config import TrainConfig
from advunlearn_fast.graphs import GraphedStep
from advunlearn_fast.trainer import attack_step, attack_step_mode, build_setup, run_attack


class ReplayingRecorder:
    """A CUDA graph's behaviour on any device: `replay` reruns the step on the recorded buffers
    and writes into the recorded outputs."""

    def __init__(self):
        self.recordings = 0

    def capture(self, run):
        self.recordings += 1
        eager = tuple(o.clone() for o in run())
        recorded = run()

        def replay():
            for out, new in zip(recorded, run()):
                out.copy_(new)

        return eager, recorded, replay


class FailingRecorder:
    def __init__(self):
        self.tries = 0

    def capture(self, run):
        self.tries += 1
        raise RuntimeError("operation not permitted when stream is capturing")


class WrongRecorder(ReplayingRecorder):
    """Records, but its replay leaves the outputs as they were (as a graph reading stale inputs would)."""

    def capture(self, run):
        eager, recorded, _ = super().capture(run)
        return eager, tuple(torch.zeros_like(o) for o in recorded), lambda: None


def _setup():
    cfg = TrainConfig(model="tiny", concepts=["Van Gogh"], out="unused", ddim_steps=4, adv_tokens=2,
                      attack_steps=5, attack_restarts=2, bank=False).validate()
    return build_setup(cfg)


def _attack(s):
    adv0 = torch.randn(2, 2, s.te.get_input_embeddings().weight.shape[1], generator=torch.Generator().manual_seed(1))
    return run_attack(s, 0, adv0, torch.Generator().manual_seed(2))


def test_a_replayed_attack_equals_the_eager_attack():
    eager = _attack(_setup())
    s = _setup()
    recorder = ReplayingRecorder()
    s.attack_step_by_concept[0] = GraphedStep(attack_step(s, 0), recorder)
    replayed = _attack(s)

    assert recorder.recordings == 1  # one signature: recorded once, replayed every step
    torch.testing.assert_close(replayed[0], eager[0], rtol=0, atol=0)
    assert replayed[1] == eager[1]  # the loss of every step
    assert replayed[2] == eager[2]
    assert len(set(replayed[1])) == len(replayed[1])  # the losses move: a stale input would repeat one
    assert attack_step_mode(s) == "cuda-graph"


def test_a_new_input_shape_is_recorded_again():
    recorder = ReplayingRecorder()
    step = GraphedStep(lambda x: (x * 2,), recorder)
    assert torch.equal(step(torch.ones(2))[0], torch.full((2,), 2.0))
    assert torch.equal(step(torch.ones(3))[0], torch.full((3,), 2.0))
    assert torch.equal(step(torch.zeros(2))[0], torch.zeros(2))
    assert recorder.recordings == 2


def test_a_step_that_cannot_be_recorded_runs_eagerly_and_says_why():
    recorder = FailingRecorder()
    step = GraphedStep(lambda x: (x + 1,), recorder)
    with pytest.warns(UserWarning, match="runs eagerly"):
        assert torch.equal(step(torch.zeros(2))[0], torch.ones(2))
    assert torch.equal(step(torch.ones(2))[0], torch.full((2,), 2.0))
    assert recorder.tries == 1  # given up once, not retried every step
    assert "operation not permitted" in step.describe()


def test_a_recording_whose_replay_disagrees_with_the_eager_step_is_not_used():
    s = _setup()
    eager = _attack(_setup())
    s.attack_step_by_concept[0] = GraphedStep(attack_step(s, 0), WrongRecorder())
    with pytest.warns(UserWarning, match="differ from the eager"):
        checked = _attack(s)
    torch.testing.assert_close(checked[0], eager[0], rtol=0, atol=0)
    assert attack_step_mode(s).startswith("eager (CUDA graph failed")


def test_the_cpu_runs_the_attack_step_eagerly():
    s = _setup()
    _attack(s)
    assert not isinstance(s.attack_step_by_concept[0], GraphedStep)
    assert attack_step_mode(s) == "eager"
