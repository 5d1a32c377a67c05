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


# What the trajectory bank replaces, in the same units: a fast run chooses the cheaper of the two.


def expected_walk_steps(ddim_steps: int) -> float:
    """Mean DDIM steps of one rollout to z_t, over the K DDIM indices (sampling.walk_steps)."""
    return (ddim_steps + sum(ddim_steps - k + 1 for k in range(1, ddim_steps))) / ddim_steps


def fresh_rollout_cost(iterations: int, start: int, warmup: int, attacking: bool, attack_every: int,
                       attack_steps: int, retain_batch: int, ddim_steps: int) -> float:
    """Expected forward-equivalents that fresh rollouts and frozen targets cost iterations
    start..iterations-1: per defender step a guided rollout of the concept and retain latents and
    2 + R targets; per attack step (when `attacking`) a guided rollout of one latent and one target."""
    walk = expected_walk_steps(ddim_steps)
    defender = 2 * (1 + retain_batch) * walk + 2 + retain_batch
    rounds = 0
    if attacking:
        rounds = sum(1 for step in range(max(start, warmup), iterations) if (step - warmup) % attack_every == 0)
    return (iterations - start) * defender + rounds * attack_steps * (2 * walk + 1)


def bank_build_cost(concept_entries: int, retain_entries: int, concept_size: int, retain_size: int,
                    ddim_steps: int) -> int:
    """Forward-equivalents of building bank entries: per trajectory a guided K-step rollout, then
    the frozen predictions at every k (2 for a concept prompt, 1 for a retain prompt)."""
    return ddim_steps * (concept_entries * concept_size * 4 + retain_entries * retain_size * 3)
