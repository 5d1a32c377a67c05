"""Where the attacker's adversarial token embeddings go in a prompt (pure functions).

A prompt's token row is [start, w_1 .. w_n, end, pad ...] of the tokenizer's
length L. Each mode returns that row with k placeholder slots for the
adversarial embeddings and the slots' indices:
- prefix:  [start, a_1..a_k, w_1..w_n, end, pad ...] (right after the start token)
- suffix:  [start, w_1..w_n, a_1..a_k, end, pad ...]
- replace: [start, a_1..a_k, end, end ...] (the words are dropped, the rest is end tokens)
- add:     [start, w_1..w_n, end, pad ...], k = n, a_i is ADDED to w_i's embedding
- mid:     [start, w_1..w_m, a_1..a_k, w_m+1..w_n, end, ...] with m = n // 2
- insert:  a_i placed after word i * floor(n / (k + 1)), i = 1..k: the authors' `insert_k`
           (equal intervals of n // (k + 1) words, the rest after a_k; with n < k + 1 every
           a_i right after the start token)
Placeholder slots hold the end-token id: the ids only matter for pooling, which
SD v1.x does not use.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from advunlearn_fast.errors import UserError
from advunlearn_fast.prompts import INSERT_MODES
from advunlearn_fast.transfer import to_device


@dataclass(frozen=True)
class AdversarialLayout:
    """One prompt's layout (ids [L], positions [k]) or a batch of them (ids [B, L], positions
    [B, k], see `stack_layouts`)."""

    ids: torch.Tensor  # token ids with placeholders in the adversarial slots
    positions: torch.Tensor  # indices of the adversarial slots
    add: bool  # True: the adversarial rows are added to the word embeddings there

    @property
    def k(self) -> int:
        return int(self.positions.shape[-1])

    def to(self, device: torch.device | str) -> "AdversarialLayout":
        """The layout with its index tensors on `device`, copied once instead of at every attack step."""
        return AdversarialLayout(to_device(self.ids, device), to_device(self.positions, device), self.add)

    def select(self, rows: list[int]) -> "AdversarialLayout":
        """The given prompts of a batch of layouts."""
        return AdversarialLayout(self.ids[rows], self.positions[rows], self.add)


def stack_layouts(layouts: list[AdversarialLayout]) -> AdversarialLayout:
    """Prompts' own layouts as one batch; their slots may sit at different positions, but
    they must have the same number of them."""
    if len({layout.k for layout in layouts}) != 1:
        raise ValueError("stack_layouts: the layouts have different numbers of adversarial slots")
    return AdversarialLayout(torch.stack([layout.ids for layout in layouts]),
                             torch.stack([layout.positions for layout in layouts]), layouts[0].add)


@dataclass(frozen=True)
class SpecialTokens:
    bos: int
    eos: int
    pad: int
    length: int

    @classmethod
    def of(cls, tokenizer) -> "SpecialTokens":
        pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
        return cls(tokenizer.bos_token_id, tokenizer.eos_token_id, pad, tokenizer.model_max_length)


def prompt_words(tokenizer, prompt: str) -> list[int]:
    """The prompt's token ids without start/end tokens."""
    return list(tokenizer(prompt, add_special_tokens=False).input_ids)


def adversarial_token_count(mode: str, n_words: int, k: int) -> int:
    """How many adversarial rows a mode uses: `add` perturbs each word, the others insert k."""
    return n_words if mode == "add" else k


def build_layout(words: list[int], mode: str, k: int, special: SpecialTokens) -> AdversarialLayout:
    if mode not in INSERT_MODES:
        raise UserError(f"--insert must be one of {', '.join(INSERT_MODES)}, got {mode!r}")
    n = len(words)
    k = adversarial_token_count(mode, n, k)
    slot = -1  # marks an adversarial slot until the ids are finalised
    if mode == "prefix":
        body = [slot] * k + words
    elif mode == "suffix":
        body = words + [slot] * k
    elif mode == "replace":
        body = [slot] * k
    elif mode == "add":
        body = [slot] * n
    elif mode == "mid":
        body = words[: n // 2] + [slot] * k + words[n // 2 :]
    else:  # insert
        cuts = [(n // (k + 1)) * i for i in range(1, k + 1)]
        body, start = [], 0
        for cut in cuts:
            body += words[start:cut] + [slot]
            start = cut
        body += words[start:]
    if len(body) + 2 > special.length:
        raise UserError(
            f"the prompt ({n} tokens) plus {k} adversarial tokens does not fit the "
            f"tokenizer's {special.length} tokens; use fewer --adv-tokens or a shorter concept"
        )
    filler = special.eos if mode == "replace" else special.pad
    row = [special.bos] + body + [special.eos] + [filler] * (special.length - len(body) - 2)
    positions = [i for i, tok in enumerate(row) if tok == slot]
    if mode == "add":
        ids = [special.bos] + words + row[len(words) + 1 :]
    else:
        ids = [special.eos if tok == slot else tok for tok in row]
    return AdversarialLayout(torch.tensor(ids), torch.tensor(positions, dtype=torch.long), mode == "add")

