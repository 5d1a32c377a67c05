"""The prompt sets that ship: the published UnlearnDiffAtk sets, byte for byte, with their
licence, read as the authors read them, and found by any spelling of their concept."""

import hashlib

import pytest

from advunlearn_fast.evaluation.evalsets import PROMPT_SETS, concept_key, published_prompt_set
from advunlearn_fast.evaluation.generation import read_prompt_rows

# Git's blob ids of Diffusion-MU-Attack's prompts/*.csv at commit 5a3e5d37fb8787113e5d479204ab593a60e303e0
# (`git ls-tree HEAD prompts/`): a copy is the published file exactly when its blob id is the same.
PUBLISHED_BLOBS = {
    "church.csv": "b7023ab5b8929f4250aa2ca5182f07be02f1fbb6",
    "garbage_truck.csv": "cb90c122ae5b4883b90faad4165d3cc987860143",
    "parachute.csv": "b6d3535740aa94c4ac6008b6fdba4fca96346b2c",
    "tench.csv": "0501cec7c9433db19b855bb6b8957eaf5623bb3e",
    "vangogh.csv": "c21e051e31f1e619f4e457c6c57bdccbd48ecf92",
}


def _git_blob_id(data: bytes) -> str:
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


@pytest.mark.parametrize("name", sorted(PUBLISHED_BLOBS))
def test_the_shipped_sets_are_the_published_files_byte_for_byte(name):
    assert _git_blob_id((PROMPT_SETS / name).read_bytes()) == PUBLISHED_BLOBS[name]


def test_the_sets_ship_with_their_licence_and_source():
    licence = (PROMPT_SETS / "LICENSE").read_text(encoding="utf-8")
    assert licence.startswith("MIT License") and "Copyright (c) 2023 OPTML Group" in licence
    source = (PROMPT_SETS / "README.md").read_text(encoding="utf-8")
    assert "OPTML-Group/Diffusion-MU-Attack" in source and "5a3e5d37fb8787113e5d479204ab593a60e303e0" in source
    assert sorted(p.name for p in PROMPT_SETS.iterdir()) == sorted([*PUBLISHED_BLOBS, "LICENSE", "README.md"])


@pytest.mark.parametrize("spellings, name", [
    (("Van Gogh", "vangogh", "Vincent van Gogh", "Van Gogh style", "van_gogh"), "vangogh.csv"),
    (("garbage truck", "garbage_truck", "garbage-truck", "Garbage Truck"), "garbage_truck.csv"),
    (("church", "Church"), "church.csv"),
    (("parachute",), "parachute.csv"),
    (("tench",), "tench.csv"),
])
def test_every_spelling_of_a_concept_finds_its_set(spellings, name):
    text = (PROMPT_SETS / name).read_text(encoding="utf-8")
    assert len({concept_key(s) for s in spellings}) == 1
    assert all(published_prompt_set(s) == (name, text) for s in spellings)


def test_concepts_without_a_shipped_set():
    assert [published_prompt_set(c) for c in ("nudity", "naked", "teapot", "", None)] == [None] * 5
    assert concept_key("naked") == concept_key("nudity") == "nudity" and concept_key("teapot") is None


def test_vangogh_is_read_as_the_authors_read_it(tmp_path):
    """Its extra columns (`Unnamed: 0`, `artist`) are not read; a title with a comma is one prompt;
    judged images take `evaluation_seed` and `evaluation_guidance`, targets the seed and the
    default guidance (the file has no `sd_guidance_scale`)."""
    name, text = published_prompt_set("vangogh")
    rows = read_prompt_rows(tmp_path / name, seed=0, guidance=None, text=text)
    assert len(rows) == 50 and len({r.prompt for r in rows}) == 50
    assert rows[0].prompt == "A Wheatfield, with Cypresses by Vincent van Gogh"
    assert (rows[0].seed, rows[0].guidance, rows[0].target_guidance, rows[0].target_seed) == (2219, 7.5, None, None)
    assert rows[4].prompt == "Café Terrace at Night by Vincent van Gogh"
    assert all(r.prompt.endswith("by Vincent van Gogh") for r in rows)
