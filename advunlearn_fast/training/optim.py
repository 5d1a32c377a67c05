"""The defender's optimiser: torch's Adam, or bitsandbytes' 8-bit Adam.

8-bit Adam keeps both moment estimates as blockwise-quantised uint8 (tensors under 4096
elements stay fp32): for the full CLIP ViT-L/14 encoder (85M trained parameters) about
0.17 GB of state instead of 0.68 GB. The master weights stay fp32 either way.
bitsandbytes is imported only when it is asked for or when the default is decided.
"""

from __future__ import annotations

import functools

import torch

from advunlearn_fast.errors import UserError


@functools.lru_cache(maxsize=None)
def _bitsandbytes():
    """The bitsandbytes module, or None when it cannot be imported (cached: a failed import is slow)."""
    try:
        import bitsandbytes
    except Exception:  # a broken CUDA setup raises more than ImportError
        return None
    return bitsandbytes


def bitsandbytes_version() -> str | None:
    module = _bitsandbytes()
    return None if module is None else module.__version__


def resolve_optim(name: str | None, engine: str, device: torch.device) -> str:
    """The optimiser a run uses: `name` (validated by TrainConfig), or the default when None:
    8-bit Adam for the fast engine on CUDA, torch Adam for the reference engine (the authors')."""
    if name is None:
        fits = engine == "fast" and device.type == "cuda"
        return "adam8bit" if fits and _bitsandbytes() is not None else "adam"
    if name == "adam8bit" and _bitsandbytes() is None:
        raise UserError("--optim adam8bit needs bitsandbytes: pip install bitsandbytes (or pass --optim adam)")
    return name


def build_optimizer(name: str, params: list, lr: float) -> torch.optim.Optimizer:
    """Adam with the published betas and eps; both keep their state in `state_dict()` for --resume."""
    if name == "adam8bit":
        return _bitsandbytes().optim.Adam8bit(params, lr=lr)
    return torch.optim.Adam(params, lr=lr)
