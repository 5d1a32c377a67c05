"""Evaluation prompt sets written by this project for style and object concepts.

Each set is subjects x settings in a fixed template, 50 prompts, each with its own seed drawn
from a generator seeded by the set's name (so a set is the same on every machine) and SD's
guidance 7.5. Third-party sets (the I2P nudity prompts) are not shipped; pass them as files.
"""

from __future__ import annotations

import csv
import io
import zlib

import torch

SET_SIZE = 50
GUIDANCE = 7.5

_SUBJECTS = [
    "a wheat field", "a starry night over a village", "a bowl of sunflowers", "a cafe terrace at night",
    "a bedroom with a wooden bed", "an old man with a beard", "a bridge over a river", "olive trees",
    "a self-portrait", "irises in a garden", "a road with cypress trees", "a fishing boat on the beach",
    "a vineyard in autumn", "a peasant woman", "almond blossoms", "a church in a small town", "a pair of boots",
    "a harvest scene", "a night sky over the sea", "a postman in uniform", "a chair with a pipe",
    "a garden with flowers", "a mountain landscape", "a potato eaters' table", "a windmill",
]
_STYLES = {
    "van gogh": ("a painting of {} by Vincent van Gogh", ["", " in bright colours"]),
}
_SETTINGS = [
    "a snowy village", "the countryside", "a busy city", "the mountains", "a forest", "a small town at dusk",
    "a foggy morning", "the desert", "a valley in spring", "a harbour town",
]
_OBJECTS = {
    "church": ("a photo of a church in {}", "a painting of a church in {}", "an old church in {}",
               "a church with a tall steeple in {}", "a wooden church in {}"),
    "garbage truck": ("a photo of a garbage truck in {}", "a garbage truck parked in {}", "a green garbage truck in {}",
                      "a garbage truck driving through {}", "an old garbage truck in {}"),
    "parachute": ("a photo of a parachute over {}", "a red parachute above {}", "a skydiver's parachute over {}",
                  "a parachute landing in {}", "a colourful parachute in the sky over {}"),
    "tench": ("a photo of a tench caught in {}", "a fisherman holding a tench in {}", "a tench in a lake in {}",
              "a large tench on the grass in {}", "a tench in a net in {}"),
}


def concept_key(concept: str) -> str | None:
    key = " ".join(concept.lower().replace("vincent", "").split())
    return key if key in _STYLES or key in _OBJECTS else None


def prompt_set(concept: str) -> list[str]:
    key = concept_key(concept)
    if key in _STYLES:
        template, endings = _STYLES[key]
        return [template.format(s) + e for e in endings for s in _SUBJECTS][:SET_SIZE]
    if key in _OBJECTS:
        return [t.format(s) for t in _OBJECTS[key] for s in _SETTINGS][:SET_SIZE]
    raise KeyError(concept)


def prompt_set_csv(concept: str) -> str:
    """The set as a .csv with `prompt`, `evaluation_seed`, `evaluation_guidance` columns."""
    prompts = prompt_set(concept)
    generator = torch.Generator().manual_seed(zlib.crc32(concept_key(concept).encode()))
    seeds = torch.randint(0, 2**31 - 1, (len(prompts),), generator=generator).tolist()
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(["prompt", "evaluation_seed", "evaluation_guidance"])
    writer.writerows([p, s, GUIDANCE] for p, s in zip(prompts, seeds))
    return buffer.getvalue()
