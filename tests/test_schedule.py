"""z_t is paired with t as the authors pair them, in both engines and in the trajectory bank.

The authors' DDIM sampler (ldm/models/diffusion/ddim.py, reached through
train-scripts/utils/util.py's sample_model with t_start = -1 and till_T = k) makes ldm's
timesteps 1, 1 + T//K, ... (one per entry of range(0, T, T//K)), drops the top one
(`timesteps[:t_start]`), walks the rest down from noise and breaks right after the step whose
index is k-1; for k = 0 it runs them all. t is then drawn in [k*T/K, (k+1)*T/K). `authors_walk`
transcribes that walk in a few lines of our own, with the ldm sampler's own alphas. The cut
changes nothing when K does not divide T (ldm then makes K + 1 timesteps, K = 6 here) and drops
a step when it does (K = 10, and the published 50).
"""

import json

import pytest
import torch

import advunlearn_fast.training.trainer as trainer
from advunlearn_fast.models.diffusion import ddim_scheduler, draw_noise, predict_noise
from advunlearn_fast.models.loading import load_model
from advunlearn_fast.training.bank import TrajectoryBank
from advunlearn_fast.training.config import TrainConfig
from advunlearn_fast.training.sampling import draw_step_and_timestep

# DDIM steps of the conformance tests: one that 1000 does not divide, one that it does (every
# index of both), and the published count (its ends and middle: its walks are long on a CPU).
STEP_COUNTS = [6, 10, 50]


