import torch
from diffusers import DDIMScheduler

from advunlearn_fast.generation import build_pipeline, encode_images, generate
from advunlearn_fast.insertion import SpecialTokens, build_layout, prompt_words
from advunlearn_fast.sampling import draw_noise
from advunlearn_fast.text_encoding import token_table
from advunlearn_fast.unlearndiffatk import (
    adversarial_condition, attack_timesteps, diffusion_classifier_loss, optimise_in_blocks, soft_prompt,
    uniform_simplex, unlearndiffatk,
)


def test_timesteps_follow_the_papers_schedule():
    ts = attack_timesteps(50)
    assert ts[:3] == [10, 30, 50] and ts[-1] == 990 and len(ts) == 50
    assert attack_timesteps(3) == [166, 500, 833]


def _tiny_problem():
    pipe = build_pipeline("tiny", None, torch.device("cpu"))
    te = pipe.text_encoder
    layout = build_layout(prompt_words(pipe.tokenizer, "a photo of a cat"), "prefix", 2, SpecialTokens.of(pipe.tokenizer))
    target = encode_images(pipe, generate(pipe, ["a photo of a dog"], [0], [7.5], 3))
    alphas = DDIMScheduler.from_config(pipe.parts.scheduler_config).alphas_cumprod
    noise_gen = torch.Generator().manual_seed(0)
    fixed_noise = draw_noise(noise_gen, 1, tuple(target.shape[1:]), "cpu", torch.float32)

    def loss(adv, t):
        cond = adversarial_condition(te, layout, adv, "torch")
        return diffusion_classifier_loss(pipe.unet, alphas, target, t, fixed_noise, cond)

    return pipe, te, loss


def test_unlearndiffatk_keeps_points_on_the_simplex_and_lowers_its_loss():
    pipe, te, loss = _tiny_problem()
    table = token_table(te).detach()
    seen = []

    def check(relaxed, t):
        seen.append(relaxed.clone())
        return False

    result = unlearndiffatk(
        uniform_simplex(2, table.shape[0]), loss, table, [500, 500], 15, lr=0.05,
        generator=torch.Generator().manual_seed(0), backend="torch", after_block=check,
    )
    assert len(seen) == 2 and result.steps_used == 30 and not result.stopped
    for relaxed in seen:
        assert (relaxed >= 0).all()
        torch.testing.assert_close(relaxed.sum(-1), torch.ones(2), atol=1e-5, rtol=0)
    with torch.no_grad():
        start = loss(table[[0, 0]], 500)
        end = loss(table[result.variables.argmax(-1)], 500)
    assert float(end) < float(start)


def test_soft_prompt_lowers_its_loss_and_stops_when_told():
    pipe, te, loss = _tiny_problem()
    table = token_table(te).detach()
    init = table[[3, 4]].clone()
    result = soft_prompt(init, loss, [500, 500, 500], 10, lr=0.05, backend="torch", after_block=lambda x, t: len(x) > 0)
    assert result.stopped and result.timesteps_used == [500] and result.steps_used == 10
    assert result.losses[-1] < result.losses[0]


def test_block_optimiser_projects_after_every_step():
    calls = []

    def project(x):
        calls.append(1)
        return x.clamp(max=0.5)

    result = optimise_in_blocks(torch.zeros(3), lambda x, t: -(x.sum()), [1, 2], 4, 0.1, 0.0, "torch", after_step=project)
    assert len(calls) == 8 and (result.variables <= 0.5).all() and result.timesteps_used == [1, 2]
