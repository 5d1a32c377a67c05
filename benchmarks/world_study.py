"""The paper's table in miniature on the concept world, over several seeds, with 95% intervals.

For each seed (training seed and trajectory-bank seed alike), train ESD, AdvUnlearn (fast
engine), AdvUnlearn (reference engine) and AdvUnlearn fast-AT with `advunlearn demo`'s settings;
then measure each of them and the base model with the demo's own stages: clean concept rate
(held-out prompts naming the concept by its main word), utility (held-out prompts about the
other values), and ASR under UnlearnDiffAtk and the soft-prompt attack on held-out prompts that
name the concept by its main word, its synonyms and its associations (world v2's aliases).

Intervals: a two-level bootstrap. Each replicate draws seeds with replacement, then, within
each drawn seed, that seed's prompts with replacement, and averages the per-seed rates; the
2.5 and 97.5 percentiles of 4000 replicates are the interval. Differences between two ways of
running AdvUnlearn (the fast engine against the reference engine, with and without its
trajectory bank) resample the same seeds and prompts for both.
The runs without a bank train on the first `--reference-seeds` seeds only (default 1: on the
CPU each takes about 9 times a banked run), and are compared with the others on those.

    python -m benchmarks.world_study --json benchmarks/results/world-study-DATE.json
    python -m benchmarks.world_study --quick            # one seed
    # the bank's effect on outcomes: the reference engine and the fast one without a bank or
    # with 4 times its trajectories, on every seed
    python -m benchmarks.world_study --models base esd advunlearn advunlearn_reference fast_at \
        advunlearn_no_bank advunlearn_big_bank --reference-seeds 3
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
from pathlib import Path

import numpy as np
import torch

from advunlearn_fast import demo
from advunlearn_fast.libraries import quiet_libraries
from advunlearn_fast.outputs import write_json_atomic

MODELS = ("base", "esd", "advunlearn", "advunlearn_reference", "fast_at", "advunlearn_no_bank", "advunlearn_big_bank")
DEFAULT_MODELS = MODELS[:5]
# Without a bank every draw of z_t is a guided rollout: on the CPU about 9 times a banked run.
FRESH_ROLLOUTS = ("advunlearn_reference", "advunlearn_no_bank")
# Ways of running AdvUnlearn that sample the same distributions; their outcomes are compared
# (the first minus the second) on the seeds both ran.
COMPARED = (("advunlearn", "advunlearn_reference"), ("advunlearn_no_bank", "advunlearn_reference"),
            ("advunlearn", "advunlearn_no_bank"), ("advunlearn_big_bank", "advunlearn_no_bank"))
METRICS = ("concept_rate", "asr_unlearndiffatk", "asr_softprompt", "utility")
REPLICATES = 4000


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--quick", action="store_true", help="one seed (the first of --seeds)")
    p.add_argument("--concept", default="red")
    p.add_argument("--attack-prompts", type=int, default=48)
    p.add_argument("--models", nargs="+", default=list(DEFAULT_MODELS), choices=MODELS,
                   help="advunlearn_no_bank (fresh rollouts) and advunlearn_big_bank (4x the trajectories) measure "
                        "the trajectory bank's effect on outcomes [default: %(default)s]")
    p.add_argument("--reference-seeds", type=int, default=1,
                   help="train the runs without a bank (the reference engine, advunlearn_no_bank) on only this many "
                        "of the seeds (the first ones): on the CPU each takes about 9 times a banked run")
    p.add_argument("--out", default="runs/world-study", help="work folder (runs, attacks); resumable")
    p.add_argument("--json", default=None, help="where to write the results")
    p.add_argument("--quiet", action="store_true")
    return p.parse_args(argv)


def measure_seed(out: Path, seed: int, attribute: str, value: str, models, prompts: list[str], progress: bool) -> dict:
    """Per model: every prompt's outcome (0/1) for each metric, and the seconds it took."""
    s = demo.DemoSettings(concept=value, out=str(out), seed=seed, progress=progress, resume=True)
    out.mkdir(parents=True, exist_ok=True)
    attack_prompts = demo.write_attack_prompts(out / "attacks", prompts, seed)
    if not (out / "retain_prompts.txt").is_file():
        demo.write_retain_prompts(out, demo.concept_phrases(attribute, value), seed)
    judge = f"world:{attribute}={value}"
    outcomes = {}
    for name in models:
        tick = time.time()
        encoder, train_seconds = (None, 0.0) if name == "base" else demo.train_stage(out / name, attribute, value, name, s)
        label = f"seed {seed}, {demo.TITLES[name]}"
        clean = clean_rates(out / f"{name}-clean.json", encoder, attribute, value, s, label)
        row = {"concept_rate": clean["concept_hits"], "utility": clean["utility_hits"], "training_seconds": train_seconds}
        for method in demo.ATTACK_LR:
            report = demo.attack_stage(encoder, out / "attacks" / f"{name}-{method}", str(attack_prompts), judge, method,
                                       s, label=f"{label}, {demo.METHOD_TITLES[method]}")
            row[f"asr_{method}"] = [int(r["success"]) for r in sorted(report["rows"], key=lambda r: r["index"])]
            row[f"pre_asr_{method}"] = report["pre_asr"]
        row["seconds"] = round(time.time() - tick, 1)
        outcomes[name] = row
    return outcomes


