import functools

import pytest
import torch
from advunlearn_fast.kernels import assemble_prompt_embeddings
from advunlearn_fast.kernels.reference import assemble_prompt_embeddings_reference
from kernel_checks import DEVICE, assert_close, dtype_params, needs_triton

# (B, k, L, D, V, P): odd sizes for the masks, then the SD v1.x size (CLIP ViT-L/14 vocabulary).
ODD_SHAPES = [(1, 1, 3, 5, 7, 3), (3, 2, 7, 37, 50, 9), (2, 5, 13, 100, 101, 20)]
REAL_SHAPE = (2, 5, 77, 768, 49408, 77)


@functools.lru_cache(maxsize=None)
def _table(rows, width, dtype, seed):
    generator = torch.Generator().manual_seed(seed)
    return torch.randn(rows, width, generator=generator).to(DEVICE, dtype)


def make_inputs(B, k, L, D, V, P, dtype, seed=0):
    generator = torch.Generator().manual_seed(seed + 1)
    ids = torch.randint(0, V, (B, L), generator=generator)
    # Distinct positions per prompt; the first prompt also hits both ends of the sequence.
    positions = torch.stack([torch.randperm(L, generator=generator)[:k] for _ in range(B)])
    if k >= 2:
        positions[0, :2] = torch.tensor([0, L - 1])
        positions[0, 2:] = torch.randperm(L - 2, generator=generator)[: k - 2] + 1
    adv = torch.randn(B, k, D, generator=generator).to(DEVICE, dtype).requires_grad_()
    return _table(V, D, dtype, seed), ids.to(DEVICE), adv, positions.to(DEVICE), _table(P, D, dtype, seed + 7)


def run(backend, token_table, ids, adv, positions, position_table, add, grad_out):
    adv = adv.detach().clone().requires_grad_()
    out = assemble_prompt_embeddings(token_table, ids, adv, positions, position_table, add=add, backend=backend)
    (grad_adv,) = torch.autograd.grad(out, adv, grad_out)
    return out, grad_adv


def test_reference_matches_definition():
    B, k, L, D, V, P = 2, 2, 5, 4, 9, 6
    token_table, ids, adv, positions, position_table = make_inputs(B, k, L, D, V, P, torch.float32)
    for add in (False, True):
        expected = torch.empty(B, L, D, device=DEVICE)
        for b in range(B):
            for l in range(L):
                row = token_table[ids[b, l]] + position_table[l]
                for j in range(k):
                    if positions[b, j] == l:
                        row = row + adv[b, j] if add else adv[b, j] + position_table[l]
                expected[b, l] = row
        out = assemble_prompt_embeddings_reference(token_table, ids, adv, positions, position_table, add)
        assert_close(out, expected, what=f"reference add={add}")
        (grad,) = torch.autograd.grad(out, adv, torch.ones_like(out))
        assert torch.equal(grad, torch.ones_like(adv))


@needs_triton
@pytest.mark.parametrize("add", [False, True])
@pytest.mark.parametrize("dtype", dtype_params(torch.float32, torch.bfloat16, torch.float16))
@pytest.mark.parametrize("shape", ODD_SHAPES)
def test_kernel_matches_reference(shape, dtype, add):
    inputs = make_inputs(*shape, dtype)
    B, k, L, D = shape[:4]
    # A transposed gradient exercises the backward's handling of non-contiguous grad_out.
    grad_out = torch.randn(B, D, L, device=DEVICE).to(dtype).transpose(1, 2)
    out, grad = run("triton", *inputs, add, grad_out)
    ref_out, ref_grad = run("torch", *inputs, add, grad_out)
    assert out.dtype == ref_out.dtype == dtype
    assert_close(out, ref_out, what="forward")
    assert_close(grad, ref_grad, what="grad adv")


@needs_triton
@pytest.mark.parametrize(
    "dtype,add",
    [
        pytest.param(torch.float32, False, id="fp32-replace"),
        pytest.param(torch.float32, True, id="fp32-add"),
        pytest.param(torch.bfloat16, False, id="bf16-replace"),
        pytest.param(torch.float16, False, id="fp16-replace"),
    ],
)
def test_kernel_matches_reference_real_size(dtype, add):
    inputs = make_inputs(*REAL_SHAPE, dtype, seed=3)
    grad_out = torch.randn(REAL_SHAPE[0], REAL_SHAPE[2], REAL_SHAPE[3], device=DEVICE).to(dtype)
    out, grad = run("triton", *inputs, add, grad_out)
    ref_out, ref_grad = run("torch", *inputs, add, grad_out)
    assert_close(out, ref_out, what="forward")
    assert_close(grad, ref_grad, what="grad adv")


@pytest.mark.parametrize("backend", ["torch", pytest.param("triton", marks=needs_triton)])
def test_tables_get_no_gradient(backend):
    token_table, ids, adv, positions, position_table = make_inputs(2, 2, 6, 8, 11, 6, torch.float32)
    token_table = token_table.clone().requires_grad_()
    position_table = position_table.clone().requires_grad_()
    out = assemble_prompt_embeddings(token_table, ids, adv, positions, position_table, backend=backend)
    out.square().sum().backward()
    assert token_table.grad is None and position_table.grad is None
    assert adv.grad is not None


@pytest.mark.parametrize("backend", ["torch", pytest.param("triton", marks=needs_triton)])
def test_strided_tables_and_mixed_dtypes(backend):
    B, k, L, D, V, P = 2, 3, 9, 24, 30, 12
    token_table, ids, adv, positions, position_table = make_inputs(B, k, L, D, V, P, torch.float32)
    # Row slices of wider tables (stride(0) != D) in bf16, with fp32 adversarial rows.
    wide_tokens = torch.zeros(V, D + 8, device=DEVICE, dtype=torch.bfloat16)
    wide_tokens[:, 3 : 3 + D] = token_table
    wide_positions = torch.zeros(P, D + 5, device=DEVICE, dtype=torch.bfloat16)
    wide_positions[:, :D] = position_table
    tokens, positions_table = wide_tokens[:, 3 : 3 + D], wide_positions[:, :D]
    out = assemble_prompt_embeddings(tokens, ids, adv, positions, positions_table, add=True, backend=backend)
    expected = assemble_prompt_embeddings_reference(
        tokens.contiguous(), ids, adv, positions, positions_table.contiguous(), True
    )
    assert out.dtype == torch.float32
    assert_close(out, expected, what="strided tables")


@pytest.mark.parametrize(
    "change,message",
    [
        (lambda a: {**a, "adv": a["adv"][:, :1]}, "disagree on B or k"),
        (lambda a: {**a, "position_table": a["position_table"][:3]}, "position_table has 3 rows"),
        (lambda a: {**a, "adv": a["adv"][..., :5]}, "embedding widths differ"),
        (lambda a: {**a, "ids": a["ids"].float()}, "integer tensors"),
        (lambda a: {**a, "backend": "cuda"}, "backend must be one of"),
    ],
)
def test_bad_arguments_are_named(change, message):
    token_table, ids, adv, positions, position_table = make_inputs(2, 2, 6, 8, 11, 6, torch.float32)
    args = dict(
        token_table=token_table, ids=ids, adv=adv, adv_positions=positions, position_table=position_table
    )
    with pytest.raises(ValueError, match=message):
        assemble_prompt_embeddings(**change(args))
