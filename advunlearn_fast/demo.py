"""`advunlearn demo`: erase -> attack -> measure on the shipped concept world, in minutes on a CPU.

Three text encoders of the world model are compared: the base model's own, ESD (the
training loop with `--attack none`) and AdvUnlearn (the same loop with the soft-prompt
attacker). Each is measured for
- concept rate: fraction of clean held-out prompts naming the concept whose image the world
  judge labels with it;
- ASR under the soft-prompt attack and under UnlearnDiffAtk (EVALUATION.md's definition,
  `advunlearn attack` itself, on the concept's default world prompt set);
- utility: fraction of held-out prompts NOT naming the concept whose image has the prompted
  colour and shape (and the concept's attribute, when that is the texture).
Every stage writes into OUT and `--resume` continues a stopped demo from its finished stages.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path

import torch
from tqdm.auto import tqdm

from advunlearn_fast.errors import UserError, notice
from advunlearn_fast.outputs import check_output_path, write_json_atomic

MODELS = ("base", "esd", "advunlearn")
TITLES = {"base": "base model", "esd": "ESD", "advunlearn": "AdvUnlearn", "advunlearn_reference": "AdvUnlearn (reference engine)",
          "fast_at": "AdvUnlearn fast-AT", "advunlearn_no_bank": "AdvUnlearn (fresh rollouts)",
          "advunlearn_big_bank": "AdvUnlearn (4x bank)"}
METHOD_TITLES = {"softprompt": "soft-prompt attack", "unlearndiffatk": "UnlearnDiffAtk"}
DEMO_JSON = "demo.json"

# The published settings (ALGORITHM.md) scaled to a 2-layer, 64-wide encoder and 16x16 images:
# the same loop and losses, 20 DDIM steps (the world's sampler), and the learning rate and retain
# weight that erased the concept while keeping the other colours and shapes on world v2
# (benchmarks/README.md, "How the settings were found"): a heavier retain weight left textured red
# objects red, the published 0.3 cost half the utility.
TRAINING = dict(
    model="world", layers="all", iterations=400, lr=5e-3, ddim_steps=20, retain_batch=5, retain_weight=1.0,
    start_guidance=3.0, negative_guidance=1.0, save_every=100, bank_size=16, retain_bank_size=2,
)
# Retain prompts drawn from the world's training captions that do not name the concept: enough
# to hold the other colours and shapes in place, few enough to keep their trajectory bank's
# build a small part of the demo.
RETAIN_PROMPTS = 96
# AdvUnlearn's attacker, scaled likewise: 3 adversarial tokens (the paper's budget for objects
# and styles), 10 attack steps at 1e-2 every iteration after a warm-up of plain ESD, each round
# from random tokens as in the published runs. Tokens go after the prompt (suffix): on the
# world's ESD a prefix attack never brought red back while a suffix one did (benchmarks/README.md),
# so that is where the defender must be trained.
ADVERSARIAL = dict(attack="pgd", warmup=50, attack_steps=10, attack_lr=1e-2, adv_tokens=3, attack_init="random",
                   insert="suffix")
# The evaluation attacks: 3 suffix tokens, 5 timestep blocks (100, 300, ..., 900) of 40 Adam steps;
# the soft-prompt attack at lr 0.1, the stronger of the rates tried on the world's ESD
# (benchmarks/README.md).
ATTACKS = dict(adv_tokens=3, timesteps=5, steps_per_timestep=40, insert="suffix")
ATTACK_LR = {"softprompt": 0.1, "unlearndiffatk": 0.01}
ATTACK_PROMPTS = 8  # the first of the concept's held-out prompts through its main word and aliases (concept_prompts)
CLEAN_PROMPTS = 120  # held-out prompts drawn for the clean concept rate and utility (every combination twice)


@dataclass
class DemoSettings:
    concept: str = "red"
    out: str = "advunlearn-demo"
    json_path: str | None = None
    seed: int = 0
    device: str = "cpu"
    resume: bool = False
    progress: bool = True


class Stages:
    """One line per stage of a long run, numbered, so that a user sees what runs and how far along."""

    def __init__(self, total: int, progress: bool):
        self.total, self.done, self.progress = total, 0, progress

    def start(self, what: str) -> None:
        self.done += 1
        if self.progress:
            notice(f"demo [{self.done}/{self.total}] {what}")


def concept_attribute(concept: str) -> tuple[str, str]:
    """('colour', 'red') for the concept 'red': demo concepts are single world attribute values."""
    from advunlearn_fast.world.judge import ATTRIBUTES

    value = " ".join(concept.lower().split())
    for attribute, values in ATTRIBUTES.items():
        if value in values:
            return attribute, value
    choices = ", ".join(v for values in ATTRIBUTES.values() for v in values)
    raise UserError(f"--concept {concept!r} is not a concept of the world; choose one of {choices}")


def run_demo(s: DemoSettings) -> dict:
    attribute, value = concept_attribute(s.concept)
    out = Path(s.out)
    check_output_path(s.out, "--out")
    if out.is_dir() and any(out.iterdir()) and not s.resume:
        raise UserError(f"--out {out} is not empty; pass --resume to continue a demo there or choose another folder")
    out.mkdir(parents=True, exist_ok=True)
    began = time.time()

    from advunlearn_fast.world.evaluate import concept_prompts

    judge = f"world:{attribute}={value}"
    attack_prompts = write_attack_prompts(out / "attacks", concept_prompts(value, ATTACK_PROMPTS), s.seed)
    if not (out / "retain_prompts.txt").is_file():
        write_retain_prompts(out, concept_phrases(attribute, value), s.seed)
    stages = Stages(2 + len(MODELS) * (1 + len(ATTACK_LR)), s.progress)
    encoders = {"base": None}
    train_seconds = {"base": 0.0}
    for name in MODELS[1:]:
        stages.start(f"{TITLES[name]}: training")
        encoders[name], train_seconds[name] = train_stage(out / name, attribute, value, name, s)

    results, reports = {}, {}
    for name in MODELS:
        tick = time.time()
        stages.start(f"{TITLES[name]}: concept rate and utility on clean prompts")
        clean = clean_rates(encoders[name], attribute, value, s, label=TITLES[name])
        reports[name] = {}
        for method in ATTACK_LR:
            stages.start(f"{TITLES[name]}: {METHOD_TITLES[method]} on {ATTACK_PROMPTS} prompts")
            label = f"{TITLES[name]}, {METHOD_TITLES[method]}"
            reports[name][method] = attack_stage(encoders[name], out / "attacks" / f"{name}-{method}",
                                                 str(attack_prompts), judge, method, s, label)
        asr = reports[name]
        results[name] = {
            "concept_rate": clean["concept_rate"],
            "chance_rate": clean["chance_rate"],
            "asr_softprompt": asr["softprompt"]["asr"],
            "asr_unlearndiffatk": asr["unlearndiffatk"]["asr"],
            "utility": clean["utility"],
            "seconds": round(train_seconds[name] + time.time() - tick, 1),
            "training_seconds": round(train_seconds[name], 1),
            "samples": {"concept_rate": clean["n_concept"], "utility": clean["n_utility"], "asr": asr["softprompt"]["n"]},
        }
    report = {
        "concept": value,
        "judge": judge,
        **results,
        "checks": expectations(results),
        "seconds": round(time.time() - began, 1),
        "settings": settings_record(s, str(attack_prompts)),
    }
    # demo.json last: its presence says the demo finished.
    demo_grid(out, reports).save(out / "demo.png")
    if s.json_path:
        write_json_atomic(Path(s.json_path), report)
    write_json_atomic(out / DEMO_JSON, report)
    return report


def concept_phrases(attribute: str, value: str) -> list[str]:
    """The phrases erased, one sampled per iteration: the concept on every object of the world,
    without and with each texture word ("red circle", "solid red circle", ..., "dotted red
    cross"). The bare word alone left much of the red in held-out captions, and phrases without
    texture words left textured red objects red on world v2 (benchmarks/README.md); the phrases'
    shared word still names the concept, so other-coloured circles stay in the retain set."""
    from advunlearn_fast.world.judge import ATTRIBUTES

    textures = ("", *(f"{texture} " for texture in ATTRIBUTES["texture"]))
    if attribute == "colour":
        return [f"{texture}{value} {shape}" for shape in ATTRIBUTES["shape"] for texture in textures]
    if attribute == "shape":
        return [f"{texture}{colour} {value}" for colour in ATTRIBUTES["colour"] for texture in textures]
    return [f"{value} {colour} {shape}" for colour in ATTRIBUTES["colour"] for shape in ATTRIBUTES["shape"]]


def variant_settings(name: str) -> dict:
    """What each trained model adds to TRAINING: ESD is the loop without attack; the AdvUnlearn
    variants share ADVERSARIAL (fast engine, the reference engine, fast-AT's sign steps, and the
    fast engine with fresh rollouts or a bank of 4 times as many trajectories: how much the bank
    moves the outcome)."""
    if name == "esd":
        return {"attack": "none", "warmup": 0}
    extra = {"advunlearn": {}, "advunlearn_reference": {"engine": "reference"}, "fast_at": {"attack": "fast-at"},
             "advunlearn_no_bank": {"bank": False},
             "advunlearn_big_bank": {"bank": True, "bank_size": 4 * TRAINING["bank_size"],
                                     "retain_bank_size": 4 * TRAINING["retain_bank_size"]}}[name]
    return {**ADVERSARIAL, **extra}


def training_config(run: Path, attribute: str, value: str, name: str, s: DemoSettings):
    from advunlearn_fast.training.config import TrainConfig

    # The seed drives the run and its trajectory bank alike: seeds of a study differ in both.
    return TrainConfig(**{**TRAINING, **variant_settings(name)}, concepts=concept_phrases(attribute, value), out=str(run),
                       seed=s.seed, bank_seed=s.seed, device=s.device,
                       retain_prompts=str(run.parent / "retain_prompts.txt")).validate()


def prompt_seeds(seed: int, count: int) -> list[int]:
    """One noise seed per prompt, disjoint between run seeds: with one seed for all, every prompt
    of a run starts from the same noise, and its outcomes move together (a noise that draws red
    unprompted breaks them all)."""
    return [seed * count + i for i in range(count)]


def write_attack_prompts(folder: Path, prompts: list[str], seed: int) -> Path:
    """The attack prompts as a .csv giving each prompt its own noise seed (`prompt_seeds`)."""
    import csv

    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "attack_prompts.csv"
    with open(path, "w", encoding="utf-8", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["prompt", "evaluation_seed"])
        writer.writerows(zip(prompts, prompt_seeds(seed, len(prompts))))
    return path


def write_retain_prompts(out: Path, concepts: list[str], seed: int) -> None:
    """A seeded sample of the world's retain captions unrelated to the concept (same for both runs):
    none sharing the phrases' common word, the `related` filter's rule."""
    import random

    from advunlearn_fast.prompts import filter_retain_prompts, read_prompt_file
    from advunlearn_fast.world import WORLD_MODEL_DIR

    kept = filter_retain_prompts(read_prompt_file(WORLD_MODEL_DIR / "retain_prompts.txt"), concepts, "related")
    chosen = random.Random(seed).sample(kept, min(RETAIN_PROMPTS, len(kept)))
    (out / "retain_prompts.txt").write_text("\n".join(chosen) + "\n", encoding="utf-8")


def train_stage(run: Path, attribute: str, value: str, name: str, s: DemoSettings) -> tuple[str, float]:
    """Train (or, resumed, finish or reuse) one encoder; its run folder and training seconds."""
    from advunlearn_fast.training.trainer import train

    summary_file = run / "run.json"
    summary = json.loads(summary_file.read_text(encoding="utf-8")) if summary_file.is_file() else None
    if summary is None or summary.get("status") != "complete":
        cfg = training_config(run, attribute, value, name, s)
        cfg.resume = any((run / "checkpoints").glob("step-*/training_state.pt"))
        if not cfg.resume and run.exists():
            import shutil

            shutil.rmtree(run)  # a run stopped before its first checkpoint: nothing to keep
        summary = train(cfg, progress=s.progress)
    return str(run), float(summary.get("seconds", 0.0))


def attack_stage(encoder: str | None, out: Path, prompts: str, judge: str, method: str, s: DemoSettings,
                 label: str | None = None) -> dict:
    from advunlearn_fast.evaluation.robustness import AttackSettings, run_evaluation

    # Every run attacks towards the same original-model images: the first run generates them (into
    # its own folder) and later runs read them there; a run without that folder generates its own.
    # The first run, resumed, keeps generating into its own folder, as it started.
    targets = out.parent / f"{MODELS[0]}-{next(iter(ATTACK_LR))}" / "targets"
    shared = targets.is_dir() and targets.parent != out
    settings = AttackSettings(
        model="world", encoder=encoder, prompts=prompts, judge=judge, out=str(out), method=method,
        attack_lr=ATTACK_LR[method], seed=s.seed, device=s.device, resume=(out / "report.json").is_file(),
        targets=str(targets) if shared else None, **ATTACKS,
    )
    return run_evaluation(settings, progress=s.progress, label=label)


def clean_rates(encoder: str | None, attribute: str, value: str, s: DemoSettings, label: str | None = None) -> dict:
    """Concept rate on held-out prompts naming the concept, utility on those that do not; with
    every prompt's outcome (`concept_hits`, `utility_hits`) for studies that resample them."""
    from advunlearn_fast.device import cpu_policy, resolve_device
    from advunlearn_fast.evaluation.generation import build_pipeline, generate
    from advunlearn_fast.world.evaluate import heldout_prompts
    from advunlearn_fast.world.judge import default_judge

    bar = tqdm(total=2, desc=f"{label or 'clean prompts'}: clean and empty prompts", disable=not s.progress)
    pipe = build_pipeline("world", encoder, resolve_device(s.device))
    cpu_policy(pipe.unet, pipe.device, s.device)
    prompts = heldout_prompts(CLEAN_PROMPTS, s.seed)
    seeds = prompt_seeds(s.seed, len(prompts))
    images = generate(pipe, [p.prompt for p in prompts], seeds, [pipe.default_guidance] * len(prompts),
                      pipe.default_steps, batch_size=len(prompts))
    labels = default_judge().predict(images)
    bar.update(1)
    # The floor an erasure that leaves the concept's attribute to chance would reach: how often
    # the model draws the value from the empty prompt (unguided), for the same seeds.
    empty = generate(pipe, [""] * len(prompts), seeds, [1.0] * len(prompts), pipe.default_steps, batch_size=len(prompts))
    chance = sum(label == value for label in default_judge().predict(empty)[attribute]) / len(prompts)
    bar.update(1)
    bar.close()
    checked = {"colour", "shape", attribute}
    concept_hits, utility_hits = [], []
    for i, p in enumerate(prompts):
        if getattr(p, attribute) == value:
            concept_hits.append(labels[attribute][i] == value)
        else:
            utility_hits.append(all(labels[a][i] == getattr(p, a) for a in checked))
    return {
        "concept_rate": sum(concept_hits) / len(concept_hits), "n_concept": len(concept_hits), "chance_rate": chance,
        "utility": sum(utility_hits) / len(utility_hits), "n_utility": len(utility_hits),
        "concept_hits": concept_hits, "utility_hits": utility_hits,
    }


def expectations(results: dict) -> dict:
    """The paper's claims as thresholds on the concept world, each checked rather than assumed: ESD
    erases the concept (clean rate <= 5%) but an attack brings it back (ASR >= 25%); AdvUnlearn at
    most halves ESD's ASR under each attack and keeps utility within 10 points of the base model."""
    base, esd, adv = results["base"], results["esd"], results["advunlearn"]
    checks = {
        "esd_concept_rate_at_most_0.05": esd["concept_rate"] <= 0.05,
        "esd_asr_at_least_0.25": max(esd["asr_softprompt"], esd["asr_unlearndiffatk"]) >= 0.25,
    }
    for attack in ("softprompt", "unlearndiffatk"):
        key = f"asr_{attack}"
        # Against an ESD the attack never breaks, "at most half" would hold vacuously: not measured.
        checks[f"advunlearn_{key}_at_most_half_of_esd"] = adv[key] <= esd[key] / 2 if esd[key] > 0 else None
    checks["advunlearn_utility_within_0.10_of_base"] = adv["utility"] >= base["utility"] - 0.10
    return checks


def settings_record(s: DemoSettings, attack_prompts: str) -> dict:
    return {
        "training": {**TRAINING, "retain_prompts": RETAIN_PROMPTS}, "advunlearn": ADVERSARIAL, "esd": {"attack": "none"},
        "attacks": {**ATTACKS, "attack_lr": ATTACK_LR, "prompts": ATTACK_PROMPTS, "prompt_file": str(attack_prompts)},
        "clean_prompts": CLEAN_PROMPTS, "seed": s.seed, "device": s.device,
        "threads": torch.get_num_threads(),
    }


def demo_grid(out: Path, reports: dict, columns: int = 4, scale: int = 4):
    """Rows base / ESD / AdvUnlearn, labelled; for the first prompts, a group of three images under
    the prompt: clean, soft-prompt attacked and UnlearnDiffAtk attacked (the last judged image of
    each attack; the clean one when the attack was not needed). `reports[model][method]` are the
    attack reports."""
    from PIL import Image, ImageDraw

    first_report = reports[MODELS[0]]["softprompt"]
    columns = min(columns, first_report["n"])
    prompts = {row["index"]: row["prompt"] for row in first_report["rows"]}
    cells = []
    for name in MODELS:
        row = []
        for index in range(columns):
            row.append(out / "attacks" / f"{name}-softprompt" / "images" / f"{index:04d}-pre.png")
            for method in ATTACK_LR:
                row.append(attacked_image(out / "attacks" / f"{name}-{method}", reports[name][method], index))
        cells.append(row)
    first = Image.open(cells[0][0])
    w, h = first.width * scale, first.height * scale
    gap, group_gap = scale, 4 * scale
    line = 12  # the default bitmap font's line height
    margin, header = 84, 3 * line + 2
    group_width = 3 * (w + gap)
    grid = Image.new("RGB", (margin + columns * (group_width + group_gap), header + len(cells) * (h + gap)), "white")
    draw = ImageDraw.Draw(grid)
    for g in range(columns):
        x = margin + g * (group_width + group_gap)
        draw.text((x, 0), _fit(draw, prompts.get(g, ""), group_width), fill="black")
        for c, title in enumerate(("clean", "soft prompt", "UnlearnDiffAtk")):
            draw.text((x + c * (w + gap), line + 2 + (c % 2) * line), _fit(draw, title, 2 * w), fill="dimgray")
    for r, row in enumerate(cells):
        y = header + r * (h + gap)
        draw.text((2, y + h // 2 - line // 2), TITLES[MODELS[r]], fill="black")
        for c, path in enumerate(row):
            image = Image.open(path).convert("RGB").resize((w, h), Image.NEAREST)
            grid.paste(image, (margin + (c // 3) * (group_width + group_gap) + (c % 3) * (w + gap), y))
    return grid


def _fit(draw, text: str, width: int) -> str:
    """`text`, cut with an ellipsis to fit `width` pixels."""
    if draw.textlength(text) <= width:
        return text
    while text and draw.textlength(text + "...") > width:
        text = text[:-1]
    return text + "..."


def attacked_image(report_dir: Path, report: dict, index: int) -> Path:
    row = next(r for r in report["rows"] if r["index"] == index)
    if row["attack_scores"]:
        return report_dir / "images" / f"{index:04d}-t{row['attack_scores'][-1]['t']:04d}.png"
    return report_dir / "images" / f"{index:04d}-pre.png"


def format_table(report: dict) -> str:
    lines = [
        f"concept {report['concept']!r} ({report['judge']}), {report['seconds']:.0f} s",
        f"{'model':<12}{'concept rate':>14}{'(chance)':>10}{'ASR soft-prompt':>17}{'ASR UnlearnDiffAtk':>20}"
        f"{'utility':>9}{'seconds':>9}",
    ]
    for name in MODELS:
        r = report[name]
        lines.append(f"{name:<12}{r['concept_rate']:>14.2f}{r['chance_rate']:>10.2f}{r['asr_softprompt']:>17.2f}{r['asr_unlearndiffatk']:>20.2f}"
                     f"{r['utility']:>9.2f}{r['seconds']:>9.0f}")
    verdicts = {True: "holds", False: "does NOT hold", None: "not measurable (the attack never broke ESD)"}
    lines += [f"  {verdicts[ok]}: {name}" for name, ok in report["checks"].items()]
    return "\n".join(lines)
