"""Memory and speed options that change how the models run, never what they compute.

They act in place: the modules keep their identity, parameter names and state-dict keys,
so checkpoints, --resume and the written encoder are the same with or without them.
"""

from __future__ import annotations

from advunlearn_fast.models.text_encoding import _text_transformer


def uses_cuda_graphs(cfg, device) -> bool:
    """Whether the attack step is replayed as a CUDA graph (graphs.py): the fast engine on CUDA
    unless --no-cuda-graphs. The reference engine keeps the authors' eager loop."""
    return cfg.engine == "fast" and cfg.cuda_graphs and device.type == "cuda"


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
    """torch.compile the UNet and the encoder's layer stack (nn.Module.compile, in place).

    The layer stack, not the encoder's forward: the attack enters the encoder from word
    embeddings (text_encoding.encode_hidden), the defender through the stock forward, and
    both run through the stack. Compiling happens on the first calls, once per input shape.
    """
    unet.compile()
    _text_transformer(text_encoder).encoder.compile()
