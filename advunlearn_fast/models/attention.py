"""The UNet's attention kernels (`--attention`): PyTorch's scaled_dot_product_attention, or
xformers' memory-efficient attention, both through diffusers' own attention processors.

xformers runs on CUDA only and is an optional package (`pip install -e ".[gpu]"`): asking for it
elsewhere, or where it does not import or run, is one line naming `--attention sdpa`. Which of the
two is faster for SD v1 at 512 px on a given GPU is what benchmarks/bench_attention.py measures.
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
from typing import TYPE_CHECKING

from advunlearn_fast.errors import UserError

if TYPE_CHECKING:
    import torch

# Read by the training config, which the CLI's --help imports: nothing here imports torch at load.
ATTENTION_BACKENDS = ("sdpa", "xformers")


def check_attention(name: str, device: torch.device) -> None:
    """Refuse an attention backend that cannot run on `device`, before any model is loaded."""
    if name not in ATTENTION_BACKENDS:
        raise UserError(f"--attention must be one of {', '.join(ATTENTION_BACKENDS)}, got {name!r}")
    if name == "sdpa":
        return
    if device.type != "cuda":
        raise UserError(f"--attention xformers needs a CUDA GPU (xformers' attention is CUDA-only, the device is "
                        f"{device.type}): use --attention sdpa")
    if importlib.util.find_spec("xformers") is None:
        raise UserError("--attention xformers: xformers is not installed (pip install xformers, a build for your "
                        "torch); or use --attention sdpa")
    import torch

    try:  # a wheel built for another torch or GPU imports, then fails on its first call
        import xformers.ops

        q = torch.zeros((1, 2, 1, 40), device=device, dtype=torch.bfloat16)
        xformers.ops.memory_efficient_attention(q, q, q)
    except Exception as err:
        first = (str(err).strip().splitlines() or [type(err).__name__])[0]
        raise UserError(f"--attention xformers: xformers {_version('xformers')} does not run with torch "
                        f"{torch.__version__} here ({first}); use --attention sdpa") from None


def set_unet_attention(unet, name: str) -> None:
    """Every attention layer of the UNet on the chosen kernel (call `check_attention` first)."""
    from diffusers.models.attention_processor import AttnProcessor2_0, XFormersAttnProcessor

    unet.set_attn_processor(XFormersAttnProcessor() if name == "xformers" else AttnProcessor2_0())


def _version(package: str) -> str:
    try:
        return importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
        return "(version unknown)"
