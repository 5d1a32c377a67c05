"""A small CLIP BPE vocabulary built in code.

The tiny built-in model and the concept world need a real `CLIPTokenizer` (same
pre-tokenizer, byte-level alphabet, start/end tokens) but not the 49408-token
vocabulary: every byte is a token, and each listed word gets merges that make it
one token. Any text still tokenizes (unknown words fall back to characters).
"""

from __future__ import annotations

from transformers import CLIPTokenizer

BOS = "<|startoftext|>"
EOS = "<|endoftext|>"


def _byte_alphabet() -> list[str]:
    # GPT-2/CLIP byte-level alphabet: printable bytes map to themselves, the rest
    # are shifted above 255 so that every byte has a visible, non-space character.
    printable = (
        list(range(ord("!"), ord("~") + 1))
        + list(range(ord("\u00a1"), ord("\u00ac") + 1))
        + list(range(ord("\u00ae"), ord("\u00ff") + 1))
    )
    chars = {b: chr(b) for b in printable}
    shift = 0
    for b in range(256):
        if b not in chars:
            chars[b] = chr(256 + shift)
            shift += 1
    return [chars[b] for b in range(256)]


def build_clip_tokenizer(words: list[str], model_max_length: int = 77) -> CLIPTokenizer:
    """A CLIPTokenizer whose vocabulary holds every byte plus each of `words` as one token.

    Ids follow CLIP's layout: bytes, bytes with the end-of-word mark, merged
    symbols, then the start and end tokens last (so the end token has the
    highest id, as in SD v1.x).
    """
    alphabet = _byte_alphabet()
    vocab_list = alphabet + [c + "</w>" for c in alphabet]
    known = set(vocab_list)
    merges: list[tuple[str, str]] = []
    seen_merges = set()
    for word in sorted({w.lower() for w in words if w.strip()}):
        if not word.isascii() or not word.isalpha():
            raise ValueError(f"vocabulary words must be plain ASCII letters, got {word!r}")
        symbols = list(word[:-1]) + [word[-1] + "</w>"]
        left = symbols[0]
        for right in symbols[1:]:
            pair = (left, right)
            merged = left + right
            if pair not in seen_merges:
                seen_merges.add(pair)
                merges.append(pair)
            if merged not in known:
                known.add(merged)
                vocab_list.append(merged)
            left = merged
    vocab_list += [BOS, EOS]
    vocab = {tok: i for i, tok in enumerate(vocab_list)}
    return CLIPTokenizer(vocab=vocab, merges=merges, model_max_length=model_max_length)
