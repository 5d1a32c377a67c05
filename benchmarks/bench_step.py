"""Reference vs fast engine, seconds and UNet passes per training iteration, one process.

    python -m benchmarks.bench_step --model tiny --device cpu --iterations 3 --json out.json

Both engines run the real training loop (`advunlearn_fast.training.trainer.train`) on the same model
and settings (default: the published ones, 30 attack steps, 50 DDIM steps, retain batch 5),
every iteration attacked unless --warmup gives the fast engine warm-up iterations first. The
trajectory bank of the fast engine is built before its iterations and reported separately, with
the number of reference-speed iterations it takes to pay for itself. Peak memory:
torch.cuda.max_memory_allocated (and the allocator's max_memory_reserved, what the GPU must
actually have) on CUDA; on a CPU the process's peak RSS, reset between engines. --optim,
--checkpointing, --compile, --attention, --channels-last and --tf32 set the fast engine's options;
the reference engine always runs as the authors' code does; --no-cuda-graphs runs the fast
engine's attack step eagerly (graphs are CUDA-only; a CPU runs it eagerly anyway).

Per engine, each attack round is timed on its own (the rest of an iteration is the defender step)
and its UNet forward-equivalents counted, so that the achieved TFLOP/s of the attack, the defender
step, the whole iteration and the bank build are reported: forward-equivalents (costs.py, a
backward counted by its FLOPs) times the FLOPs of one UNet forward, counted by
torch.utils.flop_counter on the model in use (the text encoder's FLOPs, a few percent, are not
counted). The reference engine's iterations differ in length (its rollouts stop at a random
step): besides their median it is reported normalised to its expected work per iteration
(costs.py), and the speedup both ways. When the fast engine builds its bank from scratch,
`end_to_end_1000_s` projects the published run (the bank for 1000 iterations, 200 warm-up and 800
attacked iterations) from what was measured.
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import json
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

import diffusers
import torch
import transformers
from torch.autograd import DeviceType
from torch.profiler import ProfilerActivity

import advunlearn_fast.training.trainer as trainer
from advunlearn_fast.device import resolve_device
from advunlearn_fast.errors import UserError
from advunlearn_fast.libraries import quiet_libraries
from advunlearn_fast.models.attention import ATTENTION_BACKENDS
from advunlearn_fast.training.config import TrainConfig
from advunlearn_fast.training.costs import CONDITIONING_BACKWARD, fresh_rollout_cost, unet_flops
from advunlearn_fast.training.optim import bitsandbytes_version
from advunlearn_fast.training.sampling import retain_prompts_used
from advunlearn_fast.training.trainer import train


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default="tiny", help="tiny, sd-v1-random (full size), world, or a model folder")
    p.add_argument("--device", default="auto")
    p.add_argument("--iterations", type=int, default=3, help="timed iterations per engine (the first is dropped when > 1)")
    p.add_argument("--reference-iterations", type=int, default=None,
                   help="iterations of the reference engine (default: --iterations); one is enough where it is slow")
    p.add_argument("--concept", default="nudity")
    p.add_argument("--attack-steps", type=int, default=30)
    p.add_argument("--ddim-steps", type=int, default=50)
    p.add_argument("--retain-batch", type=int, default=5)
    p.add_argument("--image-size", type=int, default=None)
    p.add_argument("--bank-size", type=int, default=32)
    p.add_argument("--retain-bank-size", type=int, default=2)
    p.add_argument("--retain-prompts", default=None, help="retain prompt file (a short one keeps the bank small)")
    p.add_argument("--bank-dir", default=None, help="default: a fresh temporary folder (bank built from scratch)")
    p.add_argument("--engines", default="reference,fast")
    p.add_argument("--optim", default="adam", choices=["adam", "adam8bit"], help="fast engine's optimiser")
    p.add_argument("--checkpointing", action="store_true", help="fast engine: activation checkpointing")
    p.add_argument("--no-cuda-graphs", dest="cuda_graphs", action="store_false",
                   help="fast engine: run the attack step eagerly instead of replaying a CUDA graph")
    p.add_argument("--compile", action="store_true",
                   help="fast engine: torch.compile (the first iterations, dropped, hold the compilation)")
    p.add_argument("--warmup", type=int, default=0,
                   help="fast engine: iterations without attack first, as a run's warm-up (timed on their own)")
    p.add_argument("--attention", default="sdpa", choices=ATTENTION_BACKENDS, help="fast engine: the UNet's attention")
    p.add_argument("--channels-last", default=None, action=argparse.BooleanOptionalAction,
                   help="fast engine: the UNet in channels_last (default: the engine's, on for CUDA)")
    p.add_argument("--tf32", default=None, action=argparse.BooleanOptionalAction,
                   help="fast engine: TF32 matrix products in the text encoder (default: the engine's, on for CUDA)")
    p.add_argument("--profile", action="store_true",
                   help="run each engine under torch.profiler (every iteration after the first): how much of the "
                        "wall time the GPU is busy (on a CPU: inside ATen operators), and the top operators")
    p.add_argument("--trace", default=None, help="with --profile: write a Chrome trace per engine to TRACE.<engine>.json")
    p.add_argument("--run-dir", default=None,
                   help="keep each engine's run folder (log.jsonl: seconds per iteration) in DIR/<engine> "
                        "instead of a temporary folder: what a run cut short by a timeout leaves to read")
    p.add_argument("--layers", default="all", help="text-encoder layers trained")
    p.add_argument("--json", default=None)
    args = p.parse_args(argv)
    if args.trace and not args.profile:
        p.error("--trace needs --profile")
    if args.profile and min(args.iterations, args.reference_iterations or args.iterations) < 2:
        p.error("--profile needs at least 2 iterations per engine (the first is not recorded)")
    if not 0 <= args.warmup < args.iterations:
        p.error("--warmup must leave the fast engine at least one attacked iteration")
    return args


def reset_peak(device: torch.device) -> None:
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
    else:
        Path("/proc/self/clear_refs").write_text("5")  # resets VmHWM, the peak RSS


def peak_mb(device: torch.device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated() / 2**20
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


class AttackRoundClock:
    """Times every attack round of the train() runs inside `watching()` and counts its UNet
    forward-equivalents (the rest of an iteration is the defender step), and keeps the model in
    use for its FLOP count."""

    def __init__(self):
        self.rounds: list[tuple[float, float]] = []  # (seconds, forward-equivalents), in order
        self.unet_shapes = None  # (unet, latent shape, conditioning shape) of the run

    @contextlib.contextmanager
    def watching(self):
        real = trainer.run_attack

        def timed(s, *args):
            if self.unet_shapes is None:
                self.unet_shapes = (s.frozen.unet, s.frozen.latent_shape, tuple(s.frozen.uncond.shape[1:]))
            synchronize(s.device)
            before, began = sum(s.meter.window.values()), time.perf_counter()
            result = real(s, *args)
            synchronize(s.device)
            self.rounds.append((time.perf_counter() - began, sum(s.meter.window.values()) - before))
            return result

        trainer.run_attack = timed
        try:
            yield self
        finally:
            trainer.run_attack = real

    def forward_flops(self) -> int:
        """FLOPs of one sample through the run's UNet forward; releases the model."""
        unet, latent, context = self.unet_shapes
        self.unet_shapes = None
        return unet_flops(unet, latent, context)["forward"]


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def run_engine(engine: str, args, out: Path, bank_dir: str) -> dict:
    device = resolve_device(args.device)
    fast = engine == "fast"
    iterations = args.iterations if fast else (args.reference_iterations or args.iterations)
    cfg = TrainConfig(
        model=args.model, concepts=[args.concept], out=str(out), iterations=iterations,
        warmup=args.warmup if fast else 0,
        attack_steps=args.attack_steps, ddim_steps=args.ddim_steps, retain_batch=args.retain_batch,
        image_size=args.image_size, bank_size=args.bank_size, retain_bank_size=args.retain_bank_size,
        retain_prompts=args.retain_prompts, bank=True if fast else None, bank_dir=bank_dir, engine=engine,
        save_every=10**9,
        device=args.device, layers=args.layers, optim=args.optim if fast else "adam",
        checkpointing=fast and args.checkpointing, compile=fast and args.compile,
        cuda_graphs=fast and args.cuda_graphs, attention=args.attention if fast else "sdpa",
        channels_last=args.channels_last if fast else None, tf32=args.tf32 if fast else None,
    )
    reset_peak(device)
    began = time.time()
    trace = f"{args.trace}.{engine}.json" if args.trace else None
    with AttackRoundClock().watching() as clock:
        summary, averages = profiled_train(cfg, device, trace) if args.profile else (train(cfg, progress=False), None)
    wall = time.time() - began
    flops = clock.forward_flops()
    log = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]
    warmup = [r for r in log if r["attack_loss_end"] is None]
    attacked = [r for r in log if r["attack_loss_end"] is not None]
    # The first iteration of each kind holds the warm-up of its shapes (and compiling, and the
    # recording of the attack step's CUDA graph): timed apart.
    timed = attacked[1:] or attacked
    profile = None
    if averages is not None:
        recorded = sum(r["seconds"] for r in log[1:])
        profile = {"iterations": len(log) - 1, "trace": trace, **summarise_profile(averages, recorded, device)}
    bank_s = (summary.get("bank") or {}).get("seconds", 0.0)
    result = {
        "s_per_iter": statistics.median(r["seconds"] for r in timed),
        "s_per_iter_all": [r["seconds"] for r in log],
        "warmup_s_per_iter": statistics.median(r["seconds"] for r in warmup[1:]) if len(warmup) > 1 else None,
        "first_iteration_s": {"warmup": warmup[0]["seconds"] if warmup else None, "attacked": attacked[0]["seconds"]},
        "setup_s": wall - bank_s - sum(r["seconds"] for r in log),
        "unet_fwd_equiv": statistics.mean(sum(r["unet_fwd_equiv"].values()) for r in timed),
        "unet_fwd_equiv_by_phase": timed[-1]["unet_fwd_equiv"],
        "unet_forward_tflop": flops / 1e12,
        **phase_rates(attacked, clock.rounds, summary, flops),
        "peak_mb": peak_mb(device),
        "peak_reserved_mb": torch.cuda.max_memory_reserved() / 2**20 if device.type == "cuda" else None,
        "dtype": summary["unet_dtype"],
        **{key: summary["config"][key] for key in ("optim", "checkpointing", "compile", "attention", "channels_last",
                                                    "tf32")},
        "attack_step": summary["attack_step"],
        # Per iteration, to compare runs of one seed (graphs or not, on the same device).
        "loss_all": [r["loss"] for r in log],
        "attack_loss_end_all": [r["attack_loss_end"] for r in log],
        "bank": summary.get("bank"),
        "bank_unet_fwd_equiv": summary["unet_fwd_equiv_total"].get("bank", 0),
        "wall_s": wall,
        "profile": profile,
    }
    if not fast:
        result.update(normalised_reference(timed, cfg, summary["train_timesteps"]))
    elif summary.get("bank"):
        result["end_to_end_1000"] = project_published_run(result, summary, cfg)
    return result


