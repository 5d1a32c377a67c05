"""`advunlearn attack` (UnlearnDiffAtk) timed by phase, and projected to the I2P nudity set.

    python -m benchmarks.bench_attack --model sd-v1-random --device cuda --prompts 8 --timesteps 3 --json out.json

Runs the real attack (`advunlearn_fast.evaluation.robustness`) on `--prompts` made-up prompts
against a judge that never sees the concept (an encoder that resists every block: every
prompt runs every block, the attack's worst case), one batch of `--batch-size`. Reports, per
prompt (its equal share of the batch's calls): seconds per timestep block of Adam steps, per
judged generation (the sampler's full run and the VAE decode), per target image and per
unattacked generation; the peak memory (CUDA: max_memory_allocated and max_memory_reserved; a
CPU: the process's peak RSS); and the projection of a run of 142 prompts (the I2P nudity set)
with all 50 blocks: prompts x (unattacked and target generation + 50 x (block + judged
generation)). The first block holds warm-up (and, on CUDA, recording the CUDA graph of the
step): the block and generation times are medians over the blocks after it when there are any.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import tempfile
import time
from pathlib import Path

import torch

from advunlearn_fast.device import resolve_device
from advunlearn_fast.evaluation.robustness import AttackSettings, Evaluation
from advunlearn_fast.libraries import quiet_libraries
from benchmarks.bench_step import peak_mb, reset_peak

I2P_NUDITY_PROMPTS = 142
PUBLISHED_BLOCKS = 50


def never(images, prompts):
    """The judge of the benchmark: no image shows the concept, so no attack stops early."""
    return [False] * len(images)


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default="tiny", help="tiny, sd-v1-random (SD v1 architecture, 512 px), or a model folder")
    p.add_argument("--device", default="auto")
    p.add_argument("--prompts", type=int, default=8, help="prompts attacked (made up, seeds 0..N-1)")
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--timesteps", type=int, default=3, help="timestep blocks run (of the published 50)")
    p.add_argument("--steps-per-timestep", type=int, default=40)
    p.add_argument("--adv-tokens", type=int, default=5)
    p.add_argument("--gen-steps", type=int, default=None, help="judged generation steps [default: the model's, 50 for SD]")
    p.add_argument("--target-steps", type=int, default=25)
    p.add_argument("--sampler", default=None)
    p.add_argument("--no-cuda-graphs", dest="cuda_graphs", action="store_false")
    p.add_argument("--json", default=None)
    return p.parse_args(argv)


class PhaseClock:
    """Wraps an Evaluation's generation and attack calls, recording when each ran."""

    def __init__(self, ev: Evaluation):
        self.judged: list[tuple[float, float, int, bool]] = []  # (start, end, images, inside the attack)
        self.targets: list[tuple[float, int]] = []
        self.attacks: list[tuple[float, float]] = []
        self.inside_attack = False
        judged, targets, attack = ev.judged_images, ev.target_images, ev.attack_batch

        def timed_judged(indices, conds, tag):
            began = time.perf_counter()
            result = judged(indices, conds, tag)
            self.judged.append((began, time.perf_counter(), len(indices), self.inside_attack))
            return result

        def timed_targets(indices):
            began = time.perf_counter()
            result = targets(indices)
            self.targets.append((time.perf_counter() - began, len(indices)))
            return result

        def timed_attack(indices, x_target, bar):
            self.inside_attack = True
            began = time.perf_counter()
            try:
                return attack(indices, x_target, bar)
            finally:
                self.attacks.append((began, time.perf_counter()))
                self.inside_attack = False

        ev.judged_images, ev.target_images, ev.attack_batch = timed_judged, timed_targets, timed_attack


def _after_warmup(values: list[float]) -> float:
    return statistics.median(values[1:] if len(values) > 1 else values)


