"""Data-parallel AdvUnlearn (torchrun) against one process on the concept world.

    python -m benchmarks.bench_distributed --out /tmp/bench-distributed --json benchmarks/results/FILE.json

Three AdvUnlearn trainings of the demo's AdvUnlearn encoder (`advunlearn_fast/demo.py`: its
settings, retain prompts, concept phrases), each started by torchrun on the CPU:
- `n1`: one process, S iterations with a warm-up of W (the demo's run);
- `n2`: two processes, S iterations and warm-up W: equal defender steps, twice the adversarial samples;
- `n1-equal-samples`: one process, 2S iterations and warm-up 2W: the samples of `n2`.
Every encoder, and the base model's for reference, is measured with the demo's own functions:
concept rate and utility (`clean_rates`), ASR under the soft-prompt attack and UnlearnDiffAtk
(`attack_stage`, on the demo's 8 attack prompts). Each training has a bank folder of its own, so
its seconds include building its trajectory bank (by both processes for `n2`).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

import torch

from advunlearn_fast import demo
from advunlearn_fast.libraries import quiet_libraries

ROOT = Path(__file__).resolve().parents[1]


def runs(iterations: int, warmup: int) -> dict[str, dict]:
    return {
        "n1": {"processes": 1, "iterations": iterations, "warmup": warmup},
        "n2": {"processes": 2, "iterations": iterations, "warmup": warmup},
        "n1-equal-samples": {"processes": 1, "iterations": 2 * iterations, "warmup": 2 * warmup},
    }


def train_config(out: Path, name: str, iterations: int, warmup: int, seed: int):
    attribute, value = demo.concept_attribute(demo.DemoSettings().concept)
    settings = demo.DemoSettings(out=str(out), seed=seed, device="cpu", progress=False)
    cfg = demo.training_config(out / name, attribute, value, "advunlearn", settings)
    return dataclasses.replace(cfg, iterations=iterations, warmup=warmup, bank_dir=str(out / "banks" / name))


def train_worker(out: str, name: str, iterations: str, warmup: str, seed: str) -> None:
    """One rank of a training (run by torchrun)."""
    from advunlearn_fast.training.trainer import train

    quiet_libraries()
    train(train_config(Path(out), name, int(iterations), int(warmup), int(seed)), progress=False)


def launch(out: Path, name: str, run: dict, seed: int) -> list[str]:
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", str(run["processes"]),
               "-m", "benchmarks.bench_distributed", "train-worker", str(out), name, str(run["iterations"]),
               str(run["warmup"]), str(seed)]
    subprocess.run(command, check=True, cwd=ROOT)
    return command


def measure(encoder: str | None, out: Path, name: str, prompts: str, judge: str, seed: int) -> dict:
    attribute, value = demo.concept_attribute(demo.DemoSettings().concept)
    settings = demo.DemoSettings(out=str(out), seed=seed, device="cpu", progress=False)
    clean = demo.clean_rates(encoder, attribute, value, settings)
    asr = {method: demo.attack_stage(encoder, out / "attacks" / f"{name}-{method}", prompts, judge, method, settings)["asr"]
           for method in demo.ATTACK_LR}
    return {"concept_rate": clean["concept_rate"], "chance_rate": clean["chance_rate"], "utility": clean["utility"],
            "asr_softprompt": asr["softprompt"], "asr_unlearndiffatk": asr["unlearndiffatk"],
            "samples": {"concept_rate": clean["n_concept"], "utility": clean["n_utility"], "asr": demo.ATTACK_PROMPTS}}


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", required=True, help="folder for the runs and attack reports (must not exist)")
    p.add_argument("--iterations", type=int, default=demo.TRAINING["iterations"], help="S")
    p.add_argument("--warmup", type=int, default=demo.ADVERSARIAL["warmup"], help="W")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", default=None)
    args = p.parse_args(argv)
    quiet_libraries()
    torch.set_num_threads(1)
    out = Path(args.out)
    out.mkdir(parents=True)
    attribute, value = demo.concept_attribute(demo.DemoSettings().concept)
    demo.write_retain_prompts(out, demo.concept_phrases(attribute, value), args.seed)
    from advunlearn_fast.world.evaluate import concept_prompts

    judge = f"world:{attribute}={value}"
    prompts = demo.write_attack_prompts(out / "attacks", concept_prompts(value, demo.ATTACK_PROMPTS), args.seed)

    report = {"concept": value, "judge": judge, "load_average_before": os.getloadavg(), "cpus": os.cpu_count(),
              "platform": platform.platform(), "torch": torch.__version__, "base": measure(None, out, "base", str(prompts),
                                                                                             judge, args.seed)}
    for name, run in runs(args.iterations, args.warmup).items():
        began = time.time()
        command = launch(out, name, run, args.seed)
        wall = time.time() - began
        summary = json.loads((out / name / "run.json").read_text())
        report[name] = {
            **run, "adversarial_samples": run["processes"] * (run["iterations"] - run["warmup"]),
            "wall_seconds": round(wall, 1), "training_seconds": summary["seconds"],
            "bank_seconds": (summary.get("bank") or {}).get("seconds"), "world_size": summary["world_size"],
            "final": summary["final"], "command": " ".join(command),
            **measure(str(out / name), out, name, str(prompts), judge, args.seed),
        }
    report["load_average_after"] = os.getloadavg()
    report["settings"] = {**demo.settings_record(demo.DemoSettings(seed=args.seed, device="cpu"), str(prompts)),
                          "iterations": args.iterations, "warmup": args.warmup}
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps({k: v for k, v in report.items() if k != "settings"}, indent=2))
    return report


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "train-worker":
        train_worker(*sys.argv[2:])
    else:
        main()
