"""The UNet's attention kernel and memory layout, one training-shaped call at a time.

    python -m benchmarks.bench_attention --model sd-v1-random --device cuda --json attention.json

For each attention backend that runs here (sdpa; xformers where it is installed, on CUDA) and each
layout of the UNet (NCHW, channels_last): one UNet call forward and back to the conditioning, at
each batch (default 1, the attack step's, and 6, the defender step's: concept and retain batch), in
the fast engine's UNet precision (bf16 on CUDA), the median of --repeats calls after --warmup ones.
Reports milliseconds per call, achieved TFLOP/s (the forward's FLOPs from torch.utils.flop_counter,
the backward counted as costs.py counts it), the peak memory of the call, and how far each
combination's output and gradient are from sdpa's in NCHW (relative norm of the difference): a
working path computes the same thing.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time
from pathlib import Path

import torch

from advunlearn_fast.device import resolve_device
from advunlearn_fast.errors import UserError
from advunlearn_fast.libraries import quiet_libraries
from advunlearn_fast.models.attention import ATTENTION_BACKENDS, check_attention, set_unet_attention
from advunlearn_fast.models.diffusion import predict_noise
from advunlearn_fast.models.loading import load_model
from advunlearn_fast.training.acceleration import use_channels_last
from advunlearn_fast.training.config import TrainConfig
from advunlearn_fast.training.costs import CONDITIONING_BACKWARD, unet_flops
from advunlearn_fast.training.trainer import unet_dtype

LAYOUTS = ("nchw", "channels_last")


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default="tiny", help="tiny, sd-v1-random (full size), world, or a model folder")
    p.add_argument("--device", default="auto")
    p.add_argument("--batches", default="1,6", help="UNet batch sizes, comma-separated")
    p.add_argument("--repeats", type=int, default=10)
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--json", default=None)
    return p.parse_args(argv)


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def one_call(unet, z, t, cond):
    """A training-shaped call: forward, then the gradient of a loss with respect to the conditioning."""
    cond = cond.detach().requires_grad_(True)
    out = predict_noise(unet, z, t, cond)
    (grad,) = torch.autograd.grad(out.float().square().mean(), cond)
    return out.detach(), grad


def measure(unet, inputs, device, repeats: int, warmup: int) -> dict:
    for _ in range(warmup):
        one_call(unet, *inputs)
    synchronize(device)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    seconds = []
    for _ in range(repeats):
        began = time.perf_counter()
        out, grad = one_call(unet, *inputs)
        synchronize(device)
        seconds.append(time.perf_counter() - began)
    return {"ms": 1e3 * statistics.median(seconds), "ms_all": [1e3 * s for s in seconds],
            "peak_mb": torch.cuda.max_memory_allocated() / 2**20 if device.type == "cuda" else None,
            "out": out.float(), "grad": grad.float()}


def relative_difference(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a - b).norm() / b.norm().clamp_min(1e-12)).item()


def main(argv=None) -> dict:
    args = parse_args(argv)
    quiet_libraries()
    device = resolve_device(args.device)
    parts = load_model(args.model)
    dtype = unet_dtype(TrainConfig(concepts=["x"]), device)
    unet = parts.unet.to(device, dtype).eval().requires_grad_(False)
    latent = (parts.latent_channels, int(unet.config.sample_size), int(unet.config.sample_size))
    context = (parts.tokenizer.model_max_length, int(parts.text_encoder.config.hidden_size))
    forward_flops = unet_flops(unet, latent, context)["forward"]
    available = {}
    for name in ATTENTION_BACKENDS:
        try:
            check_attention(name, device)
            available[name] = None
        except UserError as refused:
            available[name] = str(refused)
    generator = torch.Generator().manual_seed(0)
    results = []
    for batch in [int(b) for b in args.batches.split(",")]:
        inputs = (torch.randn((batch, *latent), generator=generator).to(device, dtype),
                  torch.randint(1000, (batch,), generator=generator).to(device),
                  torch.randn((batch, *context), generator=generator).to(device, dtype))
        baseline = None
        for layout in LAYOUTS:
            unet.to(memory_format=torch.contiguous_format)
            if layout == "channels_last":
                use_channels_last(unet)
            for name in (n for n in ATTENTION_BACKENDS if available[n] is None):
                set_unet_attention(unet, name)
                m = measure(unet, inputs, device, args.repeats, args.warmup)
                baseline = baseline or m
                work = batch * (1 + CONDITIONING_BACKWARD) * forward_flops
                results.append({
                    "batch": batch, "layout": layout, "attention": name, "ms": m["ms"], "ms_all": m["ms_all"],
                    "tflops_per_s": work / (m["ms"] / 1e3) / 1e12, "peak_mb": m["peak_mb"],
                    "output_difference": relative_difference(m["out"], baseline["out"]),
                    "gradient_difference": relative_difference(m["grad"], baseline["grad"]),
                })
    report = {
        "device": torch.cuda.get_device_name() if device.type == "cuda" else f"cpu ({platform.machine()})",
        "model": args.model, "dtype": str(dtype).replace("torch.", ""), "latent": list(latent),
        "unet_forward_tflop": forward_flops / 1e12, "versions": {"torch": torch.__version__},
        "unavailable": {name: why for name, why in available.items() if why is not None},
        "results": results,
    }
    for row in results:
        print(f"batch {row['batch']} {row['layout']:<13} {row['attention']:<8} {row['ms']:8.2f} ms "
              f"{row['tflops_per_s']:7.1f} TFLOP/s  peak {row['peak_mb'] or float('nan'):8.0f} MB  "
              f"vs sdpa/nchw: output {row['output_difference']:.1e}, gradient {row['gradient_difference']:.1e}")
    for name, why in report["unavailable"].items():
        print(f"{name}: not measured ({why})")
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=2) + "\n")
    return report


if __name__ == "__main__":
    main()
