"""The defender's optimiser: torch's Adam (the default, as the authors), or bitsandbytes' 8-bit Adam.

8-bit Adam keeps both moment estimates as blockwise-quantised uint8 (tensors under 4096
elements stay fp32): for the full CLIP ViT-L/14 encoder (85M trained parameters) about
0.17 GB of state instead of 0.68 GB. The master weights stay fp32 either way. Its updates are
not torch Adam's (about 1% off over 50 steps on one 768x768 weight), so it is an option only.
bitsandbytes is imported only when it is asked for.
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


def check_optim(name: str) -> None:
    """Refuse an optimiser whose library is missing (`name` is validated by TrainConfig)."""
    if name == "adam8bit" and _bitsandbytes() is None:
        raise UserError("--optim adam8bit needs bitsandbytes: pip install bitsandbytes (or pass --optim adam)")


def build_optimizer(name: str, params: list, lr: float) -> torch.optim.Optimizer:
    """Adam with the published betas and eps; both keep their state in `state_dict()` for --resume."""
    if name == "adam8bit":
        return _bitsandbytes().optim.Adam8bit(params, lr=lr)
    return torch.optim.Adam(params, lr=lr)