def measure(args) -> dict:
    device = resolve_device(args.device)
    with tempfile.TemporaryDirectory() as tmp:
        prompts = Path(tmp) / "prompts.csv"
        prompts.write_text("prompt,evaluation_seed\n" + "".join(
            f"a photo of a person standing in a garden number {i},{i}\n" for i in range(args.prompts)))
        settings = AttackSettings(
            model=args.model, encoder=None, prompts=str(prompts), judge="benchmarks.bench_attack:never",
            out=str(Path(tmp) / "report"), adv_tokens=args.adv_tokens, timesteps=args.timesteps,
            steps_per_timestep=args.steps_per_timestep, gen_steps=args.gen_steps, target_steps=args.target_steps,
            sampler=args.sampler, device=args.device, batch_size=args.batch_size, cuda_graphs=args.cuda_graphs,
        )
        ev = Evaluation(settings, progress=False)
        clock = PhaseClock(ev)
        reset_peak(device)
        began = time.perf_counter()
        report = ev.run()
        wall = time.perf_counter() - began
    # Per prompt of a batch: each call's time divided by the prompts sharing it.
    pre = [(end - start) / n for start, end, n, inside in clock.judged if not inside]
    judged = [(end - start) / n for start, end, n, inside in clock.judged if inside]
    blocks = []
    for attack_start, attack_end in clock.attacks:
        previous = attack_start
        for start, end, n, inside in clock.judged:
            if inside and attack_start <= start <= attack_end:
                blocks.append((start - previous) / n)
                previous = end
    target = [seconds / n for seconds, n in clock.targets]
    per_block, per_judged = _after_warmup(blocks), _after_warmup(judged)
    per_prompt_fixed = statistics.median(pre) + statistics.median(target)
    projected = I2P_NUDITY_PROMPTS * (per_prompt_fixed + PUBLISHED_BLOCKS * (per_block + per_judged))
    return {
        "device": torch.cuda.get_device_name() if device.type == "cuda" else f"cpu ({torch.get_num_threads()} threads, {platform.processor() or platform.machine()})",
        "model": args.model,
        "image_size": ev.pipe.parts.native_image_size,
        "settings": {k: getattr(args, k) for k in ("prompts", "batch_size", "timesteps", "steps_per_timestep", "adv_tokens",
                                                   "target_steps", "cuda_graphs")},
        "sampler": ev.sampler, "gen_steps": ev.gen_steps, "unet_dtype": str(ev.pipe.unet.dtype),
        "attack_step": ev.attack_step_mode(),
        "s_per_prompt_per_block": per_block,
        "s_per_prompt_per_judged_generation": per_judged,
        "s_per_prompt_unattacked_generation": statistics.median(pre),
        "s_per_prompt_target_image": statistics.median(target),
        "s_per_prompt_per_block_all": blocks,
        "peak_mb": peak_mb(device),
        "peak_reserved_mb": torch.cuda.max_memory_reserved() / 2**20 if device.type == "cuda" else None,
        "projected_i2p_nudity_s": projected,
        "projection": f"{I2P_NUDITY_PROMPTS} prompts x (unattacked + target generation + {PUBLISHED_BLOCKS} x "
                      "(block + judged generation)), at this batch size, every prompt resisting every block",
        "wall_s": wall,
        "rows_attacked": sum(r["attacked"] for r in report["rows"]),
    }


def main(argv=None) -> dict:
    args = parse_args(argv)
    quiet_libraries()
    result = measure(args)
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2) + "\n")
    print(f"{result['model']} on {result['device']}, batch {args.batch_size}: "
          f"{result['s_per_prompt_per_block']:.2f} s per prompt per block of {args.steps_per_timestep} steps, "
          f"{result['s_per_prompt_per_judged_generation']:.2f} s per judged generation; peak {result['peak_mb']:.0f} MB; "
          f"{I2P_NUDITY_PROMPTS} prompts x {PUBLISHED_BLOCKS} blocks: {result['projected_i2p_nudity_s'] / 3600:.1f} h")
    return result


if __name__ == "__main__":
    main()
