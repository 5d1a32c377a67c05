"""The CPU policy every command applies once its UNet is loaded."""

import pytest
import torch

from advunlearn_fast.device import SMALL_MODEL_PARAMETERS, cpu_policy


class _Weights(torch.nn.Module):
    def __init__(self, count: int):
        super().__init__()
        self.w = torch.nn.Parameter(torch.empty(count, device="meta"))


@pytest.fixture
def threads():
    before = torch.get_num_threads()
    yield
    torch.set_num_threads(before)


@pytest.mark.parametrize("asked", ["auto", "cpu"])
def test_a_small_model_on_the_cpu_runs_on_one_thread_silently(asked, threads, capsys):
    torch.set_num_threads(2)
    cpu_policy(_Weights(SMALL_MODEL_PARAMETERS - 1), torch.device("cpu"), asked)
    assert torch.get_num_threads() == 1 and capsys.readouterr().err == ""


def test_a_full_size_model_that_auto_put_on_the_cpu_is_said_once(threads, capsys):
    torch.set_num_threads(2)
    cpu_policy(_Weights(SMALL_MODEL_PARAMETERS), torch.device("cpu"), "auto")
    err = capsys.readouterr().err
    assert "no CUDA GPU found: this full-size model runs on the CPU" in err and err.count("\n") == 1
    assert torch.get_num_threads() == 2
    cpu_policy(_Weights(SMALL_MODEL_PARAMETERS), torch.device("cpu"), "cpu")  # asked for: nothing to say
    assert capsys.readouterr().err == ""
