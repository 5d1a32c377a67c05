import pytest
import torch

from advunlearn_fast.training.losses import attack_loss, esd_target, retain_loss, total_loss, unlearn_loss


def test_esd_target_by_hand():
    e0 = torch.tensor([1.0, 2.0, -1.0])
    ep = torch.tensor([3.0, 2.0, 0.0])
    # e0 - eta (ep - e0) with eta = 1: [1-2, 2-0, -1-1]
    assert esd_target(e0, ep, 1.0).tolist() == [-1.0, 2.0, -2.0]
    assert esd_target(e0, ep, 0.5).tolist() == [0.0, 2.0, -1.5]


def test_losses_by_hand():
    pred = torch.tensor([[1.0, 3.0], [0.0, 0.0]])
    target = torch.tensor([[0.0, 1.0], [0.0, 2.0]])
    # squared errors 1, 4, 0, 4 -> mean 2.25
    assert unlearn_loss(pred, target).item() == 2.25
    assert retain_loss(pred, target).item() == 2.25
    # one loss per attack candidate (row): squared errors 1, 4 and 0, 4
    assert attack_loss(pred, target).tolist() == [2.5, 2.0]
    assert attack_loss(pred, target[:1]).tolist() == [2.5, 0.5]  # one target for every candidate
    assert total_loss(torch.tensor(2.0), torch.tensor(4.0), 0.3).item() == pytest.approx(3.2)
