import pytest
import torch
from advunlearn_fast.kernels import onehot_embedding, project_simplex
from advunlearn_fast.kernels.reference import onehot_embedding_reference, straight_through_onehot
from kernel_checks import DEVICE, assert_close, dtype_params


def relaxed_rows(k, V, seed=0, dtype=torch.float32):
    generator = torch.Generator().manual_seed(seed)
    # A projected random row: a few tokens carry all the mass, the rest are exact zeros.
    x = torch.randn(k, V, generator=generator).to(DEVICE) * 3
    return project_simplex(x, backend="torch").to(dtype).requires_grad_()


def generator(seed):
    return torch.Generator(device=DEVICE).manual_seed(seed)


@pytest.mark.parametrize("dtype", dtype_params(torch.float32, torch.bfloat16, torch.float16))
def test_argmax_onehot_and_identity_gradient(dtype):
    relaxed = relaxed_rows(3, 50, dtype=dtype)
    onehot = straight_through_onehot(relaxed)
    assert onehot.dtype == dtype
    assert torch.equal(onehot, torch.nn.functional.one_hot(relaxed.argmax(-1), 50).to(dtype))
    grad_out = torch.randn(3, 50, device=DEVICE).to(dtype)
    (grad,) = torch.autograd.grad(onehot, relaxed, grad_out)
    assert torch.equal(grad, grad_out)


def test_sampling_is_reproducible_and_stays_in_support():
    relaxed = relaxed_rows(5, 1000, seed=1)
    first = straight_through_onehot(relaxed, sample=True, generator=generator(7))
    again = straight_through_onehot(relaxed, sample=True, generator=generator(7))
    assert torch.equal(first, again)
    expected = torch.multinomial(relaxed.detach(), 1, generator=generator(7)).squeeze(-1)
    assert torch.equal(first.argmax(-1), expected)
    assert bool((relaxed.detach()[first.bool()] > 0).all())


@pytest.mark.parametrize("k,V,D", [(1, 7, 3), (3, 101, 37), (5, 49408, 768)], ids=str)
def test_embedding_matches_onehot_product(k, V, D):
    relaxed = relaxed_rows(k, V, seed=2)
    table = torch.randn(V, D, generator=torch.Generator().manual_seed(3)).to(DEVICE)
    grad_out = torch.randn(k, D, device=DEVICE)
    emb = onehot_embedding(relaxed, table)
    (grad,) = torch.autograd.grad(emb, relaxed, grad_out)
    reference_relaxed = relaxed.detach().clone().requires_grad_()
    reference = onehot_embedding_reference(straight_through_onehot(reference_relaxed), table)
    (reference_grad,) = torch.autograd.grad(reference, reference_relaxed, grad_out)
    assert torch.equal(emb, table[relaxed.argmax(-1)])
    assert_close(emb, reference, what="embedding")
    assert_close(grad, reference_grad, what="grad relaxed")


def test_embedding_sampling_matches_onehot_sampling_and_table_gradient():
    relaxed = relaxed_rows(4, 60, seed=4)
    table = torch.randn(60, 16, device=DEVICE, requires_grad=True)
    emb = onehot_embedding(relaxed, table, sample=True, generator=generator(11))
    onehot = straight_through_onehot(relaxed, sample=True, generator=generator(11))
    reference = onehot_embedding_reference(onehot, table)
    assert_close(emb, reference, what="sampled embedding")
    grad_out = torch.randn(4, 16, device=DEVICE)
    (grad_table,) = torch.autograd.grad(emb, table, grad_out)
    (reference_grad_table,) = torch.autograd.grad(reference, table, grad_out)
    assert_close(grad_table, reference_grad_table, what="grad token_table")


def test_bad_arguments_are_named():
    relaxed = relaxed_rows(2, 10)
    with pytest.raises(ValueError, match="token_table has 11 rows"):
        onehot_embedding(relaxed, torch.zeros(11, 4, device=DEVICE))
