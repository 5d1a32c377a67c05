"""The cost model counts what the UNet computes: a frozen UNet's backward by its FLOPs."""

import pytest
import torch

from advunlearn_fast.models.tiny import build_sd_v1_random, build_tiny_model
from advunlearn_fast.training.costs import BACKWARD_COST, CostMeter, unet_flops


@pytest.fixture(scope="module")
def sd_v1_unet():
    with torch.device("meta"):  # the full-size architecture without its 3.4 GB of weights
        return build_sd_v1_random()["unet"]


@pytest.mark.parametrize("train", sorted(BACKWARD_COST))
def test_backward_costs_are_the_full_size_unets_flop_counts(sd_v1_unet, train):
    flops = unet_flops(sd_v1_unet, (4, 64, 64), (77, 768), train)
    measured = flops["backward"] / flops["forward"]
    # costs.py rounds to a tenth; fused attention kernels add up to ~0.07 to the conditioning's backward.
    assert BACKWARD_COST[train] == pytest.approx(measured, abs=0.05), measured


def test_a_frozen_unets_backward_costs_about_one_forward_not_two(sd_v1_unet):
    flops = unet_flops(sd_v1_unet, (4, 64, 64), (77, 768))
    # SD v1's UNet at 512 px: 0.80 TFLOP forward, so that an attacked iteration's (30 + 6) x 2.1
    # forward-equivalents are about 61 TFLOP (README, "Engines and the trajectory bank").
    assert flops["forward"] == pytest.approx(0.803e12, rel=0.01)
    assert 1.0 < flops["backward"] / flops["forward"] < 1.2


def test_flops_are_counted_on_a_twin_and_leave_the_model_alone():
    unet = build_tiny_model()["unet"]
    before = {k: v.clone() for k, v in unet.state_dict().items()}
    flops = unet_flops(unet, (4, 8, 8), (77, 32))
    assert flops["forward"] > 0 and flops["backward"] > 0
    assert all(torch.equal(v, before[k]) for k, v in unet.state_dict().items())
    assert all(p.grad is None for p in unet.parameters())
    # The count follows the shapes: four times the latent pixels, more than four times the FLOPs
    # (attention grows with the square of the tokens).
    assert unet_flops(unet, (4, 16, 16), (77, 32))["forward"] > 4 * flops["forward"]


def test_the_meter_counts_forward_equivalents_without_float_noise():
    meter = CostMeter()
    for _ in range(30):
        meter.add("attack", 1, backward=BACKWARD_COST["text-encoder"])
    meter.add("retain", 5, backward=BACKWARD_COST["unet-noxattn"])
    meter.add("bank", 7)
    assert meter.take_window() == {"attack": 63.0, "retain": 15.0, "bank": 7}
    assert meter.take_window() == {}
    assert meter.totals() == {"attack": 63.0, "retain": 15.0, "bank": 7}
