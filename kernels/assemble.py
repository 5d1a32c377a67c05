"""Prompt-embedding assembly: token gather + adversarial rows + position add, and its backward.

Imported only when the Triton backend is chosen (see functional.py).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from .reference import result_dtype


@triton.jit
def _assemble_fwd_kernel(
    out_ptr,
    token_ptr,
    ids_ptr,
    adv_ptr,
    adv_pos_ptr,
    position_ptr,
    L,
    K,
    D,
    stride_token,
    stride_position,
    ADD: tl.constexpr,
    BLOCK_K: tl.constexpr,
    BLOCK_D: tl.constexpr,
):
    row = tl.program_id(0)  # one program per (prompt b, sequence position l)
    b = row // L
    l = row % L
    offs_d = tl.arange(0, BLOCK_D)
    mask_d = offs_d < D

    # k is a handful of slots: comparing them all beats a host-side inverse map (an extra
    # launch and a [B, L] tensor) for finding which adversarial row, if any, lands on l.
    offs_k = tl.arange(0, BLOCK_K)
    slots = tl.load(adv_pos_ptr + b * K + offs_k, mask=offs_k < K, other=-1)
    hit = slots == l
    n_hits = tl.sum(hit.to(tl.int32), axis=0)
    j = tl.sum(tl.where(hit, offs_k, 0), axis=0)
    # Row masks as a single comparison against a width of D or 0: Triton's interpreter gives
    # `vector_mask & scalar_condition` a non-boolean dtype that its loads reject.
    adv_mask = offs_d < tl.where(n_hits > 0, D, 0)
    if ADD:
        token_mask = mask_d
    else:
        token_mask = offs_d < tl.where(n_hits == 0, D, 0)
    token = tl.load(ids_ptr + row).to(tl.int64)
    # Summed in the reference's order (token, then adversarial row, then position) so that
    # fp32 results match it bit for bit.
    acc = tl.load(token_ptr + token * stride_token + offs_d, mask=token_mask, other=0.0).to(tl.float32)
    acc += tl.load(adv_ptr + (b * K + j) * D + offs_d, mask=adv_mask, other=0.0).to(tl.float32)
    acc += tl.load(position_ptr + l * stride_position + offs_d, mask=mask_d, other=0.0).to(tl.float32)
    tl.store(out_ptr + row.to(tl.int64) * D + offs_d, acc.to(out_ptr.dtype.element_ty), mask=mask_d)


@triton.jit
def _assemble_bwd_kernel(
    grad_adv_ptr,
    grad_out_ptr,
    adv_pos_ptr,
    L,
    K,
    D,
    BLOCK_D: tl.constexpr,
):
    slot = tl.program_id(0)  # one program per adversarial row (b, j)
    b = slot // K
    l = tl.load(adv_pos_ptr + slot).to(tl.int64)
    offs_d = tl.arange(0, BLOCK_D)
    mask_d = offs_d < D
    grad = tl.load(grad_out_ptr + (b * L + l) * D + offs_d, mask=mask_d, other=0.0)
    tl.store(grad_adv_ptr + slot.to(tl.int64) * D + offs_d, grad.to(grad_adv_ptr.dtype.element_ty), mask=mask_d)


def _row_major(table: torch.Tensor) -> torch.Tensor:
    # Rows may be strided (a slice of a bigger table), elements within a row may not.
    return table if table.stride(-1) == 1 else table.contiguous()


def assemble_forward(
    token_table: torch.Tensor,
    ids: torch.Tensor,
    adv: torch.Tensor,
    adv_positions: torch.Tensor,
    position_table: torch.Tensor,
    add: bool,
) -> torch.Tensor:
    B, L = ids.shape
    K = adv.shape[1]
    D = token_table.shape[1]
    token_table = _row_major(token_table.detach())
    position_table = _row_major(position_table.detach())
    ids = ids.contiguous()
    adv = adv.detach().contiguous()
    adv_positions = adv_positions.contiguous()
    out = torch.empty((B, L, D), device=adv.device, dtype=result_dtype(token_table, adv, position_table))
    if out.numel() == 0:
        return out
    _assemble_fwd_kernel[(B * L,)](
        out,
        token_table,
        ids,
        adv,
        adv_positions,
        position_table,
        L,
        K,
        D,
        token_table.stride(0),
        position_table.stride(0),
        ADD=bool(add),
        BLOCK_K=triton.next_power_of_2(max(K, 1)),
        BLOCK_D=triton.next_power_of_2(D),
    )
    return out


def assemble_backward(grad_out: torch.Tensor, adv_positions: torch.Tensor, adv_dtype: torch.dtype) -> torch.Tensor:
    B, L, D = grad_out.shape
    K = adv_positions.shape[1]
    grad_adv = torch.empty((B, K, D), device=grad_out.device, dtype=adv_dtype)
    if grad_adv.numel() == 0:
        return grad_adv
    _assemble_bwd_kernel[(B * K,)](
        grad_adv,
        grad_out.contiguous(),
        adv_positions.contiguous(),
        L,
        K,
        D,
        BLOCK_D=triton.next_power_of_2(D),
    )
    return grad_adv


class AssemblePromptEmbeddingsFunction(torch.autograd.Function):
    @staticmethod
    def forward(ctx, token_table, ids, adv, adv_positions, position_table, add):
        ctx.save_for_backward(adv_positions)
        ctx.adv_dtype = adv.dtype
        return assemble_forward(token_table, ids, adv, adv_positions, position_table, add)

    @staticmethod
    def backward(ctx, grad_out):
        (adv_positions,) = ctx.saved_tensors
        grad_adv = assemble_backward(grad_out, adv_positions, ctx.adv_dtype) if ctx.needs_input_grad[2] else None
        return None, None, grad_adv, None, None, None
