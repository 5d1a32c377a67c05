"""Memory and speed options that change how the models run, never what they compute (beyond
float rounding).

They act in place: the modules keep their identity, parameter names and state-dict keys,
so checkpoints, --resume and the written encoder are the same with or without them.
"""

from __future__ import annotations

import contextlib

import torch

from advunlearn_fast.models.text_encoding import text_transformer


def uses_cuda_graphs(cfg, device) -> bool:
    """Whether the attack step is replayed as a CUDA graph (graphs.py): the fast engine on CUDA
    unless --no-cuda-graphs. The reference engine keeps the authors' eager loop."""
    return cfg.engine == "fast" and cfg.cuda_graphs and device.type == "cuda"


def resolve_layout_and_precision(cfg, device: torch.device) -> dict:
    """--channels-last and --tf32 where the run left them unset: on for the fast engine on CUDA
    (the H100 profile spent 24% of its kernel time converting the UNet's NCHW tensors for cuDNN's
    NHWC bf16 convolutions, and the fp32 encoder's GEMMs ran without TF32), off elsewhere; the
    reference engine keeps PyTorch's defaults, as the authors ran."""
    default = cfg.engine == "fast" and device.type == "cuda"
    return {name: default if getattr(cfg, name) is None else getattr(cfg, name) for name in ("channels_last", "tf32")}


def use_channels_last(unet) -> None:
    """The UNet's 4-d weights in NHWC order, so that its convolutions (and what follows them) run
    in the layout cuDNN's bf16 kernels use, without a conversion on every call."""
    unet.to(memory_format=torch.channels_last)


@contextlib.contextmanager
def tf32_matmuls(enabled: bool):
    """fp32 matrix products on CUDA in TF32 (10-bit mantissa inputs, fp32 accumulation) while the
    block runs: the fast engine's fp32 models are the trained text encoder (its UNet is bf16) and,
    in the UNet ablations, the trained UNet. A CUDA-only switch: CPU arithmetic is unchanged.
    Restored afterwards, so that nothing else in the process (tests, a later command) inherits it."""
    before = torch.backends.cuda.matmul.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = enabled or before
    try:
        yield
    finally:
        torch.backends.cuda.matmul.allow_tf32 = before


def enable_activation_checkpointing(text_encoder, unet) -> None:
    """Recompute activations in the backward pass instead of keeping them.

    Non-reentrant torch.utils.checkpoint: gradients reach the conditioning although every
    UNet weight is frozen. diffusers checkpoints the UNet's blocks whenever gradients are
    on, so the attack steps save too, and at 512 px the UNet's activations are most of the
    peak memory. transformers checkpoints the encoder's layers only in train mode, i.e. in
    the defender step (77 tokens: small next to the UNet's activations).
    """
    unet.enable_gradient_checkpointing()
    # transformers 5 renamed the method and deprecated the old name; 4.x has only the old one.
    enable = getattr(text_encoder, "activation_checkpointing_enable", None) or text_encoder.gradient_checkpointing_enable
    enable({"use_reentrant": False})


def compile_models(text_encoder, unet) -> None:
    """torch.compile each repeated block on its own (regional compilation, in place): the UNet's
    `_repeated_blocks` through diffusers' compile_repeated_blocks (SD v1's 16 transformer blocks)
    and the encoder's 12 layers, not the whole models. Blocks of one shape share one compiled
    graph, so they compile a few times instead of once per call path through a whole UNet (whose
    first compiled full-size iteration ran past 4 minutes on an H200). Compiling happens on the
    first calls, once per input shape.

    Inductor's default mode, without CUDA graphs of its own: the fast engine records the whole
    attack step as one CUDA graph (graphs.py), compiled blocks inside it.
    """
    unet.compile_repeated_blocks()
    for layer in text_transformer(text_encoder).encoder.layers:
        layer.compile()
