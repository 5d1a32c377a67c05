"""UNet forward-equivalents per phase: the cost model every engine is compared by.

One sample through the UNet forward counts 1, its backward 2 more; a classifier-free
guided pass of B latents counts 2B.
"""

from __future__ import annotations

from collections import Counter

PHASES = ("rollout", "targets", "attack", "train", "retain", "bank")


class CostMeter:
    def __init__(self):
        self.total: Counter = Counter()
        self.window: Counter = Counter()

    def add(self, phase: str, samples: int, backward: bool = False) -> None:
        n = samples * (3 if backward else 1)
        self.total[phase] += n
        self.window[phase] += n

    def take_window(self) -> dict:
        """Counts since the last call (one iteration's), then reset."""
        counts = {p: self.window.get(p, 0) for p in PHASES if self.window.get(p, 0)}
        self.window = Counter()
        return counts
