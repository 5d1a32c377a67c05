"""summary.txt of benchmarks/gpu_check.sh: the JSON files of its steps, read back and compared.

    python -m benchmarks.gpu_check_summary OUT_FOLDER

Against the project's GPU targets (one H100 or H200, SD v1 at 512 px, published settings): the fast
engine at <= 0.5 s per attacked iteration and <= 8 GiB reserved, the published run's first concept
end to end in <= 12 minutes, the default-size bank in <= 2 minutes, compiling in <= 2 minutes.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from benchmarks.bench_step import end_to_end_line, profile_line, rates_line

TARGETS = {"s_per_iter": 0.5, "reserved_gib": 8.0, "end_to_end_s": 12 * 60, "bank_s": 120, "compile_s": 120}
VARIANTS = {"fast-fp32": "--no-tf32", "fast-nchw": "--no-channels-last", "fast-xformers": "--attention xformers",
            "fast-compile": "--compile", "fast-eager": "--no-cuda-graphs", "fast-adam8bit": "--optim adam8bit",
            "fast-checkpointing": "--checkpointing", "fast-profile": "under the profiler",
            "fast-torchrun": "one process under torchrun"}


def read(out: Path, name: str) -> dict | None:
    path = out / f"{name}.json"
    return json.loads(path.read_text()) if path.is_file() else None


def runs_table(out: Path) -> list[str]:
    lines = [f"{'run':<20} {'engine':<10} {'attention':<9} {'NHWC':<5} {'tf32':<5} {'compile':<7} {'optim':<9} "
             f"{'ckpt':<5} {'s/iter':>7} {'peak GiB':>9} {'reserved GiB':>13}  attack step"]
    for name in ("step", *VARIANTS):
        report = read(out, name)
        if report is None:
            continue
        for engine, r in report["engines"].items():
            reserved = r["peak_reserved_mb"] / 1024 if r["peak_reserved_mb"] is not None else float("nan")
            lines.append(f"{name:<20} {engine:<10} {r['attention']:<9} {str(r['channels_last']):<5} {str(r['tf32']):<5} "
                         f"{str(r['compile']):<7} {r['optim']:<9} {str(r['checkpointing']):<5} {r['s_per_iter']:>7.3f} "
                         f"{r['peak_mb'] / 1024:>9.2f} {reserved:>13.2f}  {r['attack_step']}")
    return lines


def attention_lines(report: dict) -> list[str]:
    lines = [f"UNet alone ({report['dtype']}, {report['unet_forward_tflop']:.3f} TFLOP per forward), forward and back "
             "to the conditioning, ms per call:"]
    for batch in sorted({r["batch"] for r in report["results"]}):
        rows = sorted((r for r in report["results"] if r["batch"] == batch), key=lambda r: r["ms"])
        lines.append(f"  batch {batch}: " + "; ".join(
            f"{r['attention']}/{r['layout']} {r['ms']:.2f} ({r['tflops_per_s']:.0f} TFLOP/s, gradient off sdpa/nchw by "
            f"{r['gradient_difference']:.1e})" for r in rows))
    lines += [f"  {name}: not measured ({why})" for name, why in report["unavailable"].items()]
    return lines


def first_iterations_excess(r: dict) -> float:
    """Seconds the first warm-up and first attacked iterations took beyond their kinds' medians."""
    excess = r["first_iteration_s"]["attacked"] - r["s_per_iter"]
    if r["warmup_s_per_iter"] is not None:
        excess += r["first_iteration_s"]["warmup"] - r["warmup_s_per_iter"]
    return excess


def largest_relative_difference(a: list, b: list) -> float:
    pairs = [(x, y) for x, y in zip(a, b) if x is not None and y is not None]
    return max(abs(x - y) / max(abs(y), 1e-12) for x, y in pairs) if pairs else float("nan")


def step_lines(report: dict) -> list[str]:
    fast = report["engines"]["fast"]
    lines = [f"fast engine: {rates_line(fast)}"]
    if "reference" in report["engines"]:
        lines.append(f"reference engine: {rates_line(report['engines']['reference'])}")
        lines.append(
            f"fast engine {report['speedup']:.1f}x faster per iteration than the reference's median "
            f"({report['reference_s_per_iter']:.1f} s), {report['speedup_normalised']:.1f}x than the reference at its "
            f"expected work per iteration ({report['reference_s_per_iter_normalised']:.1f} s); "
            f"{report['unet_fwd_equiv_ratio']:.1f}x fewer UNet forward-equivalents")
    lines.append(f"fast engine {fast['s_per_iter']:.3f} s per attacked iteration (target <= {TARGETS['s_per_iter']}), "
                 f"{(fast['peak_reserved_mb'] or float('nan')) / 1024:.2f} GiB reserved at the peak, bank build "
                 f"included (target <= {TARGETS['reserved_gib']})")
    projection = fast.get("end_to_end_1000")
    if projection:
        lines.append(end_to_end_line(projection) + f" (target <= {TARGETS['end_to_end_s']} s; the bank's target "
                                                    f"<= {TARGETS['bank_s']} s)")
    return lines


def variant_lines(out: Path, step: dict | None) -> list[str]:
    """Each short run against the step's fast run: same seed and settings but one, so their first
    iterations are the same draws and their losses differ only by what the option changes."""
    lines = []
    base = step["engines"]["fast"] if step else None
    for name, option in VARIANTS.items():
        report = read(out, name)
        if report is None:
            continue
        r = report["engines"]["fast"]
        line = f"{option}: {r['s_per_iter']:.3f} s per attacked iteration"
        if base is not None:
            n = len(r["loss_all"])
            losses = largest_relative_difference(r["loss_all"], base["loss_all"][:n])
            attacks = largest_relative_difference(r["attack_loss_end_all"], base["attack_loss_end_all"][:n])
            line += (f" ({base['s_per_iter'] / r['s_per_iter']:.2f}x the defaults' speed); over its {n} iterations "
                     f"losses differ from the defaults' by at most {100 * losses:.2g}%, attack losses by "
                     f"{100 * attacks:.2g}% (relative)")
            if name == "fast-compile":
                compiling = first_iterations_excess(r) - first_iterations_excess(base)
                line += f"; compiling took about {compiling:.0f} s (target <= {TARGETS['compile_s']} s)"
        if r["profile"] is not None:
            line += f"; {profile_line(r['profile'], top=3)}"
        lines.append(line)
    return lines


def attack_line(r: dict) -> str:
    return (f"attack ({r['attack_step']}, batch {r['settings']['batch_size']}): {r['s_per_prompt_per_block']:.2f} s per "
            f"prompt per block, {r['s_per_prompt_per_judged_generation']:.2f} s per judged generation, peak "
            f"{r['peak_mb'] / 1024:.2f} GiB; 142 prompts x 50 blocks: {r['projected_i2p_nudity_s'] / 3600:.1f} h")


def summary(out: Path) -> str:
    lines = runs_table(out)
    if (attention := read(out, "attention")) is not None:
        lines += attention_lines(attention)
    step = read(out, "step")
    if step is not None:
        lines += step_lines(step)
    lines += variant_lines(out, step)
    if (attack := read(out, "attack")) is not None:
        lines.append(attack_line(attack))
    return "\n".join(lines)


if __name__ == "__main__":
    print(summary(Path(sys.argv[1])))
