import pytest
import torch
from advunlearn_fast.kernels import project_simplex
from advunlearn_fast.kernels.reference import project_simplex_reference, project_simplex_sort_reference
from kernel_checks import DEVICE, TOLERANCES, TRITON_RUNS, assert_close, dtype_params, needs_triton

V = 49408  # CLIP ViT-L/14 vocabulary
ODD_SHAPES = [(1, 1), (3, 37), (2, 4099)]  # the last spans two 4096-wide blocks plus a tail


def rows(kind, shape, seed=0):
    generator = torch.Generator().manual_seed(seed)
    noise = torch.randn(shape, generator=generator)
    uniform = torch.full(shape, 1.0 / shape[-1])
    if kind == "randn":
        x = noise
    elif kind == "after_adam_step":  # uniform start moved by one lr=0.01 Adam step
        x = uniform + 0.01 * noise.sign() * torch.rand(shape, generator=generator)
    elif kind == "dense":  # many entries just around the threshold
        x = uniform + 1e-4 * noise
    elif kind == "uniform":  # already on the simplex, full support
        x = uniform
    elif kind == "ties":  # repeated maxima
        x = torch.zeros(shape)
        x[..., : max(1, shape[-1] // 3)] = 0.7
    return x.to(DEVICE)


def assert_projection_close(actual, x, expected, what):
    # Outputs are x - tau computed in fp32: cancellation bounds their error by a few fp32 ulps
    # of the largest input, whatever the size of the output entries (all ~1/V for some rows).
    # Low-precision outputs add their own rounding, which the dtype's rtol covers.
    rtol = TOLERANCES[actual.dtype]
    atol = 8 * torch.finfo(torch.float32).eps * float(x.abs().max())
    assert_close(actual, expected, rtol=rtol, atol=atol, what=what)


@pytest.mark.parametrize("kind", ["randn", "after_adam_step", "dense", "uniform", "ties"])
def test_reference_matches_sorted_projection(kind):
    x = rows(kind, (2, V))
    assert_projection_close(project_simplex_reference(x), x, project_simplex_sort_reference(x), kind)


@needs_triton
@pytest.mark.parametrize("kind", ["randn", "after_adam_step", "ties"])
@pytest.mark.parametrize("dtype", dtype_params(torch.float32, torch.bfloat16, torch.float16))
@pytest.mark.parametrize("shape", ODD_SHAPES, ids=str)
def test_kernel_matches_reference(shape, dtype, kind):
    x = rows(kind, shape, seed=1).to(dtype)
    out = project_simplex(x, backend="triton")
    assert out.dtype == dtype and out.shape == x.shape
    assert_projection_close(out, x, project_simplex_reference(x), "vs bisection reference")
    assert_projection_close(out, x, project_simplex_sort_reference(x), "vs sorted projection")


@needs_triton
@pytest.mark.parametrize(
    "dtype,kind,k",
    [
        pytest.param(torch.float32, "after_adam_step", 5, id="fp32"),
        pytest.param(torch.bfloat16, "randn", 2, id="bf16"),
        pytest.param(torch.float16, "randn", 2, id="fp16"),
    ],
)
def test_kernel_matches_reference_real_size(dtype, kind, k):
    x = rows(kind, (k, V), seed=2).to(dtype)
    out = project_simplex(x, backend="triton")
    assert_projection_close(out, x, project_simplex_reference(x), "vs bisection reference")
    assert_projection_close(out, x, project_simplex_sort_reference(x), "vs sorted projection")


@pytest.mark.parametrize("backend", ["torch", pytest.param("triton", marks=needs_triton)])
@pytest.mark.parametrize("kind", ["randn", "after_adam_step", "dense"])
def test_output_is_on_simplex_and_idempotent(backend, kind):
    x = rows(kind, (3, 4099), seed=3)
    p = project_simplex(x, backend=backend)
    assert bool((p >= 0).all())
    assert_close(p.sum(-1), torch.ones(3, device=DEVICE), what="row sums")
    assert_projection_close(project_simplex(p, backend=backend), p, p, "projection of a projection")


@pytest.mark.parametrize("backend", ["torch", pytest.param("triton", marks=needs_triton)])
def test_minus_infinity_excludes_tokens(backend):
    x = rows("randn", (2, 300), seed=6)
    x[:, ::3] = float("-inf")
    x[1, 1] = 50.0  # a row whose whole mass goes to one token
    p = project_simplex(x, backend=backend)
    assert bool((p[:, ::3] == 0).all()) and bool(torch.isfinite(p).all())
    finite = torch.where(torch.isinf(x), torch.full_like(x, -1e4), x)
    assert_projection_close(p, x[:, 1::3], project_simplex_sort_reference(finite), "vs sorted, -inf as -1e4")


@needs_triton
@pytest.mark.parametrize("shape", [(3, 37), (2, 1000)], ids=str)
def test_kernel_gradient_matches_reference_autograd(shape):
    x = rows("after_adam_step", shape, seed=4)
    grad_out = torch.randn(shape, generator=torch.Generator().manual_seed(5)).to(DEVICE)
    grads = {}
    for backend in ("triton", "torch"):
        leaf = x.clone().requires_grad_()
        (grads[backend],) = torch.autograd.grad(project_simplex(leaf, backend=backend), leaf, grad_out)
    assert_close(grads["triton"], grads["torch"], what="grad x")
    # Moving along the Jacobian keeps the row sum: the gradient sums to zero per row.
    assert_close(grads["triton"].sum(-1), torch.zeros(shape[0], device=DEVICE), atol=1e-5, what="grad row sums")


def test_bad_arguments_are_named():
    with pytest.raises(ValueError, match="non-empty last dimension"):
        project_simplex(torch.zeros(3, 0, device=DEVICE))
    with pytest.raises(ValueError, match="iters must be >= 0"):
        project_simplex(torch.zeros(3, 4, device=DEVICE), iters=-1)
    with pytest.raises(ValueError, match="floating-point"):
        project_simplex(torch.zeros(3, 4, device=DEVICE, dtype=torch.long))


def test_kernel_is_exercised_on_this_machine():
    # Guards the suite against silently testing nothing but the reference on CPU.
    if DEVICE.type == "cpu":
        assert TRITON_RUNS, "install triton (setup.py extras [dev]) so the interpreted kernels are tested"
