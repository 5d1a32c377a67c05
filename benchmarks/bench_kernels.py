"""Attack-step kernels against their PyTorch references, same inputs, same process.

    python -m benchmarks.bench_kernels [--device cuda] [--dtype bf16] [--json out.json]

(from the repository root, or as a script once the package is installed). Sizes are SD v1.x's:
L = 77 tokens of D = 768, a 49408-token vocabulary, k adversarial tokens. On a machine without
a GPU only the reference paths are timed, unless --interpreted also runs the kernels through
Triton's interpreter, which checks that they run but says nothing about their speed.
"""

from __future__ import annotations

import argparse
import importlib.metadata
import json
import os
import platform
import statistics
import sys
import time

DTYPES = {"fp32": "float32", "bf16": "bfloat16", "fp16": "float16"}


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default=None, help="cuda or cpu (default: cuda when available)")
    parser.add_argument("--dtype", choices=sorted(DTYPES), default="fp32", help="storage dtype of every input")
    parser.add_argument("--batch", type=int, default=4, help="prompts assembled per call (B)")
    parser.add_argument("--k", type=int, default=5, help="adversarial tokens per prompt")
    parser.add_argument("--repeats", type=int, default=50, help="timed calls per variant")
    parser.add_argument("--warmup", type=int, default=5, help="untimed calls first (compilation, caches)")
    parser.add_argument(
        "--threads",
        type=int,
        default=None,
        help="CPU threads for torch (on a busy machine, 1 avoids waiting for OpenMP workers on tiny ops)",
    )
    parser.add_argument(
        "--interpreted",
        action="store_true",
        help="on a CPU, also time the kernels under TRITON_INTERPRET=1 (a functional check, not a speed)",
    )
    parser.add_argument("--json", metavar="FILE", help="also write the results as JSON")
    return parser.parse_args(argv)


def timed(fn, repeats, warmup, device, torch):
    """Median and quartiles (ms) of `repeats` calls, plus peak extra memory on CUDA."""

    def sync():
        if device.type == "cuda":
            torch.cuda.synchronize()

    for _ in range(warmup):
        fn()
    sync()
    peak = None
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
        resident = torch.cuda.memory_allocated()
    samples = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        sync()
        samples.append((time.perf_counter() - start) * 1e3)
    if device.type == "cuda":
        peak = (torch.cuda.max_memory_allocated() - resident) / 2**20
    quartiles = statistics.quantiles(samples, n=4) if len(samples) > 1 else samples * 3
    return {
        "median_ms": statistics.median(samples),
        "p25_ms": quartiles[0],
        "p75_ms": quartiles[2],
        "min_ms": min(samples),
        "repeats": len(samples),
        "peak_extra_mib": peak,
    }


