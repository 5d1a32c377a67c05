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
    ranks: dict[tuple[str, str], int] = {}
    for word in sorted({w.lower() for w in words if w.strip()}):
        if not word.isascii() or not word.isalpha():
            raise ValueError(f"vocabulary words must be plain ASCII letters, got {word!r}")
        # Merges added for earlier words also fire inside this one (BPE applies the
        # lowest-ranked pair first), so chain whatever they leave, not the raw letters.
        # New merges rank after all existing ones, so earlier words keep their single token.
        symbols = _apply_merges(list(word[:-1]) + [word[-1] + "</w>"], ranks)
        left = symbols[0]
        for right in symbols[1:]:
            ranks[(left, right)] = len(ranks)
            left = left + right
            if left not in known:
                known.add(left)
                vocab_list.append(left)
    vocab_list += [BOS, EOS]
    vocab = {tok: i for i, tok in enumerate(vocab_list)}
    return CLIPTokenizer(vocab=vocab, merges=list(ranks), model_max_length=model_max_length)


def _apply_merges(symbols: list[str], ranks: dict[tuple[str, str], int]) -> list[str]:
    """Byte-pair encoding of one word, as CLIPTokenizer applies it."""
    while len(symbols) > 1:
        pairs = [(ranks.get(pair, len(ranks)), pair) for pair in zip(symbols, symbols[1:])]
        rank, (left, right) = min(pairs)
        if rank == len(ranks):
            break
        merged: list[str] = []
        i = 0
        while i < len(symbols):
            if i + 1 < len(symbols) and symbols[i] == left and symbols[i + 1] == right:
                merged.append(left + right)
                i += 2
            else:
                merged.append(symbols[i])
                i += 1
        symbols = merged
    return symbols
