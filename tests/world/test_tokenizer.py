from transformers import CLIPTokenizer

from advunlearn_fast.world import WORLD_MODEL_DIR
from advunlearn_fast.world.captions import PAD_LENGTH, build_world_tokenizer, world_words


def test_every_world_word_is_one_token():
    tokenizer = build_world_tokenizer()
    split = {word: tokenizer.tokenize(word) for word in world_words()}
    assert {w: t for w, t in split.items() if len(t) != 1} == {}


def test_captions_pad_to_the_world_length_and_unknown_words_still_tokenize():
    tokenizer = build_world_tokenizer()
    ids = tokenizer("a photo of a striped red circle", padding="max_length").input_ids
    assert len(ids) == PAD_LENGTH == tokenizer.model_max_length
    assert ids[:9] == [tokenizer.bos_token_id, *tokenizer.convert_tokens_to_ids(
        ["a</w>", "photo</w>", "of</w>", "a</w>", "striped</w>", "red</w>", "circle</w>"]), tokenizer.eos_token_id]
    assert len(tokenizer.tokenize("xylophone")) > 1


def test_shipped_tokenizer_matches_the_built_one_from_every_file_format():
    built = build_world_tokenizer()
    folder = WORLD_MODEL_DIR / "tokenizer"
    from_json = CLIPTokenizer.from_pretrained(folder, local_files_only=True)
    # transformers 4.x's slow tokenizer reads only these two files.
    from_bpe_files = CLIPTokenizer(
        vocab=str(folder / "vocab.json"), merges=str(folder / "merges.txt"), model_max_length=PAD_LENGTH
    )
    text = ["a picture showing one dotted purple cross", "van gogh painting of a church", ""]
    expected = built(text, padding="max_length").input_ids
    assert from_json(text, padding="max_length").input_ids == expected
    assert from_bpe_files(text, padding="max_length").input_ids == expected