def phase_rates(attacked: list[dict], rounds: list[tuple[float, float]], summary: dict, flops: int) -> dict:
    """Seconds of the attack round and the defender step (medians over the attacked iterations
    after the first), and the TFLOP/s each achieved, the whole iteration's and the bank build's."""
    pairs = list(zip(attacked, rounds, strict=True))[1:] or list(zip(attacked, rounds))
    attack_s = sum(seconds for _, (seconds, _) in pairs)
    attack_work = sum(work for _, (_, work) in pairs)
    total_s = sum(r["seconds"] for r, _ in pairs)
    total_work = sum(sum(r["unet_fwd_equiv"].values()) for r, _ in pairs)

    def rate(work, seconds):
        return work * flops / seconds / 1e12 if seconds > 0 else None

    bank = summary.get("bank") or {}
    bank_work = summary["unet_fwd_equiv_total"].get("bank", 0)
    return {
        "attack_round_s": statistics.median(seconds for _, (seconds, _) in pairs),
        "defender_s": statistics.median(r["seconds"] - seconds for r, (seconds, _) in pairs),
        "tflops_per_s": {
            "attack": rate(attack_work, attack_s),
            "defender": rate(total_work - attack_work, total_s - attack_s),
            "iteration": rate(total_work, total_s),
            "bank": rate(bank_work, bank.get("seconds", 0.0)) if bank.get("entries_built") else None,
        },
    }


