"""UNet forward-equivalents per phase: the cost model every engine is compared by.

One sample through the UNet forward counts 1; a classifier-free guided pass of B latents counts
2B; a backward pass counts what it computes, in forwards (BACKWARD_COST).
"""

from __future__ import annotations

from collections import Counter

import torch
from torch.utils.flop_counter import FlopCounterMode

from advunlearn_fast.models.diffusion import walk_steps, walk_timesteps
from advunlearn_fast.training.layers import unet_parameters

PHASES = ("rollout", "targets", "attack", "train", "retain", "bank")

# A backward pass through the UNet, in forwards of the same samples, by FLOP count
# (torch.utils.flop_counter on SD v1's UNet at 512 px, batch 1; tests/test_costs.py counts again).
# The UNet is frozen, so a backward computes no weight gradients, only those of the activations
# between the conditioning and the output: 1.08 forwards where only the conditioning's gradient is
# wanted (every attack step, and the defender step when the text encoder is trained; fused
# attention kernels also recompute the attention scores in their backward, about 0.07 more). The
# UNet ablations' defender steps add the gradients of the weights they train: 1.11 for the
# cross-attention layers (ESD-x), 1.96 for every other layer (ESD-u). The tiny test model, built
# in other proportions, gives 0.98 for the first.
BACKWARD_COST = {"text-encoder": 1.1, "unet-xattn": 1.1, "unet-noxattn": 2.0}
CONDITIONING_BACKWARD = BACKWARD_COST["text-encoder"]


class CostMeter:
    def __init__(self):
        self.total: Counter = Counter()
        self.window: Counter = Counter()

    def add(self, phase: str, samples: int, backward: float = 0.0) -> None:
        """`samples` through the UNet forward, and back at a cost of `backward` forwards each."""
        n = samples * (1 + backward)
        self.total[phase] += n
        self.window[phase] += n

    def take_window(self) -> dict:
        """Counts since the last call (one iteration's), then reset."""
        counts = _rounded(self.window)
        self.window = Counter()
        return counts

    def totals(self) -> dict:
        return _rounded(self.total)


def _rounded(counts: Counter) -> dict:
    # Fractional backward costs would otherwise log sums such as 63.00000000000001.
    return {p: round(counts[p], 3) for p in PHASES if counts.get(p, 0)}


def unet_flops(unet, latent_shape: tuple, context_shape: tuple, train: str = "text-encoder") -> dict:
    """FLOPs of one sample through `unet`'s architecture: its forward, and the backward a run
    training `train` takes (`BACKWARD_COST`'s cases). Counted by torch.utils.flop_counter on a
    twin built from the config on the meta device: no weights copied, no arithmetic done."""
    with torch.device("meta"):
        twin = type(unet).from_config(unet.config)
    twin.requires_grad_(False)
    if train != "text-encoder":
        for p in unet_parameters(twin, train).values():
            p.requires_grad_(True)
    z = torch.zeros((1, *latent_shape), device="meta")
    context = torch.zeros((1, *context_shape), device="meta", requires_grad=train == "text-encoder")
    with FlopCounterMode(display=False) as counter:
        out = twin(z, torch.zeros(1, dtype=torch.long, device="meta"), encoder_hidden_states=context).sample
    forward = counter.get_total_flops()
    with FlopCounterMode(display=False) as counter:
        out.sum().backward()
    return {"forward": forward, "backward": counter.get_total_flops()}


# What the trajectory bank replaces, in the same units: a fast run chooses the cheaper of the two.


def expected_walk_steps(ddim_steps: int, train_timesteps: int) -> float:
    """Mean DDIM steps of one rollout to z_t, over the K DDIM indices (diffusion.walk_steps)."""
    length = len(walk_timesteps(ddim_steps, train_timesteps))
    return sum(walk_steps(k, length) for k in range(ddim_steps)) / ddim_steps


def fresh_rollout_cost(*, iterations: int, warmup: int, attacking: bool, attack_every: int, attack_steps: int,
                       retain_batch: int, ddim_steps: int, train_timesteps: int) -> float:
    """Expected forward-equivalents that fresh rollouts and frozen targets cost a run of
    `iterations`: per defender step a guided rollout of the concept and retain latents and 2 + R
    targets; per attack step (when `attacking`) a guided rollout of one latent and one target."""
    walk = expected_walk_steps(ddim_steps, train_timesteps)
    defender = 2 * (1 + retain_batch) * walk + 2 + retain_batch
    rounds = 0
    if attacking:
        rounds = sum(1 for step in range(warmup, iterations) if step % attack_every == 0)
    return iterations * defender + rounds * attack_steps * (2 * walk + 1)


def bank_build_cost(concept_entries: int, retain_entries: int, concept_size: int, retain_size: int,
                    ddim_steps: int, train_timesteps: int) -> int:
    """Forward-equivalents of building bank entries: per trajectory one guided rollout over the
    whole walk, then the frozen predictions at each of the K DDIM indices (2 for a concept prompt,
    1 for a retain prompt)."""
    rollout = 2 * len(walk_timesteps(ddim_steps, train_timesteps))
    return (concept_entries * concept_size * (rollout + 2 * ddim_steps)
            + retain_entries * retain_size * (rollout + ddim_steps))
