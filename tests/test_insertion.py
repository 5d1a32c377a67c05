import pytest

from advunlearn_fast.errors import UserError
from advunlearn_fast.models.insertion import INSERT_MODES, SpecialTokens, build_layout, prompt_words
from advunlearn_fast.models.tiny import build_tiny_model

SP = SpecialTokens(bos=100, eos=101, pad=102, length=12)
WORDS = [1, 2, 3, 4]
A = -1  # where an adversarial slot is expected

EXPECTED = {
    "prefix": [100, A, A, 1, 2, 3, 4, 101, 102, 102, 102, 102],
    "suffix": [100, 1, 2, 3, 4, A, A, 101, 102, 102, 102, 102],
    "replace": [100, A, A, 101, 101, 101, 101, 101, 101, 101, 101, 101],
    "mid": [100, 1, 2, A, A, 3, 4, 101, 102, 102, 102, 102],
    "insert": [100, 1, A, 2, A, 3, 4, 101, 102, 102, 102, 102],
}


@pytest.mark.parametrize("mode", sorted(EXPECTED))
def test_each_mode_places_slots_as_specified(mode):
    layout = build_layout(WORDS, mode, 2, SP)
    expected = EXPECTED[mode]
    assert layout.positions.tolist() == [i for i, v in enumerate(expected) if v == A]
    non_slot = [i for i, v in enumerate(expected) if v != A]
    assert layout.ids[non_slot].tolist() == [expected[i] for i in non_slot]
    assert not layout.add


def authors_insert_k(words: list[int], k: int) -> list[int]:
    """The authors' insert_k (AdvUnlearn's attack_util.construct_embd, Diffusion-MU-Attack's
    attackers), transcribed: k pieces of n // (k + 1) words, each followed by an adversarial slot,
    then the remaining words."""
    interval = len(words) // (k + 1)
    body = []
    for i in range(k):
        body += words[interval * i : interval * (i + 1)] + [A]
    return body + words[interval * k :]


@pytest.mark.parametrize("n", range(1, 8))
@pytest.mark.parametrize("k", range(1, 6))
def test_insert_places_slots_as_the_authors_insert_k(n, k):
    sp = SpecialTokens(bos=100, eos=101, pad=102, length=16)
    words = list(range(1, n + 1))
    layout = build_layout(words, "insert", k, sp)
    expected = [100] + authors_insert_k(words, k) + [101]
    assert layout.positions.tolist() == [i for i, v in enumerate(expected) if v == A]
    assert layout.ids.tolist()[: len(expected)] == [sp.eos if v == A else v for v in expected]  # slots hold eos


def test_insert_with_fewer_words_than_intervals_puts_every_slot_first():
    assert build_layout([1, 2], "insert", 2, SP).positions.tolist() == [1, 2]  # [bos, a, a, w1, w2]
    assert build_layout([1, 2, 3, 4, 5], "insert", 2, SP).positions.tolist() == [2, 4]  # [bos, w1, a, w2, a, ...]


def test_add_mode_perturbs_every_word():
    layout = build_layout(WORDS, "add", 7, SP)
    assert layout.add and layout.k == 4
    assert layout.positions.tolist() == [1, 2, 3, 4]
    assert layout.ids.tolist()[:6] == [100, 1, 2, 3, 4, 101]


def test_no_adversarial_tokens_gives_the_tokenizers_own_row():
    tok = build_tiny_model()["tokenizer"]
    layout = build_layout(prompt_words(tok, "a photo of a cat"), "prefix", 0, SpecialTokens.of(tok))
    stock = tok("a photo of a cat", padding="max_length", max_length=77).input_ids
    assert layout.ids.tolist() == stock


def test_overflowing_prompt_is_refused():
    with pytest.raises(UserError, match="does not fit"):
        build_layout(list(range(8)), "prefix", 3, SP)
    assert all(build_layout(list(range(8)), m, 2, SP).ids.numel() == 12 for m in INSERT_MODES)

