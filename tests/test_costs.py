"""The cost model counts what the UNet computes: a frozen UNet's backward by its FLOPs."""

import pytest
import torch

from advunlearn_fast.models.tiny import build_sd_v1_random, build_tiny_model
from advunlearn_fast.training.bank import TrajectoryBank
from advunlearn_fast.training.config import TrainConfig
from advunlearn_fast.training.costs import (
    BACKWARD_COST,
    CostMeter,
    bank_build_cost,
    expected_walk_steps,
    fresh_rollout_cost,
    unet_flops,
)
from advunlearn_fast.training.trainer import build_setup


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


@pytest.mark.parametrize("K, mean_steps", [(50, 25.48), (10, 5.4), (6, 26 / 6), (30, 494 / 30)])
def test_a_rollout_to_z_t_costs_the_authors_number_of_steps(K, mean_steps):
    """The authors' sampler walks ldm's timesteps less the top one: K - k steps for k >= 1 and
    K - 1 for k = 0 when K divides 1000 (25.48 on average at 50), one more each when it does not
    (ldm then makes K + 1 timesteps): K - k + 1, and K for k = 0."""
    assert expected_walk_steps(K, 1000) == pytest.approx(mean_steps)
    per_draw = fresh_rollout_cost(iterations=1, warmup=0, attacking=False, attack_every=1, attack_steps=0,
                                  retain_batch=5, ddim_steps=K, train_timesteps=1000)
    assert per_draw == pytest.approx(2 * 6 * mean_steps + 2 + 5)


def test_the_bank_build_costs_what_its_meter_counts(sd_folder, tmp_path):
    """One guided walk of 49 steps per trajectory at K = 50 (not 50), then the predictions."""
    cfg = TrainConfig(model=str(sd_folder), concepts=["church"], out="unused", ddim_steps=50, bank=False,
                      retain_batch=2, device="cpu").validate()
    s = build_setup(cfg)
    bank = TrajectoryBank(s.frozen, tmp_path, ["church"], s.retain_texts, 2, 1, retain_used=[0, 1, 2])
    bank.build(progress=False)
    assert s.meter.totals()["bank"] == bank_build_cost(1, 3, 2, 1, 50, 1000)
    assert bank_build_cost(1, 0, 1, 0, 50, 1000) == 2 * 49 + 2 * 50
    assert bank_build_cost(0, 1, 0, 1, 50, 1000) == 2 * 49 + 50
