"""The concepts of the authors' protocol, known by any of their spellings, and the prompt sets
that ship for them.

The sets are the published 50-prompt sets of Diffusion-MU-Attack (UnlearnDiffAtk's authors),
copied byte for byte into prompt_sets/ with their MIT licence: the objects' seeds were chosen
there so that SD v1.4's image of the prompt shows the object, which a set written here could not
reproduce. The nudity set (I2P) is third-party and not shipped.
"""

from __future__ import annotations

import re
from pathlib import Path

PROMPT_SETS = Path(__file__).resolve().parent / "prompt_sets"

# A concept's words joined (spaces, hyphens and underscores dropped), to its name here: the
# authors' `vangogh` and `garbage_truck` (their task.concept values and file names) are 'Van Gogh'
# and 'garbage truck'.
_JOINED = {"vangogh": "van gogh", "church": "church", "garbagetruck": "garbage truck", "parachute": "parachute",
           "tench": "tench"}
# Words that name no other concept around the ones above: 'Vincent van Gogh', 'Van Gogh style'.
_IGNORED = {"vincent", "style"}
PUBLISHED_FILES = {"van gogh": "vangogh.csv", "church": "church.csv", "garbage truck": "garbage_truck.csv",
                   "parachute": "parachute.csv", "tench": "tench.csv"}
KNOWN_CONCEPTS = ("nudity", *_JOINED.values())


def concept_key(concept: str | None) -> str | None:
    """The concept's name among KNOWN_CONCEPTS, None for any other."""
    words = [w for w in re.findall(r"[a-z]+", (concept or "").lower()) if w not in _IGNORED]
    joined = "".join(words)
    if "nud" in joined or "naked" in joined:
        return "nudity"
    return _JOINED.get(joined)


def published_prompt_set(concept: str | None) -> tuple[str, str] | None:
    """(file name, text) of the published set of the concept, None where none ships."""
    name = PUBLISHED_FILES.get(concept_key(concept))
    if name is None:
        return None
    return name, (PROMPT_SETS / name).read_text(encoding="utf-8")
