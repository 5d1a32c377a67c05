"""Public entry points of the attack-step kernels, with backend choice and fallback.

backend="torch" runs the plain-PyTorch reference, "triton" the Triton kernel (a RuntimeError
if it cannot run on these inputs), "auto" the kernel when Triton is installed and the inputs
are on a CUDA device (or on the CPU with TRITON_INTERPRET=1), else the reference. The op
modules import triton at their top, so they are imported here only once the kernel is chosen.
"""

from __future__ import annotations

import torch

from . import reference
from .dispatch import use_triton
from .onehot import OneHotEmbeddingFunction, choose_tokens
from .reference import PROJECT_SIMPLEX_ITERS


def assemble_prompt_embeddings(
    token_table: torch.Tensor,
    ids: torch.Tensor,
    adv: torch.Tensor,
    adv_positions: torch.Tensor,
    position_table: torch.Tensor,
    add: bool = False,
    backend: str = "auto",
) -> torch.Tensor:
    """Prompt embeddings [B, L, D] with adversarial rows inserted, ready for the encoder layers.

    out[b, l] = position_table[l] + token_table[ids[b, l]], except at l = adv_positions[b, j],
    where adv[b, j] replaces the token row (add=False) or is added to it (add=True). Positions
    must be distinct within a prompt and in range; neither is checked, as that would need a
    device sync. Only `adv` receives a gradient (grad_adv[b, j] = grad_out[b, adv_positions[b, j]]);
    the tables are treated as frozen. The output dtype is the promotion of the three float inputs.
    """
    _check_assemble_args(token_table, ids, adv, adv_positions, position_table)
    if use_triton("assemble_prompt_embeddings", backend, token_table, ids, adv, adv_positions, position_table):
        from .assemble import AssemblePromptEmbeddingsFunction

        return AssemblePromptEmbeddingsFunction.apply(token_table, ids, adv, adv_positions, position_table, add)
    return reference.assemble_prompt_embeddings_reference(token_table, ids, adv, adv_positions, position_table, add)


def adversarial_adam_step_(
    param: torch.Tensor,
    grad: torch.Tensor,
    exp_avg: torch.Tensor,
    exp_avg_sq: torch.Tensor,
    step: int,
    lr: float,
    beta1: float = 0.9,
    beta2: float = 0.999,
    eps: float = 1e-8,
    weight_decay: float = 0.0,
    sign_grad: bool = False,
    backend: str = "auto",
) -> torch.Tensor:
    """One torch.optim.Adam step on `param`, updating param, exp_avg and exp_avg_sq in place.

    `step` is the 1-based count including this step (Adam's state["step"] after its increment).
    weight_decay is Adam's L2 term (added to the gradient, not AdamW's decoupled decay).
    sign_grad=True replaces the gradient by its sign first (the fast-AT variant). Arithmetic is
    fp32 whatever the storage dtype. Returns `param`. The kernel needs param, exp_avg and
    exp_avg_sq contiguous; "auto" falls back to the reference otherwise.
    """
    if int(step) != step or step < 1:
        raise ValueError(f"adversarial_adam_step_: step must be a positive integer (1-based), got {step!r}")
    for name, tensor in (("grad", grad), ("exp_avg", exp_avg), ("exp_avg_sq", exp_avg_sq)):
        if tensor.shape != param.shape:
            raise ValueError(
                f"adversarial_adam_step_: {name} has shape {tuple(tensor.shape)}, param has {tuple(param.shape)}"
            )
    for name, tensor in (("param", param), ("grad", grad), ("exp_avg", exp_avg), ("exp_avg_sq", exp_avg_sq)):
        if not tensor.is_floating_point():
            raise ValueError(f"adversarial_adam_step_: {name} must be a floating-point tensor, got {tensor.dtype}")
    in_place = (("param", param), ("exp_avg", exp_avg), ("exp_avg_sq", exp_avg_sq))
    strided = [name for name, tensor in in_place if not tensor.is_contiguous()]
    unsupported = f"{', '.join(strided)} not contiguous (the kernel updates in place)" if strided else None
    args = (param, grad, exp_avg, exp_avg_sq, int(step), lr, beta1, beta2, eps, weight_decay, sign_grad)
    if use_triton("adversarial_adam_step_", backend, param, grad, exp_avg, exp_avg_sq, unsupported=unsupported):
        from .adam import adversarial_adam_forward

        return adversarial_adam_forward(*args)
    return reference.adversarial_adam_step_reference_(*args)