def expected_iteration_work(cfg: TrainConfig, train_timesteps: int) -> float:
    """The reference engine's expected UNet forward-equivalents per attacked iteration: fresh
    rollouts and targets (their length random per draw), the attack and the defender step."""
    rollouts = fresh_rollout_cost(iterations=1, warmup=0, attacking=True, attack_every=1, attack_steps=cfg.attack_steps,
                                  retain_batch=cfg.retain_batch, ddim_steps=cfg.ddim_steps,
                                  train_timesteps=train_timesteps)
    return rollouts + (cfg.attack_steps + 1 + cfg.retain_batch) * (1 + CONDITIONING_BACKWARD)


def normalised_reference(timed: list[dict], cfg: TrainConfig, train_timesteps: int) -> dict:
    """The reference's seconds per iteration at its expected work: its seconds per forward-equivalent
    over the timed iterations, times the expected forward-equivalents of an iteration."""
    seconds = sum(r["seconds"] for r in timed)
    work = sum(sum(r["unet_fwd_equiv"].values()) for r in timed)
    expected = expected_iteration_work(cfg, train_timesteps)
    return {"expected_unet_fwd_equiv": expected, "s_per_iter_normalised": seconds / work * expected}


def project_published_run(fast: dict, summary: dict, cfg: TrainConfig) -> dict | None:
    """Seconds of the published run on this model and GPU, first concept: setup, the bank a
    1000-iteration run builds, 200 warm-up and 800 attacked iterations, from this run's
    measurements (the bank's time scaled by trajectories; warm-up iterations at the measured
    warm-up rate, else at the defender step's). None when the bank was partly cached."""
    published = TrainConfig()
    count, batch = summary["retain_prompt_count"], cfg.retain_batch
    this_run = retain_prompts_used(cfg.seed, cfg.iterations, count, batch)
    if summary["bank"]["entries_built"] != len(cfg.concepts) + len(this_run):
        return None
    full = retain_prompts_used(cfg.seed, published.iterations, count, batch)
    trajectories = {n: len(cfg.concepts) * cfg.bank_size + len(used) * cfg.retain_bank_size
                    for n, used in (("built", this_run), ("published", full))}
    bank_s = summary["bank"]["seconds"] * trajectories["published"] / trajectories["built"]
    warmup_s = fast["warmup_s_per_iter"] if fast["warmup_s_per_iter"] is not None else fast["defender_s"]
    attacked = published.iterations - published.warmup
    seconds = fast["setup_s"] + bank_s + published.warmup * warmup_s + attacked * fast["s_per_iter"]
    return {
        "seconds": seconds, "setup_s": fast["setup_s"], "bank_s": bank_s, "bank_trajectories": trajectories,
        "warmup_iterations": published.warmup, "warmup_s_per_iter": warmup_s,
        "warmup_measured": fast["warmup_s_per_iter"] is not None,
        "attacked_iterations": attacked, "attacked_s_per_iter": fast["s_per_iter"],
    }


