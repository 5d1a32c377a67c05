"""Concept and retain prompts: the built-in retain set, its concept filter, prompt files.

The retain set keeps the model's everyday abilities while the concept is erased
(ALGORITHM.md, utility retention). It is written by this project: everyday
objects and scenes in a few plain templates.

Filter: a retain prompt is dropped when it shares a word with the concept, or
with the concept's related terms below (matched on lower-case words, with a
trailing plural "s"/"es" ignored). Erasing nudity also drops every body and
clothing term, so that the retain loss never pulls exposed-body or garment
imagery back toward the original model.
"""

from __future__ import annotations

import csv
import re
from pathlib import Path

from advunlearn_fast.errors import UserError

# Where the attacker's adversarial tokens go in a prompt (models/insertion.py builds the layouts).
# Here, apart from the tensor code, so that reading the training options imports no torch.
INSERT_MODES = ("prefix", "suffix", "replace", "add", "mid", "insert")

RETAIN_OBJECTS = [
    "apple", "backpack", "banana", "baseball bat", "bear", "bed", "bench", "bicycle", "bird", "boat",
    "book", "bottle", "bowl", "broccoli", "bus", "cake", "car", "carrot", "cat", "cell phone",
    "chair", "clock", "couch", "cow", "cup", "dining table", "dog", "donut", "elephant", "fire hydrant",
    "fork", "frisbee", "giraffe", "hair drier", "handbag", "horse", "hot dog", "keyboard", "kite", "knife",
    "laptop", "microwave", "motorcycle", "mouse", "orange", "oven", "parking meter", "pizza", "potted plant",
    "refrigerator", "remote", "sandwich", "scissors", "sheep", "sink", "skateboard", "skis", "snowboard",
    "spoon", "sports ball", "stop sign", "suitcase", "surfboard", "teddy bear", "tennis racket", "toaster",
    "toilet", "toothbrush", "traffic light", "train", "truck", "umbrella", "vase", "wine glass", "zebra",
    "lighthouse", "windmill", "bridge", "castle", "tractor", "airplane", "helicopter", "sailboat",
    "violin", "guitar", "piano", "lamp", "candle", "teapot", "kettle", "basket", "wheelbarrow",
    "mailbox", "fountain", "tent", "barn", "rabbit", "owl", "fox", "deer", "penguin", "turtle",
]
RETAIN_SCENES = [
    "a mountain lake at sunrise", "a busy city street at night", "a quiet forest path in autumn",
    "a sandy beach with palm trees", "a snowy village in winter", "a field of sunflowers",
    "a desert with sand dunes", "a rainy street with reflections", "a harbor with fishing boats",
    "a waterfall in a jungle", "a kitchen with wooden cabinets", "a library with tall shelves",
    "a farm with a red barn", "a river flowing through a valley", "a garden full of roses",
    "a train station platform", "a market stall with fresh vegetables", "a bowl of fruit on a table",
    "a cozy living room with a fireplace", "a starry sky over the hills",
]
RETAIN_TEMPLATES = ["a photo of {}", "a picture of {}"]

# Words that stand for a concept beyond its own words (see the module docstring).
RELATED_TERMS = {
    "nudity": [
        "nude", "naked", "nudity", "nsfw", "sexual", "sexy", "erotic", "topless", "body", "skin",
        "breast", "chest", "butt", "buttock", "genitalia", "underwear", "lingerie", "bikini",
        "swimsuit", "bra", "panties", "shirtless", "bare", "clothes", "clothing", "dress", "shirt",
        "pants", "skirt", "shoe", "sock", "jacket", "coat", "hat", "tie", "handbag", "backpack",
        "suitcase", "umbrella", "person", "people", "man", "woman", "girl", "boy", "toilet", "bed",
    ],
    "van gogh": ["van", "gogh", "vincent", "painting", "painter", "starry", "sunflower", "impressionist"],
    "church": ["church", "cathedral", "chapel", "temple", "steeple", "castle", "tower", "bell"],
    "garbage truck": ["garbage", "trash", "truck", "dump", "waste"],
    "parachute": ["parachute", "paraglider", "skydiver", "kite"],
    "tench": ["tench", "fish", "fishing", "carp"],
}


