"""The UNet call takes its timestep in every form the engine passes, with one result."""

import torch

from advunlearn_fast.models.diffusion import predict_noise
from advunlearn_fast.models.tiny import build_tiny_model


def test_predict_noise_same_for_every_timestep_form():
    parts = build_tiny_model(seed=0)
    unet = parts["unet"].eval()
    z = torch.randn(3, unet.config.in_channels, 8, 8, generator=torch.Generator().manual_seed(0))
    cond = torch.randn(3, 77, unet.config.cross_attention_dim, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        expected = predict_noise(unet, z, 500, cond)
        for t in (torch.tensor(500), torch.tensor([500]), torch.tensor([500, 500, 500]), [500, 500, 500]):
            assert torch.equal(predict_noise(unet, z, t, cond), expected)
        # One timestep per latent is honoured, not broadcast from the first.
        mixed = predict_noise(unet, z, torch.tensor([500, 20, 900]), cond)
    assert torch.equal(mixed[0], expected[0]) and not torch.allclose(mixed[1], expected[1])