def profiled_train(cfg: TrainConfig, device: torch.device, trace: str | None):
    """train() under torch.profiler, recording every iteration after the first: setup, bank build and
    the first iteration (warm-up) are left out. Returns the run summary and the profiler's averages."""
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    schedule = torch.profiler.schedule(wait=0, warmup=1, active=cfg.iterations - 1, repeat=1)
    with torch.profiler.profile(activities=activities, schedule=schedule) as prof:
        summary = train(cfg, progress=False, after_iteration=lambda record: prof.step())
    if trace:
        prof.export_chrome_trace(trace)
    return summary, prof.key_averages()


def _annotation(event) -> bool:
    return bool(getattr(event, "is_user_annotation", False)) or event.key.startswith("ProfilerStep")


def summarise_profile(averages, seconds: float, device: torch.device, top: int = 12) -> dict:
    """Where the recorded iterations' `seconds` went. On CUDA: the time the GPU was busy (kernels and
    copies; the rest it waited for the host). On a CPU: the time inside ATen operators (the rest is
    Python, module calls and dispatch). The profiler's own overhead is in `seconds`."""
    if device.type == "cuda":
        # The profiler also lists annotated regions (its step markers, Optimizer.step) among the
        # device's events: only kernels and copies are the GPU's work.
        events = [e for e in averages if e.device_type == DeviceType.CUDA and not _annotation(e)]
        busy = sum(e.self_device_time_total for e in events) / 1e6
        key, label = (lambda e: e.self_device_time_total), "gpu_busy"
    else:
        events = [e for e in averages if e.key.startswith("aten::")]
        busy = sum(e.self_cpu_time_total for e in events) / 1e6
        key, label = (lambda e: e.self_cpu_time_total), "in_operators"
    ranked = sorted(events, key=key, reverse=True)[:top]
    return {
        "recorded_s": seconds,
        f"{label}_s": busy,
        f"{label}_fraction": busy / seconds if seconds else None,
        "top": [{"name": e.key, "calls": e.count, "self_ms": key(e) / 1e3} for e in ranked],
    }