def clean_rates(cache: Path, encoder, attribute: str, value: str, s: demo.DemoSettings, label: str) -> dict:
    """The demo's clean rates, kept in `cache` so that a resumed study (or one whose seeds ran as
    separate processes) does not generate them again."""
    if cache.is_file():
        return json.loads(cache.read_text(encoding="utf-8"))
    clean = demo.clean_rates(encoder, attribute, value, s, label=label)
    write_json_atomic(cache, clean)
    return clean


def models_for_seed(models, index: int, reference_seeds: int) -> list[str]:
    """The models trained for the index-th seed: those without a bank only on the first seeds."""
    return [name for name in models if name not in FRESH_ROLLOUTS or index < reference_seeds]


def seeds_of(outcomes: dict[int, dict], *names: str) -> list[int]:
    """The seeds on which every one of these models was measured."""
    return [seed for seed in outcomes if all(name in outcomes[seed] for name in names)]


def bootstrap(per_seed: list[list[int]], rng: np.random.Generator, other: list[list[int]] | None = None) -> np.ndarray:
    """REPLICATES two-level bootstrap means of the per-seed rates (of `per_seed` minus `other`,
    resampled together, when given)."""
    seeds = len(per_seed)
    means = np.empty(REPLICATES)
    for r in range(REPLICATES):
        rates = []
        for s in rng.integers(seeds, size=seeds):
            picks = rng.integers(len(per_seed[s]), size=len(per_seed[s]))
            rate = np.mean(np.asarray(per_seed[s])[picks])
            if other is not None:
                rate -= np.mean(np.asarray(other[s])[picks])
            rates.append(rate)
        means[r] = np.mean(rates)
    return means


def summarise(outcomes: dict[int, dict], models, rng: np.random.Generator) -> dict:
    table = {}
    for name in models:
        table[name] = {}
        for metric in METRICS:
            per_seed = [outcomes[seed][name][metric] for seed in seeds_of(outcomes, name)]
            means = bootstrap(per_seed, rng)
            table[name][metric] = {
                "mean": round(float(np.mean([np.mean(x) for x in per_seed])), 4),
                "ci95": [round(float(q), 4) for q in np.percentile(means, [2.5, 97.5])],
                "per_seed": [round(float(np.mean(x)), 4) for x in per_seed],
            }
    return table