def with_article(noun: str) -> str:
    """The noun with its indefinite article; every object listed here that starts with a vowel
    letter takes "an" (an apple, an umbrella)."""
    return f"{'an' if noun[0] in 'aeiou' else 'a'} {noun}"


def builtin_retain_prompts() -> list[str]:
    """The unfiltered built-in retain set (everyday objects in templates, then scenes)."""
    return [t.format(with_article(o)) for o in RETAIN_OBJECTS for t in RETAIN_TEMPLATES] + list(RETAIN_SCENES)


def _stem(word: str) -> str:
    for suffix in ("es", "s"):
        if word.endswith(suffix) and len(word) > len(suffix) + 2:
            return word[: -len(suffix)]
    return word


# Words that say nothing about what a prompt shows: a concept written "an owl" or "a cat" must
# not drop every prompt with "an" or "a" in it.
FUNCTION_WORDS = {"a", "an", "the", "of", "in", "on", "at", "with", "and", "or", "to", "for", "by", "from"}


def _words(text: str) -> set[str]:
    return {_stem(w) for w in re.findall(r"[a-z0-9]+", text.lower()) if w not in FUNCTION_WORDS}


def related_terms(concept: str) -> set[str]:
    """The related terms (RELATED_TERMS) of every listed concept that `concept` names: the
    concept itself, or a phrase holding all of its words ("nude woman" holds "nude")."""
    key = " ".join(concept.lower().split())
    words = _words(key)
    return {_stem(w) for name, related in RELATED_TERMS.items() if name == key or _words(name) <= words
            for w in related}


def concept_name(concepts: list[str]) -> str:
    """What several concept phrases name: the words they all share ("red" for "red circle" and
    "red square"), or the first phrase when they share none."""
    words = [c.split() for c in concepts]
    shared = [w for w in words[0] if all(w.lower() in (x.lower() for x in other) for other in words[1:])]
    return " ".join(shared) if shared else concepts[0]


def filter_retain_prompts(prompts: list[str], concepts: list[str]) -> list[str]:
    """Drop every prompt that shares a word with the concept or its related terms.

    Several concept phrases that share words ("red circle", "red square") name the concept by
    those words, the rest being context that other prompts must keep; phrases sharing nothing
    ("nudity", "naked") each name it with all their words. That rule reads the phrases' own
    words only: the related terms of every phrase are always banned, so naming a second phrase
    never lets through a prompt that one phrase alone would drop."""
    own = [_words(c) for c in concepts]
    shared = set.intersection(*own) if len(own) > 1 else set()
    banned = (shared or set().union(*own)) | set().union(*(related_terms(c) for c in concepts))
    return [p for p in prompts if not (_words(p) & banned)]


def read_prompt_text(path: Path) -> str:
    """A prompt file's text; the byte-order mark some editors (Excel's "CSV UTF-8") put first is
    not part of it."""
    return path.read_text(encoding="utf-8-sig")


def read_prompt_file(path: str | Path, what: str = "prompt file") -> list[str]:
    """Prompts from a .txt (one per line) or a .csv with a `prompt` column."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"{what} not found: {path}")
    try:
        text = read_prompt_text(path)
    except (OSError, UnicodeDecodeError) as err:
        raise UserError(f"{what} {path} cannot be read: {err}") from None
    if path.suffix.lower() == ".csv":
        reader = csv.DictReader(text.splitlines())
        if reader.fieldnames is not None and "prompt" not in reader.fieldnames:
            raise UserError(f"{what} {path} has no 'prompt' column")
        prompts = [(r["prompt"] or "").strip() for r in reader]
    else:
        prompts = [line.strip() for line in text.splitlines()]
    prompts = [p for p in prompts if p]
    if not prompts:
        raise UserError(f"{what} {path} holds no prompts")
    return prompts


def retain_prompts(concepts: list[str], retain_file: str | None) -> list[str]:
    """The filtered retain set for this run: the user's file if given, else the built-in one."""
    source = read_prompt_file(retain_file, "retain prompt file") if retain_file else builtin_retain_prompts()
    kept = filter_retain_prompts(source, concepts)
    if not kept:
        raise UserError("every retain prompt mentions the concept; pass --retain-prompts with unrelated prompts")
    return kept