def main(argv=None) -> dict:
    args = parse_args(argv)
    quiet_libraries()  # the table is the output, as on the command line
    device = resolve_device(args.device)
    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        bank_dir = args.bank_dir or str(Path(tmp) / "bank")
        runs = Path(args.run_dir or tmp)
        for engine in args.engines.split(","):
            results[engine] = run_engine(engine, args, runs / engine, bank_dir)
    ref, fast = results.get("reference"), results.get("fast")
    report = {
        "device": torch.cuda.get_device_name() if device.type == "cuda" else f"cpu ({torch.get_num_threads()} threads, {platform.processor() or platform.machine()})",
        "model": args.model,
        "image_size": args.image_size or "native",
        "settings": {k: getattr(args, k) for k in ("concept", "attack_steps", "ddim_steps", "retain_batch", "layers", "iterations",
                                                   "reference_iterations", "warmup", "bank_size", "retain_bank_size",
                                                   "retain_prompts")},
        "versions": {
            "torch": torch.__version__, "cuda": torch.version.cuda, "python": platform.python_version(),
            "diffusers": diffusers.__version__, "transformers": transformers.__version__,
            "bitsandbytes": bitsandbytes_version() if "adam8bit" in {r["optim"] for r in results.values()} else None,
        },
        "engines": results,
    }
    if fast:
        projection = fast.get("end_to_end_1000")
        report.update(fast_peak_reserved_mb=fast["peak_reserved_mb"],
                      end_to_end_1000_s=projection["seconds"] if projection else None)
    if ref and fast:
        bank_s = (fast["bank"] or {}).get("seconds", 0.0)
        saved = ref["s_per_iter"] - fast["s_per_iter"]
        report.update(
            dtype={"reference": ref["dtype"], "fast": fast["dtype"]},
            reference_s_per_iter=ref["s_per_iter"], fast_s_per_iter=fast["s_per_iter"],
            speedup=ref["s_per_iter"] / fast["s_per_iter"],
            reference_s_per_iter_normalised=ref["s_per_iter_normalised"],
            speedup_normalised=ref["s_per_iter_normalised"] / fast["s_per_iter"],
            reference_peak_mb=ref["peak_mb"], fast_peak_mb=fast["peak_mb"],
            unet_fwd_equiv_reference=ref["unet_fwd_equiv"], unet_fwd_equiv_fast=fast["unet_fwd_equiv"],
            unet_fwd_equiv_ratio=ref["unet_fwd_equiv"] / fast["unet_fwd_equiv"],
            bank_build_s=bank_s, bank_pays_for_itself_after_iterations=bank_s / saved if saved > 0 else None,
        )
    print_table(report)
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=2) + "\n")
    return report