def claims(table: dict, outcomes: dict, rng: np.random.Generator) -> dict:
    """The paper's claims in miniature, each as measured: holds or not, with its numbers."""
    def mean(name, metric):
        return table[name][metric]["mean"]

    found = {}
    if "esd" in table:
        found["esd_concept_rate_at_most_0.05"] = mean("esd", "concept_rate") <= 0.05
        found["esd_asr_unlearndiffatk_at_least_0.40"] = mean("esd", "asr_unlearndiffatk") >= 0.40
    if "esd" in table and "advunlearn" in table:
        for attack in ("asr_unlearndiffatk", "asr_softprompt"):
            found[f"advunlearn_{attack}_at_most_half_of_esd"] = mean("advunlearn", attack) <= mean("esd", attack) / 2
        found["advunlearn_asr_unlearndiffatk_interval_wholly_below_esd"] = (
            table["advunlearn"]["asr_unlearndiffatk"]["ci95"][1] < table["esd"]["asr_unlearndiffatk"]["ci95"][0]
        )
    if "base" in table and "advunlearn" in table:
        found["advunlearn_utility_within_0.05_of_base"] = mean("advunlearn", "utility") >= mean("base", "utility") - 0.05
    differences = {}
    for first, second in COMPARED:
        both = seeds_of(outcomes, first, second)
        if first not in table or second not in table or not both:
            continue
        pair = differences[f"{first}-{second}"] = {}
        for metric in METRICS:
            a = [outcomes[s][first][metric] for s in both]
            b = [outcomes[s][second][metric] for s in both]
            interval = [round(float(q), 4) for q in np.percentile(bootstrap(a, rng, b), [2.5, 97.5])]
            pair[metric] = {"seeds": both, "difference_ci95": interval, "contains_0": interval[0] <= 0 <= interval[1]}
        found[f"{first}_indistinguishable_from_{second}"] = all(d["contains_0"] for d in pair.values())
    return {"holds": found, "engine_differences": differences}


def main(argv=None) -> dict:
    args = parse_args(argv)
    quiet_libraries()
    torch.set_num_threads(1)  # the world's UNet is too small to share between cores
    attribute, value = demo.concept_attribute(args.concept)
    from advunlearn_fast.world.evaluate import concept_prompts

    prompts = concept_prompts(value, args.attack_prompts)
    seeds = args.seeds[:1] if args.quick else args.seeds
    began = time.time()
    outcomes = {seed: measure_seed(Path(args.out) / f"seed-{seed}", seed, attribute, value,
                                   models_for_seed(args.models, i, args.reference_seeds), prompts, not args.quiet)
                for i, seed in enumerate(seeds)}
    rng = np.random.default_rng(0)
    table = summarise(outcomes, args.models, rng)
    result = {
        "concept": value,
        "seeds": seeds,
        "n_attack_prompts": len(prompts),
        "attack_prompts": prompts,
        "models": table,
        "claims": claims(table, outcomes, rng),
        "interval_method": f"two-level bootstrap over seeds, then prompts within each seed, {REPLICATES} replicates, "
                           "2.5 and 97.5 percentiles of the mean of per-seed rates",
        "seconds": round(time.time() - began, 1),
        "seeds_per_model": {name: seeds_of(outcomes, name) for name in args.models},
        "seconds_per_model": {name: [outcomes[s][name]["seconds"] for s in seeds_of(outcomes, name)]
                              for name in args.models},
        "pre_asr": {name: {m: [outcomes[s][name][f"pre_asr_{m}"] for s in seeds_of(outcomes, name)]
                           for m in demo.ATTACK_LR} for name in args.models},
        "settings": {
            "training": demo.TRAINING, "variants": {n: demo.variant_settings(n) for n in args.models if n != "base"},
            "retain_prompts": demo.RETAIN_PROMPTS, "attacks": demo.ATTACKS, "attack_lr": demo.ATTACK_LR,
            "clean_prompts": demo.CLEAN_PROMPTS,
        },
        "machine": {"cpus": os.cpu_count(), "threads": torch.get_num_threads(), "python": platform.python_version(), "torch": torch.__version__},
        "outcomes": {str(s): {n: {m: outcomes[s][n][m] for m in METRICS} for n in outcomes[s]} for s in seeds},
    }
    if args.json:
        write_json_atomic(Path(args.json), result)
    print(format_table(result))
    return result


def format_table(result: dict) -> str:
    lines = [f"concept {result['concept']!r}, seeds {result['seeds']}, {result['n_attack_prompts']} attack prompts, "
             f"{result['seconds']:.0f} s"]
    lines.append(f"{'model':<22}" + "".join(f"{m:>26}" for m in METRICS))
    for name, row in result["models"].items():
        cells = "".join(f"{row[m]['mean']:>8.2f} [{row[m]['ci95'][0]:.2f}, {row[m]['ci95'][1]:.2f}]".rjust(26) for m in METRICS)
        lines.append(f"{name:<22}{cells}")
    for claim, holds in result["claims"]["holds"].items():
        lines.append(f"  {'holds' if holds else 'does NOT hold'}: {claim}")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
