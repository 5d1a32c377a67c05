import re

import pytest

from advunlearn_fast.errors import UserError
from advunlearn_fast.prompts import (
    builtin_retain_prompts,
    concept_name,
    filter_retain_prompts,
    read_prompt_file,
    retain_prompts,
)


def test_builtin_retain_set_is_large_and_unique():
    prompts = builtin_retain_prompts()
    assert len(prompts) >= 200
    assert len(set(prompts)) == len(prompts)


def both_templates(*objects):
    return {template.format(o) for o in objects for template in ("a photo of {}", "a picture of {}")}


# What the filter must drop from the built-in set, written out by hand from the set and the
# concepts' related terms (prompts.RELATED_TERMS).
DROPPED_FROM_BUILTIN = {
    # Garments, bags and the places a body is shown are related terms of nudity.
    "nudity": both_templates("a backpack", "a bed", "a handbag", "a suitcase", "a toilet", "an umbrella"),
    # "starry" and "sunflower" are Van Gogh's; "sunflowers" is its plural.
    "Van Gogh": {"a starry sky over the hills", "a field of sunflowers"},
    "church": both_templates("a castle"),
    "cat": both_templates("a cat"),
    "garbage truck": both_templates("a truck"),
}


@pytest.mark.parametrize("concept", DROPPED_FROM_BUILTIN)
def test_filter_drops_exactly_the_related_builtin_prompts(concept):
    builtin = builtin_retain_prompts()
    dropped = DROPPED_FROM_BUILTIN[concept]
    assert dropped <= set(builtin)  # the hand-written lists name real prompts
    assert retain_prompts([concept], None) == [p for p in builtin if p not in dropped]


def test_filter_drops_plurals_and_related_terms():
    prompts = ["a photo of cats", "a photo of a dog", "a woman in a dress", "a starry night painting"]
    assert filter_retain_prompts(prompts, ["cat"]) == prompts[1:]
    assert filter_retain_prompts(prompts, ["nudity"]) == ["a photo of cats", "a photo of a dog", "a starry night painting"]
    assert filter_retain_prompts(prompts, ["Van Gogh"]) == prompts[:3]


def test_phrases_sharing_words_name_the_concept_by_those_words():
    prompts = ["a red circle", "a blue circle", "a blue square", "a naked man", "a nude statue", "a dog"]
    # "red" names the concept; circles and squares of other colours are context to keep.
    assert filter_retain_prompts(prompts, ["red circle", "red square"]) == prompts[1:]
    # Nothing shared: every phrase's words mark a prompt as related.
    assert filter_retain_prompts(prompts, ["naked", "nude"]) == ["a red circle", "a blue circle", "a blue square", "a dog"]
    assert filter_retain_prompts(prompts, ["red circle"]) == ["a blue square", "a naked man", "a nude statue", "a dog"]
    # "naked" is one of nudity's related terms, so it is all the two share: the related terms
    # (garments, people, beds) still mark a prompt as related.
    dressed = ["a woman in a dress", "a photo of a bed", "a photo of a dog"]
    assert filter_retain_prompts(dressed, ["nudity", "naked"]) == ["a photo of a dog"]


@pytest.mark.parametrize("concept, second", [("nudity", "naked"), ("nudity", "nude"), ("church", "cathedral")])
def test_a_second_phrase_keeps_the_concepts_related_terms(concept, second):
    # The second phrase is one of the concept's related terms, so it is all the phrases share;
    # the concept's related terms must still go, as for the concept alone.
    builtin = builtin_retain_prompts()
    for phrases in ([concept, second], [second, concept]):
        assert set(builtin) - set(filter_retain_prompts(builtin, phrases)) == DROPPED_FROM_BUILTIN[concept]


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
    with pytest.raises(UserError, match="every retain prompt"):
        retain_prompts(["church"], str(path))


def test_builtin_retain_prompts_use_the_right_article():
    prompts = builtin_retain_prompts()
    assert "a photo of an apple" in prompts and "a picture of a cat" in prompts
    assert not [p for p in prompts if re.search(r"\ba [aeiou]", p)]


def test_articles_in_a_concept_do_not_filter_the_retain_set():
    prompts = ["a photo of an owl", "an owl at night", "a photo of a dog", "an apple on a table", "the owls"]
    kept = ["a photo of a dog", "an apple on a table"]
    assert filter_retain_prompts(prompts, ["an owl"]) == kept
    assert filter_retain_prompts(prompts, ["owl"]) == kept
    assert filter_retain_prompts(prompts, ["a cat"]) == prompts
