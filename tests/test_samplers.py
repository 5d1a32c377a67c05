"""The samplers of evaluation images: LMS as the authors build it, the others from the model's config."""

import pytest
import torch
from diffusers import LMSDiscreteScheduler

from advunlearn_fast.errors import UserError
from advunlearn_fast.evaluation.generation import build_pipeline, generate_from_conditions
from advunlearn_fast.evaluation.samplers import build_scheduler
from advunlearn_fast.models.diffusion import draw_noise
from advunlearn_fast.models.tiny import tiny_scheduler


def _authors_lms(steps):
    # How the authors' scripts construct it (UnlearnDiffAtk's task, AdvUnlearn's generate-images.py).
    scheduler = LMSDiscreteScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
                                     num_train_timesteps=1000)
    scheduler.set_timesteps(steps)
    return scheduler


def test_lms_is_the_authors_whatever_the_models_timestep_spacing():
    config = dict(tiny_scheduler().config)  # SD's betas, but DDIM's "leading" spacing and steps_offset 1
    assert config["timestep_spacing"] == "leading" and config["steps_offset"] == 1
    for steps in (25, 50, 100):
        ours, theirs = build_scheduler("lms", config, steps), _authors_lms(steps)
        assert torch.equal(ours.timesteps, theirs.timesteps) and torch.equal(ours.sigmas, theirs.sigmas)
        assert float(ours.init_noise_sigma) == float(theirs.init_noise_sigma)
    assert not torch.equal(ours.timesteps, ours.timesteps.round())  # fractional timesteps, kept as they are


def test_other_samplers_follow_the_models_config_with_clip_sample_off():
    config = {**tiny_scheduler().config, "clip_sample": True}
    ddim = build_scheduler("ddim", config, 10)
    assert ddim.config.clip_sample is False and ddim.timesteps.tolist()[:2] == [901, 801]  # leading, offset 1
    assert build_scheduler("pndm", config, 10).config.skip_prk_steps is True
    assert len(build_scheduler("dpm", config, 10).timesteps) == 10
    with pytest.raises(UserError, match="--sampler must be one of lms, ddim, pndm, dpm"):
        build_scheduler("euler", config, 10)


def test_lms_images_are_the_authors_sampling_loop():
    """An SD model's default sampler is LMS, and an image is what the authors' loop makes: noise
    times the initial sigma, each UNet input scaled, the fractional timestep passed as it is."""
    pipe = build_pipeline("tiny", None, torch.device("cpu"))
    assert (pipe.default_sampler, pipe.default_guidance, pipe.default_steps, pipe.utility_steps) == ("lms", 7.5, 50, 100)
    cond, uncond = pipe.encode(["a photo of a cat"]), pipe.encode([""])
    ours = generate_from_conditions(pipe, cond, [7], 7.5, 12, "lms")

    scheduler = _authors_lms(12)
    latents = draw_noise(torch.Generator().manual_seed(7), 1, pipe.latent_shape, "cpu", torch.float32)
    latents = latents * scheduler.init_noise_sigma
    with torch.no_grad():
        for t in scheduler.timesteps:
            model_input = scheduler.scale_model_input(latents, t)
            eps_u = pipe.unet(model_input, t, encoder_hidden_states=uncond).sample
            eps_c = pipe.unet(model_input, t, encoder_hidden_states=cond).sample
            latents = scheduler.step(eps_u + 7.5 * (eps_c - eps_u), t, latents).prev_sample
        theirs = pipe.vae.decode(latents / pipe.vae.config.scaling_factor).sample.clamp(-1, 1)
    torch.testing.assert_close(ours, theirs, rtol=0, atol=1e-5)
    ddim = generate_from_conditions(pipe, cond, [7], 7.5, 12, "ddim")
    assert (ddim - ours).abs().max() > 1e-2
