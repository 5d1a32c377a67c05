import pytest
import torch

from advunlearn_fast.models.diffusion import predict_noise
from advunlearn_fast.training.attack import random_token_embeddings, soft_prompt_attack, with_gradient
from advunlearn_fast.training.config import TrainConfig
from advunlearn_fast.training.losses import attack_loss
from advunlearn_fast.training.trainer import build_setup, concept_condition


def _adam_reference(x0, grad_fn, steps, lr, sign):
    """Adam applied to each step's own gradient, written out by hand."""
    x, m, v = x0.clone(), torch.zeros_like(x0), torch.zeros_like(x0)
    for step in range(1, steps + 1):
        g = grad_fn(x)
        g = g.sign() if sign else g
        m = 0.9 * m + 0.1 * g
        v = 0.999 * v + 0.001 * g * g
        x = x - lr * (m / (1 - 0.9**step)) / ((v / (1 - 0.999**step)).sqrt() + 1e-8)
    return x


@pytest.mark.parametrize("sign", [False, True])
def test_attack_uses_a_fresh_gradient_every_step(sign):
    target = torch.tensor([[3.0, -2.0, 0.5]])
    scale = torch.tensor([[1.0, 10.0, 0.1]])

    def loss_fn(x):  # x [R, 3]: one loss per candidate
        return (scale * (x - target) ** 2).sum(1)

    x0 = torch.tensor([[0.0, 0.0, 0.0], [1.0, -1.0, 2.0]])
    got, losses = soft_prompt_attack(x0, with_gradient(loss_fn), steps=25, lr=0.01, sign_grad=sign)
    # Each candidate follows its own Adam path, as if it had been attacked alone. What comes back is
    # what the 25th step evaluated, before its update (the authors return it; the defender trains on
    # it): 24 updates, and the last loss reported is its loss.
    torch.testing.assert_close(losses[-1], loss_fn(got))
    for r in range(2):
        expected = _adam_reference(x0[r : r + 1], lambda x: 2 * scale * (x - target), 24, 0.01, sign)
        # Accumulated gradients (the reference code's bug) would follow a different path; lr is
        # small enough that no coordinate reaches its optimum, where a sign step is ill-defined.
        torch.testing.assert_close(got[r : r + 1], expected, rtol=1e-5, atol=1e-6)
    assert losses.shape == (25, 2)
    assert (losses[-1] < losses[0]).all()


def test_attack_lowers_its_loss_on_the_tiny_model():
    cfg = TrainConfig(model="tiny", concepts=["Van Gogh"], out="unused", ddim_steps=4, adv_tokens=2, bank=False,
                      device="cpu").validate()
    s = build_setup(cfg)
    generator = torch.Generator().manual_seed(0)
    adv0 = random_token_embeddings(s.te.get_input_embeddings().weight, 2, generator)[None]
    points = [s.source.attack_draw(0, torch.Generator().manual_seed(100 + i)) for i in range(6)]

    def mean_loss(adv):
        with torch.no_grad():
            return sum(
                attack_loss(predict_noise(s.unet, z, t, concept_condition(s, 0, adv)), e_p).item()
                for t, z, e_p in points
            ) / len(points)

    cycle = iter(points * 4)

    def loss_fn(adv):
        t, z, e_p = next(cycle)
        return attack_loss(predict_noise(s.unet, z, t, concept_condition(s, 0, adv)), e_p)

    adv, _ = soft_prompt_attack(adv0, with_gradient(loss_fn), steps=24, lr=0.02, sign_grad=False)
    assert mean_loss(adv) < 0.8 * mean_loss(adv0)


def test_concept_condition_with_real_token_rows_equals_the_stock_encoder():
    """Slots filled with real tokens' embeddings give exactly the prompt with those tokens."""
    from advunlearn_fast.models.text_encoding import encode_ids, token_table

    for mode in ("suffix", "insert", "add"):
        cfg = TrainConfig(model="tiny", concepts=["Van Gogh"], out="unused", adv_tokens=2, insert=mode, bank=False,
                          device="cpu").validate()
        s = build_setup(cfg)
        layout = s.layouts[0]
        extra = torch.tensor([40, 41, 42, 43][: layout.k])
        ids = layout.ids.clone()
        table = token_table(s.te).detach()
        if mode == "add":  # adding (e_extra - e_word) turns each word into the extra token
            adv = table[extra] - table[ids[layout.positions]]
        else:
            adv = table[extra]
        ids[layout.positions] = extra
        with torch.no_grad():
            ours = concept_condition(s, 0, adv)
            stock = encode_ids(s.te, ids[None])
        torch.testing.assert_close(ours, stock, rtol=0, atol=1e-5)
