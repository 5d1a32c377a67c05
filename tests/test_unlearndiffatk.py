import pytest
import torch
from diffusers import DDIMScheduler

from advunlearn_fast.evaluation.generation import build_pipeline, encode_images, generate
from advunlearn_fast.evaluation.unlearndiffatk import (
    attack_timesteps,
    diffusion_classifier_loss,
    max_attack_timesteps,
    optimise_in_blocks,
    soft_prompt,
    uniform_simplex,
    unlearndiffatk,
)
from advunlearn_fast.models.diffusion import draw_noise
from advunlearn_fast.models.insertion import SpecialTokens, build_layout, prompt_words, stack_layouts
from advunlearn_fast.models.text_encoding import adversarial_condition, token_table
from advunlearn_fast.training.attack import with_gradient


def test_timesteps_follow_the_papers_schedule():
    ts = attack_timesteps(50)
    assert ts[:3] == [10, 30, 50] and ts[-1] == 990 and len(ts) == 50
    assert attack_timesteps(3) == [166, 500, 833]


def test_timestep_blocks_stay_distinct_and_past_zero_up_to_their_bound():
    most = max_attack_timesteps(1000)
    assert most == 500 and attack_timesteps(most) == list(range(1, 1000, 2))
    for count in (most + 1, 5000):
        with pytest.raises(ValueError, match="do not fit 1000 training timesteps"):
            attack_timesteps(count)


def _tiny_problem():
    """One prompt's attack loss (a batch of one) on the tiny model, with fixed noise."""
    pipe = build_pipeline("tiny", None, torch.device("cpu"))
    te = pipe.text_encoder
    layout = build_layout(prompt_words(pipe.tokenizer, "a photo of a cat"), "prefix", 2, SpecialTokens.of(pipe.tokenizer))
    target = encode_images(pipe, generate(pipe, ["a photo of a dog"], [0], [7.5], 3))
    alphas = DDIMScheduler.from_config(pipe.parts.scheduler_config).alphas_cumprod
    noise_gen = torch.Generator().manual_seed(0)
    fixed_noise = draw_noise(noise_gen, 1, tuple(target.shape[1:]), "cpu", torch.float32)

    def loss(adv, t, active=(0,)):
        cond = adversarial_condition(te, layout, adv, "torch")
        return diffusion_classifier_loss(pipe.unet, alphas, target, t, fixed_noise, cond)

    return pipe, te, loss


def test_unlearndiffatk_keeps_points_on_the_simplex_and_lowers_its_loss():
    pipe, te, loss = _tiny_problem()
    table = token_table(te).detach()
    seen = []

    def check(relaxed, t, active):
        seen.append(relaxed.clone())
        return [False] * len(active)

    (result,) = unlearndiffatk(
        uniform_simplex(2, table.shape[0])[None], with_gradient(loss), table, [500, 500], 15, lr=0.05,
        generators=[torch.Generator().manual_seed(0)], backend="torch", after_block=check,
    )
    assert len(seen) == 2 and result.steps_used == 30 and not result.stopped
    for relaxed in seen:
        assert (relaxed >= 0).all()
        torch.testing.assert_close(relaxed.sum(-1), torch.ones(1, 2), atol=1e-5, rtol=0)
    with torch.no_grad():
        start = loss(table[[0, 0]][None], 500)
        end = loss(table[result.variables.argmax(-1)][None], 500)
    assert float(end) < float(start)


def test_soft_prompt_lowers_its_loss_and_stops_when_told():
    pipe, te, loss = _tiny_problem()
    table = token_table(te).detach()
    init = table[[3, 4]].clone()[None]
    (result,) = soft_prompt(init, with_gradient(loss), [500, 500, 500], 10, lr=0.05, backend="torch",
                            after_block=lambda x, t, active: [True] * len(active))
    assert result.stopped and result.timesteps_used == [500] and result.steps_used == 10
    assert result.losses[-1] < result.losses[0]


def test_block_optimiser_projects_after_every_step():
    calls = []

    def project(x):
        calls.append(1)
        return x.clamp(max=0.5)

    (result,) = optimise_in_blocks(torch.zeros(1, 3), with_gradient(lambda x, t, active: -(x.sum(-1))), [1, 2], 4, 0.1,
                                   0.0, "torch", after_step=project)
    assert len(calls) == 8 and (result.variables <= 0.5).all() and result.timesteps_used == [1, 2]


