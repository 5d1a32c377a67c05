import csv
import hashlib

import pytest

from advunlearn_fast.errors import UserError
from advunlearn_fast.prompts import (
    AUTHORS_RETAIN_FILE,
    authors_retain_prompts,
    concept_name,
    filter_retain_prompts,
    read_prompt_file,
    retain_prompts,
)

# The concepts of the authors' runs (their README and evaluation scripts).
PUBLISHED_CONCEPTS = ["nudity", "Van Gogh", "church", "garbage truck", "parachute", "tench"]


def test_the_builtin_retain_set_is_the_authors_file_as_their_loader_reads_it():
    with open(AUTHORS_RETAIN_FILE, newline="", encoding="utf-8") as f:
        rows = [row["prompt"] for row in csv.DictReader(f)]
    prompts = authors_retain_prompts()
    assert prompts == rows  # their text and order, nothing stripped or dropped
    assert len(prompts) == 243 and len(set(prompts)) == 237
    # Repeated rows stay: their loader draws rows, so these come twice as often.
    twice = {"a photo of basketball", "a photo of window", "a photo of towel", "a photo of table", "a photo of bat",
             "a photo of hoop"}
    assert {p for p in prompts if prompts.count(p) == 2} == twice
    assert all(prompts.count(p) <= 2 for p in prompts)


def test_the_builtin_file_is_the_one_its_notice_names():
    notice = (AUTHORS_RETAIN_FILE.parent / "NOTICE.md").read_text()
    digest = hashlib.sha256(AUTHORS_RETAIN_FILE.read_bytes()).hexdigest()
    assert f"SHA-256: {digest}" in notice
    for fact in ("https://github.com/OPTML-Group/AdvUnlearn", "data/prompts/train/coco_object_retain.csv",
                 "CC BY 4.0", "unmodified"):
        assert fact in notice, fact


@pytest.mark.parametrize("concept", PUBLISHED_CONCEPTS)
def test_the_default_filter_keeps_the_whole_authors_set_for_their_concepts(concept):
    assert retain_prompts([concept], None, "phrase") == authors_retain_prompts()


# What `--retain-filter related` drops from the authors' set, written out by hand from the set and
# the concepts' related terms (prompts.RELATED_TERMS).
RELATED_DROPS = {
    # Garments, bags and beds are related terms of nudity ("cloth" is the stem of "clothes").
    "nudity": {"backpack", "bed", "handbag", "hat", "jacket", "suitcase", "table cloth", "tie", "umbrella"},
    "Van Gogh": {"van"},
    "church": set(),
    "garbage truck": set(),
    "parachute": {"kite"},
    "tench": {"fish"},
}


@pytest.mark.parametrize("concept", PUBLISHED_CONCEPTS)
def test_the_related_filter_drops_the_related_objects(concept):
    dropped = {f"a photo of {o}" for o in RELATED_DROPS[concept]}
    builtin = authors_retain_prompts()
    assert dropped <= set(builtin)  # the hand-written lists name real prompts
    assert retain_prompts([concept], None, "related") == [p for p in builtin if p not in dropped]


@pytest.mark.parametrize("concept, dropped", [
    ("cat", {"a photo of cat"}),
    ("a pig", {"a photo of Pig"}),  # case ignored; the article is not part of the phrase
    ("teddy bear", {"a photo of teddy bear"}),  # the whole phrase: "a photo of bear" stays
    ("bear", {"a photo of bear", "a photo of teddy bear"}),
    ("ball", {"a photo of sports ball", "a photo of soccer ball"}),  # whole words: not "basketball"
])
def test_the_phrase_filter_drops_prompts_that_hold_the_phrase_as_whole_words(concept, dropped):
    builtin = authors_retain_prompts()
    assert dropped <= set(builtin)
    assert retain_prompts([concept], None, "phrase") == [p for p in builtin if p not in dropped]


def test_no_filter_keeps_every_prompt():
    prompts = ["a photo of cat", "a photo of a cat", "a cat", "a photo of dog"]
    assert filter_retain_prompts(prompts, ["cat"], "none") == prompts
    assert retain_prompts(["cat"], None, "none") == authors_retain_prompts()


def test_several_phrases_each_drop_their_prompts():
    prompts = ["a red circle", "a blue circle", "a red square", "the red square at dusk", "a dog"]
    assert filter_retain_prompts(prompts, ["red circle", "red square"], "phrase") == ["a blue circle", "a dog"]


