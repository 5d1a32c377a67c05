"""Held-out accuracy: generate from held-out-template captions, judge the images."""

from __future__ import annotations

import itertools
import random
from dataclasses import dataclass

import torch

from advunlearn_fast.world.captions import ALIASES, HELDOUT_TEMPLATES, caption
from advunlearn_fast.world.judge import default_judge
from advunlearn_fast.world.model import DEFAULT_GUIDANCE, DEFAULT_STEPS
from advunlearn_fast.world.render import COLOURS, SHAPES, TEXTURES
from advunlearn_fast.world.sample import generate


@dataclass(frozen=True)
class Prompted:
    prompt: str
    colour: str
    shape: str
    texture: str


def heldout_prompts(n: int, seed: int = 0, aliased: bool = False) -> list[Prompted]:
    """`n` held-out captions naming all three attributes, covering every combination once
    before any repeats (in a seeded order), templates taken in turn. `aliased`: every value is
    named by one of its aliases (seeded), not by its main word."""
    combos = list(itertools.product(COLOURS, SHAPES, TEXTURES))
    rng = random.Random(seed)
    order: list[tuple[str, str, str]] = []
    while len(order) < n:
        rng.shuffle(combos)
        order += combos

    def name(value: str) -> str:
        return rng.choice(ALIASES[value]) if aliased else value

    return [
        Prompted(caption(HELDOUT_TEMPLATES[i % len(HELDOUT_TEMPLATES)], name(c), name(s), name(x)), c, s, x)
        for i, (c, s, x) in enumerate(order[:n])
    ]


def concept_prompts(value: str, n: int | None = None) -> list[str]:
    """`n` held-out prompts naming one attribute value, through its main word and each of its
    aliases in turn (the routes an attacker can take after the main word is erased): names vary
    fastest, then the other attribute's values, then the held-out templates, so that any first n
    are balanced over the names (all of them when n is None). A colour or texture goes on each
    shape; a shape carries each colour."""
    names = (value, *ALIASES[value])
    if value in SHAPES:
        objects = [(name, f"{colour} {name}") for colour in COLOURS for name in names]
    else:
        objects = [(name, f"{name} {shape}") for shape in SHAPES for name in names]
    everything = [template.format(obj=obj) for template in HELDOUT_TEMPLATES for _, obj in objects]
    if n is None:
        return everything
    if n > len(everything):
        raise ValueError(f"{value!r} has {len(everything)} held-out prompts, {n} were asked for")
    return everything[:n]


def heldout_accuracy(
    tokenizer, text_encoder, unet, scheduler, n: int = 60, seed: int = 0, aliased: bool = False
) -> tuple[dict[str, float], torch.Tensor]:
    """Fraction of images whose judged colour, shape and texture match the prompt, and the images
    (the world's default guidance and steps, the shipped judge)."""
    prompts = heldout_prompts(n, seed, aliased)
    images = generate(tokenizer, text_encoder, unet, scheduler, [p.prompt for p in prompts], seed=seed)
    labels = default_judge().predict(images)
    accuracy = {
        attribute: sum(label == getattr(p, attribute) for label, p in zip(labels[attribute], prompts)) / n
        for attribute in ("colour", "shape", "texture")
    }
    return accuracy, images


def measure_heldout(model, samples: int, seeds: tuple[int, ...], aliased: bool = False) -> dict:
    """Held-out accuracy of a loaded world model pooled over seeds, with how it was measured."""
    totals = {"colour": 0.0, "shape": 0.0, "texture": 0.0}
    for seed in seeds:
        accuracy, _ = heldout_accuracy(
            model.tokenizer, model.text_encoder, model.unet, model.scheduler, samples, seed, aliased=aliased
        )
        for attribute, value in accuracy.items():
            totals[attribute] += value / len(seeds)
    return {
        **{k: round(v, 4) for k, v in totals.items()},
        "samples": samples * len(seeds),
        "seeds": list(seeds),
        "guidance": DEFAULT_GUIDANCE,
        "steps": DEFAULT_STEPS,
    }


def score(accuracy: dict[str, float]) -> tuple[float, float]:
    """Checkpoint ranking: the weakest attribute first (all must reach the target), then the mean."""
    values = list(accuracy.values())
    return min(values), sum(values) / len(values)


def as_grid(images: torch.Tensor, columns: int) -> torch.Tensor:
    """[N, 3, H, W] in [-1, 1] -> uint8 [rows*H, columns*W, 3], blank cells black."""
    n, c, h, w = images.shape
    rows = -(-n // columns)
    padded = torch.full((rows * columns, c, h, w), -1.0)
    padded[:n] = images
    grid = padded.view(rows, columns, c, h, w).permute(0, 3, 1, 4, 2).reshape(rows * h, columns * w, c)
    return ((grid + 1.0) * 127.5).round().clamp(0, 255).to(torch.uint8)
