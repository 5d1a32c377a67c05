import torch

from advunlearn_fast.world.captions import build_world_tokenizer
from advunlearn_fast.world.model import build_sample_scheduler, build_text_encoder, build_unet
from advunlearn_fast.world.sample import generate


def _random_world_model():
    torch.manual_seed(0)
    tokenizer = build_world_tokenizer()
    return tokenizer, build_text_encoder(tokenizer).eval(), build_unet().eval(), build_sample_scheduler()


def test_generate_is_seeded_and_independent_of_batching():
    parts = _random_world_model()
    prompts = ["a red circle", "a photo of a blue square", "a dotted green cross"]
    a = generate(*parts, prompts, seed=5, steps=3)
    b = generate(*parts, prompts, seed=5, steps=3, batch_size=2)
    c = generate(*parts, prompts, seed=6, steps=3)
    assert a.shape == (3, 3, 16, 16)
    assert a.min() >= -1.0 and a.max() <= 1.0
    torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-4)
    assert not torch.allclose(a, c)


def test_generate_leaves_the_callers_scheduler_alone():
    tokenizer, text_encoder, unet, scheduler = _random_world_model()
    scheduler.set_timesteps(50)
    before = scheduler.timesteps.clone()
    generate(tokenizer, text_encoder, unet, scheduler, ["a red circle"], steps=2, guidance=1.0)
    assert torch.equal(scheduler.timesteps, before)