def cases(args, device, dtype, torch):
    """(op, shape, {variant: callable}) on shared inputs; variant "torch" is each op's reference,
    the baseline of the reported ratios."""
    from advunlearn_fast.kernels import reference

    from advunlearn_fast import kernels

    B, k, L, D, V = args.batch, args.k, 77, 768, 49408
    gen = torch.Generator().manual_seed(0)
    token_table = torch.randn(V, D, generator=gen).to(device, dtype)
    position_table = torch.randn(L, D, generator=gen).to(device, dtype)
    ids = torch.randint(0, V, (B, L), generator=gen).to(device)
    adv_positions = (torch.arange(k) + 1).repeat(B, 1).to(device)  # prefix_k: right after <start>
    adv = torch.randn(B, k, D, generator=gen).to(device, dtype).requires_grad_()
    grad_out = torch.randn(B, L, D, generator=gen).to(device, dtype)

    def assemble(backend):
        def run():
            adv.grad = None
            out = kernels.assemble_prompt_embeddings(
                token_table, ids, adv, adv_positions, position_table, backend=backend
            )
            out.backward(grad_out)

        return run

    yield "assemble_prompt_embeddings fwd+bwd", (B, k, L, D, V), {b: assemble(b) for b in ("torch", "triton")}

    for shape, what in (((k, D), "soft-prompt rows"), ((k, V), "relaxed vocabulary rows")):
        param = torch.randn(shape, generator=gen).to(device, dtype)
        grad = torch.randn(shape, generator=gen).to(device, dtype)
        state = torch.zeros_like(param), torch.zeros_like(param)

        def adam(backend, param=param, grad=grad, state=state):
            return lambda: kernels.adversarial_adam_step_(
                param, grad, *state, step=10, lr=1e-2, weight_decay=0.1, backend=backend
            )

        optimized = param.clone().requires_grad_()
        optimized.grad = grad.clone()
        optimizer = torch.optim.Adam([optimized], lr=1e-2, weight_decay=0.1)
        variants = {b: adam(b) for b in ("torch", "triton")}
        variants["torch.optim.Adam"] = optimizer.step
        yield f"adversarial_adam_step_ ({what})", shape, variants

    relaxed = torch.full((k, V), 1.0 / V) + 0.01 * torch.randn(k, V, generator=gen)
    relaxed = relaxed.to(device, dtype)
    variants = {b: (lambda b=b: kernels.project_simplex(relaxed, backend=b)) for b in ("torch", "triton")}
    variants["sort (exact)"] = lambda: reference.project_simplex_sort_reference(relaxed)
    yield "project_simplex", (k, V), variants

    onehot_rows = kernels.project_simplex(relaxed, backend="torch").requires_grad_()
    grad_emb = torch.randn(k, D, generator=gen).to(device, dtype)

    def gather():
        onehot_rows.grad = None
        kernels.onehot_embedding(onehot_rows, token_table).backward(grad_emb)

    def onehot_product():
        onehot_rows.grad = None
        onehot = reference.straight_through_onehot(onehot_rows)
        reference.onehot_embedding_reference(onehot, token_table).backward(grad_emb)

    # No Triton kernel here: the gather replaces the authors' one-hot x vocabulary product.
    yield "onehot_embedding fwd+bwd", (k, V, D), {"torch": onehot_product, "gather": gather}


def main(argv=None):
    args = parse_args(argv)
    if args.interpreted:
        # Must precede the first kernel call, which is when triton gets imported.
        os.environ["TRITON_INTERPRET"] = "1"
    import torch
    from advunlearn_fast.kernels import interpreter_enabled, triton_available

    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    dtype = getattr(torch, DTYPES[args.dtype])
    kernel_runs = triton_available() and (device.type == "cuda" or interpreter_enabled())
    interpreted = kernel_runs and interpreter_enabled()
    try:
        triton_version = importlib.metadata.version("triton")
    except importlib.metadata.PackageNotFoundError:
        triton_version = None
    header = {
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else f"cpu ({platform.machine()})",
        "torch_threads": torch.get_num_threads(),
        "dtype": args.dtype,
        "python": platform.python_version(),
        "torch": torch.__version__,
        "triton": triton_version,
        "kernels": "interpreted (timings meaningless)" if interpreted else ("native" if kernel_runs else "not run"),
    }
    print(" | ".join(f"{key}: {value}" for key, value in header.items()))
    if interpreted:
        print("Kernel timings below come from Triton's interpreter: they check the kernels run, not their speed.")

    results = []
    print(f"{'op':50s} {'shape':26s} {'variant':18s} {'median ms':>10s} {'p25-p75 ms':>17s} {'vs torch':>9s}")
    for op, shape, variants in cases(args, device, dtype, torch):
        baseline = None
        for variant, fn in variants.items():
            if variant == "triton" and not kernel_runs:
                continue
            # The interpreter takes seconds per call; a few calls show it works.
            slow = variant == "triton" and interpreted
            stats = timed(fn, min(args.repeats, 3) if slow else args.repeats, 1 if slow else args.warmup, device, torch)
            if variant == "torch":
                baseline = stats["median_ms"]
            ratio = baseline / stats["median_ms"] if baseline else float("nan")
            results.append({"op": op, "shape": list(shape), "variant": variant, **stats, "speedup_vs_torch": ratio})
            spread = f"{stats['p25_ms']:.3f}-{stats['p75_ms']:.3f}"
            print(
                f"{op:50s} {str(shape):26s} {variant:18s} {stats['median_ms']:10.3f} {spread:>17s} {ratio:8.2f}x"
                + (f"  peak +{stats['peak_extra_mib']:.1f} MiB" if stats["peak_extra_mib"] is not None else "")
            )
    if args.json:
        with open(args.json, "w", encoding="utf-8") as handle:
            record = {**header, "interpreted": interpreted, "argv": sys.argv[1:], "results": results}
            json.dump(record, handle, indent=2)
        print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