def profile_line(profile: dict, top: int = 5) -> str:
    """One line for a `--profile` summary (also printed by gpu_check.sh)."""
    gpu = "gpu_busy_s" in profile
    busy = profile["gpu_busy_s" if gpu else "in_operators_s"]
    fraction = profile["gpu_busy_fraction" if gpu else "in_operators_fraction"] or 0.0
    return (f"{profile['iterations']} iterations profiled in {profile['recorded_s']:.2f} s, "
            f"{'GPU busy' if gpu else 'inside ATen operators'} {busy:.2f} s ({100 * fraction:.0f}%); top: "
            + ", ".join(f"{op['name']} {op['self_ms']:.0f} ms" for op in profile["top"][:top]))


def print_table(report: dict) -> None:
    print(f"device {report['device']}, model {report['model']}, settings {report['settings']}")
    print(f"{'engine':<10} {'dtype':<9} {'optim':<9} {'ckpt':<5} {'compile':<7} {'s/iter':>9} {'UNet fwd-eq/iter':>17} {'peak MB':>9} {'reserved MB':>12}")
    for name, r in report["engines"].items():
        reserved = f"{r['peak_reserved_mb']:>12.0f}" if r["peak_reserved_mb"] is not None else f"{'-':>12}"
        print(f"{name:<10} {r['dtype']:<9} {r['optim']:<9} {str(r['checkpointing']):<5} {str(r['compile']):<7} {r['s_per_iter']:>9.3f} "
              f"{r['unet_fwd_equiv']:>17.0f} {r['peak_mb']:>9.0f} {reserved}")
    for name, r in report["engines"].items():
        print(f"{name}: attack step {r['attack_step']}, attention {r['attention']}, channels_last {r['channels_last']}, "
              f"tf32 {r['tf32']}")
        print(f"{name}: {rates_line(r)}")
        if r["profile"] is not None:
            print(f"{name}: {profile_line(r['profile'])}")
    if "speedup" in report:
        print(
            f"speedup {report['speedup']:.1f}x per iteration ({report['speedup_normalised']:.1f}x against the reference's "
            f"expected work per iteration, {report['reference_s_per_iter_normalised']:.2f} s), "
            f"{report['unet_fwd_equiv_ratio']:.1f}x fewer UNet passes; bank built in {report['bank_build_s']:.1f} s, "
            f"paid back after {report['bank_pays_for_itself_after_iterations'] or float('nan'):.1f} iterations"
        )
    projection = report["engines"].get("fast", {}).get("end_to_end_1000")
    if projection:
        print(end_to_end_line(projection))


def rates_line(r: dict) -> str:
    """Seconds and achieved TFLOP/s per phase of one engine (also printed by gpu_check.sh)."""
    rates = ", ".join(f"{phase} {value:.3g}" for phase, value in r["tflops_per_s"].items() if value is not None)
    return (f"attack round {r['attack_round_s']:.3f} s, defender step {r['defender_s']:.3f} s per iteration; "
            f"TFLOP/s ({r['unet_forward_tflop']:.3g} TFLOP per UNet forward): {rates}")


def end_to_end_line(p: dict) -> str:
    warmup = "measured" if p["warmup_measured"] else "at the defender step's rate"
    return (f"published run, first concept, projected: {p['seconds']:.0f} s = setup {p['setup_s']:.0f} s + bank "
            f"{p['bank_s']:.0f} s ({p['bank_trajectories']['published']} trajectories) + {p['warmup_iterations']} "
            f"warm-up x {p['warmup_s_per_iter']:.3f} s ({warmup}) + {p['attacked_iterations']} attacked x "
            f"{p['attacked_s_per_iter']:.3f} s")


if __name__ == "__main__":
    try:
        main()
    except UserError as refused:  # a run the options refuse (xformers without CUDA, say): one line
        sys.exit(f"bench_step: {refused}")
