"""Caption templates of the concept world and the tokenizer over its words.

Training and held-out templates differ in their wording, so that held-out
accuracy measures whether the text encoder reads the attribute words rather
than memorising whole captions.
"""

from __future__ import annotations

import re

import torch
from transformers import CLIPTokenizer

from advunlearn_fast.models.vocab import build_clip_tokenizer
from advunlearn_fast.world.render import COLOURS, SHAPES, TEXTURES
from advunlearn_fast.world.words import EVERYDAY_WORDS

PAD_LENGTH = 20

# "{obj}" is the attribute phrase, e.g. "striped red circle" or "red circle".
TRAIN_TEMPLATES = (
    "a {obj}",
    "{obj}",
    "a photo of a {obj}",
    "a drawing of a {obj}",
    "a {obj} on a gray background",
    "a small {obj}",
)
HELDOUT_TEMPLATES = (
    "an image of a {obj}",
    "a picture showing one {obj}",
    "a {obj} in the center",
)

# Solid objects are often described without a texture word, so a caption that
# names only colour and shape stays meaningful (any texture).
SOLID_UNSAID = 0.5
TEXTURE_UNSAID = 0.25

# Other ways to say each value: synonyms, and associations of one or two words. Training
# captions use them less often than the main word (ALIAS_RATE of the captions, split evenly
# among a value's aliases), so that erasing the main word can leave routes a discrete-token
# search finds, as "naked" or "topless" remain in Stable Diffusion after "nudity" is erased.
ALIASES: dict[str, tuple[str, ...]] = {
    "red": ("crimson", "scarlet", "ruby", "cherry", "fire engine"),
    "yellow": ("lemon", "canary", "amber", "golden", "ripe banana"),
    "green": ("emerald", "lime", "jade", "olive", "fresh grass"),
    "blue": ("azure", "navy", "cobalt", "sapphire", "deep sea"),
    "purple": ("violet", "lavender", "plum", "amethyst", "ripe grape"),
    "circle": ("disc", "ring", "round blob"),
    "square": ("box", "block", "square tile"),
    "triangle": ("wedge", "pyramid", "arrowhead"),
    "cross": ("plus", "plus sign", "x mark"),
    "solid": ("plain", "flat", "uniform"),
    "striped": ("stripy", "banded", "pinstriped"),
    "dotted": ("spotted", "speckled", "polka dot"),
}
ALIAS_RATE = 0.3


def object_phrase(colour: str, shape: str, texture: str | None) -> str:
    return f"{texture} {colour} {shape}" if texture else f"{colour} {shape}"


def caption(template: str, colour: str, shape: str, texture: str | None = None) -> str:
    return template.format(obj=object_phrase(colour, shape, texture))


def name_for(value: str, generator: torch.Generator) -> str:
    """The value's main word, or with probability ALIAS_RATE one of its aliases (evenly)."""
    if float(torch.rand((), generator=generator)) >= ALIAS_RATE:
        return value
    aliases = ALIASES[value]
    return aliases[int(torch.randint(len(aliases), (), generator=generator))]


def world_words() -> list[str]:
    template_words = re.findall(r"[a-z]+", " ".join(TRAIN_TEMPLATES + HELDOUT_TEMPLATES).replace("{obj}", ""))
    alias_words = {word for aliases in ALIASES.values() for alias in aliases for word in alias.split()}
    return sorted(set(template_words) | set(COLOURS) | set(SHAPES) | set(TEXTURES) | alias_words | set(EVERYDAY_WORDS))


def build_world_tokenizer() -> CLIPTokenizer:
    return build_clip_tokenizer(world_words(), model_max_length=PAD_LENGTH)

