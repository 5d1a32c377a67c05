"""Embeddings of straight-through one-hot tokens from relaxed vocabulary vectors (plain PyTorch).

argmax / multinomial and a gather are one launch each already, so there is no Triton kernel
here; what matters is that the embedding lookup is a gather and that only the backward touches
the [V, D] table, once, as a [k, D] x [D, V] product. The one-hot itself, the authors'
formulation, is reference.straight_through_onehot.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def choose_tokens(relaxed: torch.Tensor, sample: bool, generator: torch.Generator | None) -> torch.Tensor:
    """Token index per row of `relaxed` [..., V]: argmax, or a draw with the row as weights."""
    rows = relaxed.detach().reshape(-1, relaxed.shape[-1])
    if sample:
        # multinomial needs non-negative weights and a float dtype it supports on every device;
        # after the simplex projection the rows are already distributions. It also needs them on
        # the generator's device: a CPU generator (the attack's, so that a seed draws the same
        # tokens on any device) draws for rows on a GPU too.
        weights = rows.float().clamp(min=0)
        if generator is not None and generator.device != weights.device:
            weights = weights.to(generator.device)
        index = torch.multinomial(weights, 1, generator=generator).squeeze(-1).to(rows.device)
    else:
        index = rows.argmax(-1)
    return index.reshape(relaxed.shape[:-1])


class OneHotEmbeddingFunction(torch.autograd.Function):
    @staticmethod
    def forward(ctx, relaxed, token_table, index):
        ctx.save_for_backward(token_table, index)
        ctx.relaxed_dtype = relaxed.dtype
        return F.embedding(index, token_table.detach())

    @staticmethod
    def backward(ctx, grad_emb):
        token_table, index = ctx.saved_tensors
        grad_relaxed = grad_table = None
        if ctx.needs_input_grad[0]:
            # d(onehot @ table)/d(onehot) = grad @ table.T, passed straight through to relaxed.
            grad_relaxed = (grad_emb.to(token_table.dtype) @ token_table.t()).to(ctx.relaxed_dtype)
        if ctx.needs_input_grad[1]:
            grad_table = torch.zeros_like(token_table).index_add_(
                0, index.reshape(-1), grad_emb.reshape(-1, grad_emb.shape[-1]).to(token_table.dtype)
            )
        return grad_relaxed, grad_table, None