def project_simplex(x: torch.Tensor, iters: int = PROJECT_SIMPLEX_ITERS, backend: str = "auto") -> torch.Tensor:
    """Euclidean projection of each row of x [..., V] onto {p >= 0, sum(p) = 1}.

    Bisection on the threshold tau (`iters` halvings of a bracket at most 1 wide) followed by an
    exact step on the bracketed support; the default gives fp32 accuracy for V = 49408. fp32
    arithmetic, output in x's dtype. Entries equal to -inf come out as exact zeros, a way to
    keep tokens out of the search. Differentiable (the Jacobian on the support).
    """
    if x.dim() < 1 or x.shape[-1] == 0:
        raise ValueError(f"project_simplex: x needs a non-empty last dimension, got shape {tuple(x.shape)}")
    if not x.is_floating_point():
        raise ValueError(f"project_simplex: x must be a floating-point tensor, got {x.dtype}")
    if iters < 0:
        raise ValueError(f"project_simplex: iters must be >= 0, got {iters}")
    if use_triton("project_simplex", backend, x):
        from .simplex import ProjectSimplexFunction

        return ProjectSimplexFunction.apply(x, iters)
    return reference.project_simplex_reference(x, iters)


def onehot_embedding(
    relaxed: torch.Tensor,
    token_table: torch.Tensor,
    sample: bool = False,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Embeddings [..., D] of the tokens reference.straight_through_onehot would pick, looked up
    by gather.

    Same values and gradients as reference.onehot_embedding_reference(straight_through_onehot(
    relaxed), token_table): relaxed gets grad_emb @ token_table.T, token_table (if it requires
    grad) the rows' scatter-add.
    """
    if relaxed.shape[-1] != token_table.shape[0]:
        raise ValueError(
            f"onehot_embedding: relaxed has {relaxed.shape[-1]} entries per row, token_table has "
            f"{token_table.shape[0]} rows"
        )
    return OneHotEmbeddingFunction.apply(relaxed, token_table, choose_tokens(relaxed, sample, generator))


def _check_assemble_args(token_table, ids, adv, adv_positions, position_table) -> None:
    op = "assemble_prompt_embeddings"
    if token_table.dim() != 2 or position_table.dim() != 2:
        raise ValueError(f"{op}: token_table and position_table must be 2-D [rows, D]")
    if ids.dim() != 2 or adv.dim() != 3 or adv_positions.dim() != 2:
        raise ValueError(f"{op}: expected ids [B, L], adv [B, k, D], adv_positions [B, k]")
    B, L = ids.shape
    D = token_table.shape[1]
    if adv.shape[0] != B or tuple(adv_positions.shape) != tuple(adv.shape[:2]):
        raise ValueError(
            f"{op}: ids {tuple(ids.shape)}, adv {tuple(adv.shape)} and adv_positions "
            f"{tuple(adv_positions.shape)} disagree on B or k"
        )
    if adv.shape[2] != D or position_table.shape[1] != D:
        raise ValueError(
            f"{op}: embedding widths differ: token_table {D}, adv {adv.shape[2]}, "
            f"position_table {position_table.shape[1]}"
        )
    if position_table.shape[0] < L:
        raise ValueError(f"{op}: position_table has {position_table.shape[0]} rows, prompts have L = {L}")
    if adv_positions.shape[1] > L:
        raise ValueError(f"{op}: k = {adv_positions.shape[1]} adversarial rows do not fit in L = {L} positions")
    if ids.is_floating_point() or adv_positions.is_floating_point():
        raise ValueError(f"{op}: ids and adv_positions must be integer tensors")
    if not (token_table.is_floating_point() and adv.is_floating_point() and position_table.is_floating_point()):
        raise ValueError(f"{op}: token_table, adv and position_table must be floating-point tensors")