def indices(K: int) -> list[int]:
    return list(range(K)) if K <= 10 else [0, 1, 2, K // 2, K - 2, K - 1]


@torch.no_grad()
def authors_walk(unet, abar, cond, uncond, noise, k, ddim_steps, guidance):
    T = len(abar)
    timesteps = [s + 1 for s in range(0, T, T // ddim_steps)]
    alphas = abar[timesteps]
    alphas_prev = torch.cat([abar[:1], abar[timesteps[:-1]]])
    walked = timesteps[:-1]  # t_start = -1
    x = noise
    for i in range(len(walked)):
        index = len(walked) - 1 - i
        both = torch.cat([uncond.expand_as(cond), cond])
        e_u, e_c = predict_noise(unet, torch.cat([x, x]), walked[index], both).chunk(2)
        e = e_u + guidance * (e_c - e_u)
        x0 = (x - (1 - alphas[index]).sqrt() * e) / alphas[index].sqrt()
        x = alphas_prev[index].sqrt() * x0 + (1 - alphas_prev[index]).sqrt() * e
        if index + 1 == k:
            break
    return x


def _setup(sd_folder, tmp_path, K, **overrides):
    cfg = TrainConfig(
        model=str(sd_folder), concepts=["church"], out=str(tmp_path / "unused"), ddim_steps=K, retain_batch=2,
        bank_dir=str(tmp_path / "bank"), bank_size=2, retain_bank_size=1, iterations=1, device="cpu", **overrides,
    ).validate()
    return trainer.build_setup(cfg)


def _expected(s, k, noise):
    f = s.frozen
    return authors_walk(f.unet, f.scheduler.alphas_cumprod, f.concept_conds[:1], f.uncond, noise, k,
                        f.ddim_steps, f.guidance)


def _seed_for_each_index(K: int) -> dict[int, int]:
    """For each of `indices(K)`, the first seed whose draw is that k (found without a rollout)."""
    wanted, seeds = set(indices(K)), {}
    seed = 0
    while len(seeds) < len(wanted):
        k, _ = draw_step_and_timestep(torch.Generator().manual_seed(seed), K, 1000)
        if k in wanted:
            seeds.setdefault(k, seed)
        seed += 1
    return seeds


@pytest.mark.parametrize("K", STEP_COUNTS)
@pytest.mark.parametrize("engine", ["reference", "fast"])
def test_fresh_rollouts_end_where_the_authors_walk_ends(sd_folder, tmp_path, engine, K):
    """The reference engine and the fast engine with --no-bank: a draw's z_t, for each k."""
    s = _setup(sd_folder, tmp_path, K, engine=engine, bank=False)
    f = s.frozen
    for k, seed in sorted(_seed_for_each_index(K).items()):
        t, z, e_p = s.source.attack_draw(0, torch.Generator().manual_seed(seed))
        replay = torch.Generator().manual_seed(seed)
        _, t_expected = draw_step_and_timestep(replay, K, 1000)
        noise = draw_noise(replay, 1, f.latent_shape, "cpu", torch.float32)
        assert int(t) == t_expected and k * 1000 // K <= int(t) < (k + 1) * 1000 // K
        torch.testing.assert_close(z, _expected(s, k, noise), rtol=1e-5, atol=1e-6)
        with torch.no_grad():
            torch.testing.assert_close(e_p, predict_noise(f.unet, z, int(t), f.concept_conds[:1]))


@pytest.mark.parametrize("K", STEP_COUNTS)
def test_bank_holds_where_the_authors_walk_ends(sd_folder, tmp_path, K):
    s = _setup(sd_folder, tmp_path, K, engine="fast", bank=True)
    bank = s.source
    assert isinstance(bank, TrajectoryBank)
    entry = bank.concepts[0]
    noise, timesteps = bank.entry_noise_and_timesteps(entry)
    assert (entry["t"] == timesteps.numpy()).all()
    for i in range(entry["size"]):
        for k in range(K):
            assert k * 1000 // K <= int(entry["t"][i, k]) < (k + 1) * 1000 // K
        for k in indices(K):
            expected = _expected(s, k, noise[i : i + 1])
            torch.testing.assert_close(torch.from_numpy(entry["z"][i, k].copy())[None], expected, rtol=1e-4, atol=1e-5)


class NoiseLevels:
    """Hooks on a UNet: it predicts zero noise, and every call records each latent's std and t.

    With a zero prediction a DDIM step only rescales its latent, so a walk from unit noise at the
    first DDIM timestep s_0 leaves a latent at noise level tau with std sqrt(abar_tau / abar_s_0)
    (the closed form). A latent paired with its own t matches that std for t."""

    def __init__(self, unet):
        self.calls = []
        unet.register_forward_pre_hook(self.record, with_kwargs=True)
        unet.register_forward_hook(lambda module, args, kwargs, out: type(out)(sample=out.sample * 0), with_kwargs=True)

    def record(self, module, args, kwargs):
        z, t = args[0], args[1]
        self.calls += list(zip(z.detach().float().flatten(1).std(1).tolist(), t.expand(z.shape[0]).tolist()))


@pytest.mark.parametrize("engine, bank", [("reference", False), ("fast", False), ("fast", True)])
def test_every_unet_call_sees_a_latent_at_its_own_noise_level(sd_folder, tmp_path, monkeypatch, engine, bank):
    """Targets, attack, defender, retain and bank: all of them, 50 DDIM steps as published."""
    parts = load_model(str(sd_folder))
    levels = NoiseLevels(parts.unet)
    monkeypatch.setattr(trainer, "load_model", lambda *args: parts)
    cfg = TrainConfig(
        model=str(sd_folder), concepts=["church"], out=str(tmp_path / "run"), iterations=6, warmup=2, attack_steps=3,
        retain_batch=2, bank=bank, bank_dir=str(tmp_path / "bank"), bank_size=2, retain_bank_size=1, engine=engine,
        device="cpu",
    ).validate()
    trainer.train(cfg, progress=False)
    scheduler = ddim_scheduler(parts.scheduler_config, 50)
    abar = scheduler.alphas_cumprod
    first = 961  # the walk's first timestep at K = 50: ldm's top one, 981, is dropped
    assert len(levels.calls) > 100
    ratios = [std / float((abar[t] / abar[first]).sqrt()) for std, t in levels.calls]
    assert all(0.5 < r < 2 for r in ratios), sorted(ratios)[:3] + sorted(ratios)[-3:]
    # The walk went all the way down as well as staying near the top.
    ts = [t for _, t in levels.calls]
    assert min(ts) < 100 and max(ts) > 900
    assert json.loads((tmp_path / "run" / "run.json").read_text())["status"] == "complete"
    # log.jsonl names the DDIM index each defender step drew, and its t lies in that index's bucket.
    log = [json.loads(line) for line in (tmp_path / "run" / "log.jsonl").read_text().splitlines()]
    assert len(log) == 6 and all(0 <= r["k"] < 50 and r["k"] * 20 <= r["t"] < (r["k"] + 1) * 20 for r in log), log