def test_filter_drops_plurals_and_related_terms():
    prompts = ["a photo of cats", "a photo of a dog", "a woman in a dress", "a starry night painting"]
    assert filter_retain_prompts(prompts, ["cat"], "related") == prompts[1:]
    assert filter_retain_prompts(prompts, ["nudity"], "related") == ["a photo of cats", "a photo of a dog",
                                                                      "a starry night painting"]
    assert filter_retain_prompts(prompts, ["Van Gogh"], "related") == prompts[:3]
    # The phrase rule reads whole words: neither the plural nor the related terms.
    assert filter_retain_prompts(prompts, ["cat"], "phrase") == prompts
    assert filter_retain_prompts(prompts, ["nudity"], "phrase") == prompts


def test_phrases_sharing_words_name_the_concept_by_those_words():
    prompts = ["a red circle", "a blue circle", "a blue square", "a naked man", "a nude statue", "a dog"]
    # "red" names the concept; circles and squares of other colours are context to keep.
    assert filter_retain_prompts(prompts, ["red circle", "red square"], "related") == prompts[1:]
    # Nothing shared: every phrase's words mark a prompt as related.
    assert filter_retain_prompts(prompts, ["naked", "nude"], "related") == ["a red circle", "a blue circle",
                                                                             "a blue square", "a dog"]
    assert filter_retain_prompts(prompts, ["red circle"], "related") == ["a blue square", "a naked man",
                                                                          "a nude statue", "a dog"]
    # "naked" is one of nudity's related terms, so it is all the two share: the related terms
    # (garments, people, beds) still mark a prompt as related.
    dressed = ["a woman in a dress", "a photo of a bed", "a photo of a dog"]
    assert filter_retain_prompts(dressed, ["nudity", "naked"], "related") == ["a photo of a dog"]


@pytest.mark.parametrize("concept, second", [("nudity", "naked"), ("nudity", "nude"), ("parachute", "kite")])
def test_a_second_phrase_keeps_the_concepts_related_terms(concept, second):
    # The second phrase is one of the concept's related terms, so it is all the phrases share;
    # the concept's related terms must still go, as for the concept alone.
    builtin = authors_retain_prompts()
    alone = set(builtin) - set(filter_retain_prompts(builtin, [concept], "related"))
    assert alone
    for phrases in ([concept, second], [second, concept]):
        assert set(builtin) - set(filter_retain_prompts(builtin, phrases, "related")) == alone


def test_concept_name_is_what_the_phrases_share():
    assert concept_name(["red circle", "red square"]) == "red"
    assert concept_name(["Van Gogh"]) == "Van Gogh"
    assert concept_name(["nudity", "naked"]) == "nudity"


def test_prompt_files(tmp_path):
    txt = tmp_path / "p.txt"
    txt.write_text("a photo of a boat\n\n  a red car  \n")
    assert read_prompt_file(txt) == ["a photo of a boat", "a red car"]
    csv = tmp_path / "p.csv"
    csv.write_text('case_number,prompt,evaluation_seed\n1,"a cat, sitting",3\n2,a dog,4\n')
    assert read_prompt_file(csv) == ["a cat, sitting", "a dog"]


@pytest.mark.parametrize(
    "name, content, message",
    [("missing.txt", None, "not found"), ("empty.txt", "\n \n", "holds no prompts"),
     ("bad.csv", "text\nhello\n", "no 'prompt' column")],
)
def test_bad_prompt_files_are_refused(tmp_path, name, content, message):
    path = tmp_path / name
    if content is not None:
        path.write_text(content)
    with pytest.raises(UserError, match=message):
        read_prompt_file(path)


def test_retain_file_all_about_the_concept_is_refused(tmp_path):
    path = tmp_path / "r.txt"
    path.write_text("a church\nchurches at night\n")
    with pytest.raises(UserError, match=r"every retain prompt mentions the concept \(--retain-filter related\)"):
        retain_prompts(["church"], str(path), "related")
    assert retain_prompts(["church"], str(path), "phrase") == ["churches at night"]


def test_articles_in_a_concept_do_not_filter_the_retain_set():
    prompts = ["a photo of an owl", "an owl at night", "a photo of a dog", "an apple on a table", "the owls"]
    kept = ["a photo of a dog", "an apple on a table"]
    for mode in ("related", "phrase"):
        assert filter_retain_prompts(prompts, ["owl"], mode) == filter_retain_prompts(prompts, ["an owl"], mode)
        assert filter_retain_prompts(prompts, ["a cat"], mode) == prompts
    assert filter_retain_prompts(prompts, ["an owl"], "related") == kept
    assert filter_retain_prompts(prompts, ["an owl"], "phrase") == kept + ["the owls"]
