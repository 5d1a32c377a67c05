"""Concept and retain prompts: the built-in retain set, its concept filters, prompt files.

The retain set keeps the model's everyday abilities while the concept is erased
(ALGORITHM.md, utility retention). The built-in one is the authors' own
(`data/coco_object_retain.csv`, unmodified; `data/NOTICE.md` says where it comes from): 243
prompts "a photo of <object>", six of them twice, which their loader, drawing rows, draws twice
as often; so do we. They filtered it once, offline, for nudity, and never filter it at run time.

Filters (`--retain-filter`), for the built-in set and a user's file alike:
- phrase (default): a prompt is dropped when it holds a concept phrase as whole consecutive
  words, case ignored ("a photo of a church at night" for church). On the built-in set it drops
  nothing for the published concepts, so the default trains on the authors' set; for a concept
  that names one of its objects ("cat"), the retain loss would otherwise pull the concept back.
- related: a prompt is dropped when it shares a word with the concept, or with the concept's
  related terms below (lower-case words, a trailing plural "s"/"es" ignored). Erasing nudity then
  also drops every body and clothing term, so that the retain loss never pulls exposed-body or
  garment imagery back toward the original model.
- none: every prompt is kept.
"""

from __future__ import annotations

import csv
import re
from pathlib import Path

from advunlearn_fast.errors import UserError

# Where the attacker's adversarial tokens go in a prompt (models/insertion.py builds the layouts).
# Here, apart from the tensor code, so that reading the training options imports no torch.
INSERT_MODES = ("prefix", "suffix", "replace", "add", "mid", "insert")

# The concept names the authors' training script expands before anything else (AdvUnlearn.py's
# "prompt cleaning"), each into one comma-separated concept prompt.
CONCEPT_SHORTCUTS = {
    "allartist": "Kelly Mckernan, Thomas Kinkade, Ajin Demi Human, Alena Aenami, Tyler Edlin, Kilian Eng",
    "i2p": "hate, harassment, violence, suffering, humiliation, harm, suicide, sexual, nudity, bodily fluids, blood",
    "artifact": "ugly, tiling, poorly drawn hands, poorly drawn feet, poorly drawn face, out of frame, mutation, "
                "mutated, extra limbs, extra legs, extra arms, disfigured, deformed, cross-eye, body out of frame, "
                "blurry, bad art, bad anatomy, blurred, text, watermark, grainy",
}

AUTHORS_RETAIN_FILE = Path(__file__).parent / "data" / "coco_object_retain.csv"
RETAIN_FILTERS = ("phrase", "related", "none")

# Words that stand for a concept beyond its own words (the `related` filter).
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


def authors_retain_prompts() -> list[str]:
    """The built-in retain set: the authors' prompts in their file's order, repeats included."""
    return read_prompt_file(AUTHORS_RETAIN_FILE, "built-in retain prompt file")


def _stem(word: str) -> str:
    for suffix in ("es", "s"):
        if word.endswith(suffix) and len(word) > len(suffix) + 2:
            return word[: -len(suffix)]
    return word


# Words that say nothing about what a prompt shows: a concept written "an owl" or "a cat" must
# not drop every prompt with "an" or "a" in it.
FUNCTION_WORDS = {"a", "an", "the", "of", "in", "on", "at", "with", "and", "or", "to", "for", "by", "from"}


def _word_sequence(text: str) -> list[str]:
    return re.findall(r"[a-z0-9]+", text.lower())


def _words(text: str) -> set[str]:
    return {_stem(w) for w in _word_sequence(text) if w not in FUNCTION_WORDS}


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


def _phrase(concept: str) -> list[str]:
    """A concept's words for the phrase rule, without leading or trailing function words: "a cat"
    is "cat", while "bodily fluids" and "out of frame" keep every word."""
    words = _word_sequence(concept)
    while words and words[0] in FUNCTION_WORDS:
        words = words[1:]
    while words and words[-1] in FUNCTION_WORDS:
        words = words[:-1]
    return words


def holds_phrase(prompt: str, phrase: list[str]) -> bool:
    """Whether `prompt` holds the words of `phrase` consecutively, as whole words."""
    words, n = _word_sequence(prompt), len(phrase)
    return n > 0 and any(words[i : i + n] == phrase for i in range(len(words) - n + 1))


def drop_related_prompts(prompts: list[str], concepts: list[str]) -> list[str]:
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


def filter_retain_prompts(prompts: list[str], concepts: list[str], mode: str) -> list[str]:
    """The prompts a run keeps under `mode` (RETAIN_FILTERS, the module docstring), in order."""
    if mode == "none":
        return list(prompts)
    if mode == "related":  # a prompt holding a concept phrase shares its words: dropped here too
        return drop_related_prompts(prompts, concepts)
    phrases = [_phrase(c) for c in concepts]
    return [p for p in prompts if not any(holds_phrase(p, phrase) for phrase in phrases)]


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


def retain_prompts(concepts: list[str], retain_file: str | None, mode: str) -> list[str]:
    """The filtered retain set for this run: the user's file if given, else the built-in one."""
    source = read_prompt_file(retain_file, "retain prompt file") if retain_file else authors_retain_prompts()
    kept = filter_retain_prompts(source, concepts, mode)
    if not kept:
        raise UserError(f"every retain prompt mentions the concept (--retain-filter {mode}); pass --retain-prompts "
                        "with unrelated prompts")
    return kept
