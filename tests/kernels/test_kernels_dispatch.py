import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from advunlearn_fast.kernels import (
    adversarial_adam_step_,
    assemble_prompt_embeddings,
    dispatch,
    project_simplex,
    reference,
)
from kernel_checks import DEVICE, needs_triton

REPO = Path(__file__).resolve().parents[2]


def _assemble(backend):
    table = torch.randn(11, 8, device=DEVICE)
    ids = torch.randint(0, 11, (2, 5), device=DEVICE)
    adv = torch.randn(2, 1, 8, device=DEVICE, requires_grad=True)
    positions = torch.tensor([[1], [4]], device=DEVICE)
    return assemble_prompt_embeddings(table, ids, adv, positions, table[:5], backend=backend)


def _adam(backend):
    tensors = [torch.rand(3, 4, device=DEVICE) for _ in range(4)]
    return adversarial_adam_step_(*tensors, step=2, lr=1e-3, backend=backend)


def _simplex(backend):
    return project_simplex(torch.randn(2, 9, device=DEVICE), backend=backend)


OPS = {
    "assemble_prompt_embeddings_reference": _assemble,
    "adversarial_adam_step_reference_": _adam,
    "project_simplex_reference": _simplex,
}


@pytest.fixture
def reference_calls(monkeypatch):
    calls = []
    for name in OPS:
        original = getattr(reference, name)

        def spy(*args, _name=name, _original=original, **kwargs):
            calls.append(_name)
            return _original(*args, **kwargs)

        monkeypatch.setattr(reference, name, spy)
    return calls


@pytest.mark.parametrize("name", OPS)
def test_torch_backend_runs_the_reference(name, reference_calls):
    OPS[name]("torch")
    assert reference_calls == [name]


@pytest.mark.parametrize("name", OPS)
def test_missing_triton_falls_back_on_auto_and_fails_loudly_when_forced(name, reference_calls, monkeypatch):
    monkeypatch.setattr(dispatch, "triton_available", lambda: False)
    OPS[name]("auto")
    assert reference_calls == [name]
    with pytest.raises(RuntimeError, match="triton is not installed"):
        OPS[name]("triton")


@pytest.mark.skipif(DEVICE.type != "cpu", reason="checks the CPU rule")
@pytest.mark.parametrize("name", OPS)
def test_cpu_tensors_without_interpreter_fall_back(name, reference_calls, monkeypatch):
    monkeypatch.setattr(dispatch, "triton_available", lambda: True)
    monkeypatch.setenv("TRITON_INTERPRET", "0")
    OPS[name]("auto")
    assert reference_calls == [name]
    with pytest.raises(RuntimeError, match="TRITON_INTERPRET=1 is not set"):
        OPS[name]("triton")


@needs_triton
@pytest.mark.parametrize("name", OPS)
def test_auto_runs_the_kernel_when_it_can(name, reference_calls):
    OPS[name]("auto")
    assert reference_calls == []


def test_importing_the_package_needs_no_triton():
    script = textwrap.dedent(
        """
        import sys
        import torch
        import advunlearn_fast.kernels as kernels
        assert "triton" not in sys.modules, "importing the package imported triton"
        sys.modules["triton"] = None  # any later `import triton` now raises ImportError
        assert not kernels.triton_available()
        table = torch.randn(11, 8)
        adv = torch.randn(1, 1, 8, requires_grad=True)
        out = kernels.assemble_prompt_embeddings(table, torch.zeros(1, 5, dtype=torch.long), adv,
                                                 torch.tensor([[2]]), table[:5])
        out.sum().backward()
        assert adv.grad.shape == adv.shape
        p = kernels.project_simplex(torch.randn(2, 9))
        kernels.adversarial_adam_step_(p, torch.randn(2, 9), torch.zeros(2, 9), torch.zeros(2, 9), 1, 1e-2)
        kernels.onehot_embedding(p, torch.randn(9, 4))
        print("ok")
        """
    )
    path = os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))
    env = {**os.environ, "TRITON_INTERPRET": "1", "PYTHONPATH": path}
    result = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0 and result.stdout.strip() == "ok", result.stderr


def test_unknown_backend_is_named():
    with pytest.raises(ValueError, match="backend must be one of"):
        _simplex("cuda")
