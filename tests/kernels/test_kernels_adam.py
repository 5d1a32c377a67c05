import pytest
import torch
from advunlearn_fast.kernels import adversarial_adam_step_
from advunlearn_fast.kernels.reference import adversarial_adam_step_reference_
from kernel_checks import DEVICE, assert_close, dtype_params, mismatch, needs_triton

ODD_SHAPES = [(1,), (37,), (3, 101)]
# The soft-prompt attack's k x 768 embeddings, and UnlearnDiffAtk's k relaxed vocabulary rows.
EMBEDDING_SHAPE, RELAXED_SHAPE = (5, 768), (5, 49408)


def _grads(shape, steps, dtype, seed):
    generator = torch.Generator().manual_seed(seed)
    grads = [torch.randn(shape, generator=generator) for _ in range(steps)]
    # Exact zeros check that the sign step keeps them (torch.sign(0) == 0).
    grads[0].view(-1)[::7] = 0
    return [g.to(DEVICE, dtype) for g in grads]


@pytest.mark.parametrize("sign_grad", [False, True])
@pytest.mark.parametrize("weight_decay", [0.0, 0.1])
def test_reference_matches_torch_adam(weight_decay, sign_grad):
    steps, lr, betas, eps = 6, 1e-2, (0.9, 0.999), 1e-8
    start = torch.randn(5, 768, generator=torch.Generator().manual_seed(0)).to(DEVICE)
    param = start.clone().requires_grad_()
    optimizer = torch.optim.Adam([param], lr=lr, betas=betas, eps=eps, weight_decay=weight_decay)
    mine, exp_avg, exp_avg_sq = start.clone(), torch.zeros_like(start), torch.zeros_like(start)
    for step, grad in enumerate(_grads(start.shape, steps, torch.float32, 1), start=1):
        param.grad = torch.sign(grad) if sign_grad else grad.clone()
        optimizer.step()
        adversarial_adam_step_reference_(
            mine, grad, exp_avg, exp_avg_sq, step, lr, *betas, eps, weight_decay, sign_grad=sign_grad
        )
    state = optimizer.state[param]
    assert int(state["step"]) == steps
    assert_close(mine, param.detach(), rtol=1e-6, atol=1e-7, what="param")
    assert_close(exp_avg, state["exp_avg"], rtol=1e-6, atol=1e-7, what="exp_avg")
    assert_close(exp_avg_sq, state["exp_avg_sq"], rtol=1e-6, atol=1e-9, what="exp_avg_sq")


def _kernel_vs_reference(shape, dtype, sign_grad, weight_decay, steps):
    # Each step moves the parameters by a sizeable fraction of their values (lr 1e-2 on values
    # ~0.05): an update of a few bf16 ulps could not be told apart from no update at all.
    start = (0.05 * torch.randn(shape, generator=torch.Generator().manual_seed(2))).to(DEVICE, dtype)
    states = {}
    for backend in ("triton", "torch"):
        param, exp_avg, exp_avg_sq = start.clone(), torch.zeros_like(start), torch.zeros_like(start)
        for step, grad in enumerate(_grads(shape, steps, dtype, 3), start=1):
            options = dict(weight_decay=weight_decay, sign_grad=sign_grad, backend=backend)
            returned = adversarial_adam_step_(param, grad, exp_avg, exp_avg_sq, step, 1e-2, **options)
            assert returned is param
        states[backend] = (param, exp_avg, exp_avg_sq)
    names, untouched = ("param", "exp_avg", "exp_avg_sq"), (start, torch.zeros_like(start), torch.zeros_like(start))
    for name, got, want, before in zip(names, states["triton"], states["torch"], untouched, strict=True):
        assert_close(got, want, what=name)
        # The comparison can fail: a kernel that skipped this write would be out of tolerance.
        assert mismatch(before, want) is not None, f"{name}: the steps left it within tolerance of its start"


@needs_triton
@pytest.mark.parametrize("sign_grad,weight_decay", [(False, 0.0), (True, 0.0), (False, 0.1), (True, 0.1)])
@pytest.mark.parametrize("dtype", dtype_params(torch.float32, torch.bfloat16, torch.float16))
@pytest.mark.parametrize("shape", ODD_SHAPES + [EMBEDDING_SHAPE], ids=str)
def test_kernel_matches_reference(shape, dtype, sign_grad, weight_decay):
    _kernel_vs_reference(shape, dtype, sign_grad, weight_decay, steps=3)


@needs_triton
@pytest.mark.parametrize(
    "dtype,sign_grad",
    [
        pytest.param(torch.float32, False, id="fp32"),
        pytest.param(torch.bfloat16, True, id="bf16-sign"),
        pytest.param(torch.float16, True, id="fp16-sign"),
    ],
)
def test_kernel_matches_reference_vocabulary_rows(dtype, sign_grad):
    # UnlearnDiffAtk's settings: weight decay 0.1 on the relaxed one-hot rows.
    _kernel_vs_reference(RELAXED_SHAPE, dtype, sign_grad, weight_decay=0.1, steps=2)


def test_updates_leaf_parameter_in_place_without_autograd_error():
    param = torch.randn(2, 8, device=DEVICE, requires_grad=True)
    before = param.detach().clone()
    param.sum().backward()
    state = torch.zeros_like(param), torch.zeros_like(param)
    adversarial_adam_step_(param, param.grad, *state, step=1, lr=0.1)
    assert not torch.equal(param.detach(), before)
    assert param.requires_grad and param.is_leaf


@needs_triton
def test_kernel_bumps_version_counters():
    param, grad, exp_avg, exp_avg_sq = (torch.randn(4, 5, device=DEVICE) for _ in range(4))
    exp_avg_sq.abs_()
    before = [t._version for t in (param, exp_avg, exp_avg_sq)]
    adversarial_adam_step_(param, grad, exp_avg, exp_avg_sq, step=1, lr=1e-3, backend="triton")
    after = [t._version for t in (param, exp_avg, exp_avg_sq)]
    assert all(a > b for a, b in zip(after, before)), (before, after)


def _transposed_param():
    # A transposed view is updated in place correctly only by the reference.
    param = torch.randn(6, 4, device=DEVICE).t()
    grad = torch.randn(4, 6, device=DEVICE)
    return param, grad, torch.zeros_like(grad), torch.zeros_like(grad)


def test_non_contiguous_param_falls_back_on_auto():
    param, grad, exp_avg, exp_avg_sq = _transposed_param()
    expected = param.clone()
    adversarial_adam_step_reference_(expected, grad, exp_avg.clone(), exp_avg_sq.clone(), 1, 1e-2)
    adversarial_adam_step_(param, grad, exp_avg, exp_avg_sq, step=1, lr=1e-2, backend="auto")
    assert_close(param, expected, what="param")


@needs_triton
def test_non_contiguous_param_is_refused_by_forced_kernel():
    with pytest.raises(RuntimeError, match="param not contiguous"):
        adversarial_adam_step_(*_transposed_param(), step=1, lr=1e-2, backend="triton")


@pytest.mark.parametrize("step", [0, -1, 1.5])
def test_step_must_be_one_based_integer(step):
    tensors = [torch.zeros(3, device=DEVICE) for _ in range(4)]
    with pytest.raises(ValueError, match="step must be a positive integer"):
        adversarial_adam_step_(*tensors, step=step, lr=1e-3)


def test_shape_mismatch_is_named():
    param = torch.zeros(3, device=DEVICE)
    with pytest.raises(ValueError, match="exp_avg_sq has shape"):
        adversarial_adam_step_(param, torch.zeros(3), torch.zeros(3), torch.zeros(4), step=1, lr=1e-3)