def test_a_batch_attacks_each_prompt_as_it_would_alone():
    """Prompts with their own layouts (suffixes at different positions), targets and generators:
    attacked together, each gets the losses, stops and tokens of its attack alone, and one that
    stops early leaves the others undisturbed."""
    pipe = build_pipeline("tiny", None, torch.device("cpu"))
    te = pipe.text_encoder
    table = token_table(te).detach()
    special = SpecialTokens.of(pipe.tokenizer)
    prompts = ["a photo of a cat", "a dog", "a painting of a red house"]
    layouts = [build_layout(prompt_words(pipe.tokenizer, p), "suffix", 2, special) for p in prompts]
    assert len({tuple(layout.positions.tolist()) for layout in layouts}) == 3
    targets = encode_images(pipe, generate(pipe, ["a dog", "a cat", "a house"], [0, 1, 2], [7.5] * 3, 3))
    alphas = DDIMScheduler.from_config(pipe.parts.scheduler_config).alphas_cumprod

    def attack(rows):
        generators = [torch.Generator().manual_seed(10 + r) for r in rows]
        stacked = stack_layouts([layouts[r] for r in rows])

        def loss(adv, t, active):
            noise = torch.cat([draw_noise(generators[b], 1, tuple(targets.shape[1:]), "cpu", torch.float32)
                               for b in active])
            cond = adversarial_condition(te, stacked.select(active), adv, "torch")
            return diffusion_classifier_loss(pipe.unet, alphas, targets[[rows[b] for b in active]], t, noise, cond)

        def stop_prompt_1(relaxed, t, active):
            return [rows[b] == 1 for b in active]

        start = uniform_simplex(2, table.shape[0]).repeat(len(rows), 1, 1)
        return unlearndiffatk(start, with_gradient(loss), table, [100, 500, 900], 4, 0.05, generators, "torch",
                              after_block=stop_prompt_1)

    together = attack([0, 1, 2])
    alone = [attack([r])[0] for r in range(3)]
    assert [r.steps_used for r in together] == [12, 4, 12] and [r.stopped for r in together] == [False, True, False]
    for batched, single in zip(together, alone):
        assert batched.timesteps_used == single.timesteps_used and batched.stopped == single.stopped
        torch.testing.assert_close(torch.tensor(batched.losses), torch.tensor(single.losses), rtol=1e-4, atol=1e-6)
        torch.testing.assert_close(batched.variables, single.variables, rtol=1e-3, atol=1e-5)
        assert torch.equal(batched.variables.argmax(-1), single.variables.argmax(-1))


def test_the_step_is_adam_on_the_gradient_clipped_to_one_then_the_projection():
    """The authors' step: the straight-through gradient on the relaxed vectors clipped to [-1, 1]
    (their hardtanh), Adam with lr and weight decay 0.1, then the projection onto the simplex.
    The gradient is far above 1, then far below, then between: unclipped, Adam would move
    the variables differently."""
    from advunlearn_fast.kernels import project_simplex

    table = torch.randn(6, 3, generator=torch.Generator().manual_seed(0))
    scales = [50.0, 0.01, 3.0]

    def step(adv, t, active):  # loss = scale * |adv|^2 per prompt
        scale = scales[len(seen)]
        seen.append(t)
        return scale * (adv**2).sum((1, 2)), 2 * scale * adv

    seen = []
    start = uniform_simplex(2, 6)[None]
    (result,) = unlearndiffatk(start, step, table, [10], 3, lr=0.05, generators=[torch.Generator().manual_seed(1)],
                               backend="torch")
    assert seen == [10, 10, 10] and result.steps_used == 3

    x = project_simplex(start.float()).clone().requires_grad_(True)
    adam = torch.optim.Adam([x], lr=0.05, weight_decay=0.1)
    draws = torch.Generator().manual_seed(1)
    for scale in scales:
        tokens = torch.multinomial(x.detach()[0], 1, generator=draws).squeeze(-1)
        grad_embeddings = 2 * scale * table[tokens]
        x.grad = (grad_embeddings @ table.T).clamp(-1, 1)[None]
        adam.step()
        x.data = project_simplex(x.detach())
    torch.testing.assert_close(result.variables, x.detach()[0], rtol=0, atol=1e-6)


def test_adversarial_token_budget_follows_the_authors_configs():
    from advunlearn_fast.evaluation.robustness import AttackSettings, default_adv_tokens

    assert default_adv_tokens("nudity") == default_adv_tokens("naked") == 5
    assert [default_adv_tokens(c) for c in ("Van Gogh", "vincent van gogh", "church", "garbage truck", "parachute",
                                            "tench")] == [3] * 6
    # The authors' own spellings (their task.concept values and file names), and others of the same concepts.
    assert [default_adv_tokens(c) for c in ("vangogh", "Van Gogh style", "Van_Gogh", "garbage_truck", "garbage-truck",
                                            "Garbage Truck", "garbagetruck", "Church")] == [3] * 8
    assert default_adv_tokens(None) == default_adv_tokens("teapot") == 5
    settings = {"model": "tiny", "encoder": None, "prompts": "p.txt", "judge": "nudenet", "out": "o"}
    assert AttackSettings(**settings, concept="church").validate().adv_tokens == 3
    assert AttackSettings(**settings, concept="church", adv_tokens=4).validate().adv_tokens == 4
