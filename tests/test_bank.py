"""The trajectory bank: what its key covers, what a build keeps, what later runs reuse."""

import dataclasses
import json

import numpy as np
import pytest
import torch

import advunlearn_fast.training.bank as bank_module
import advunlearn_fast.training.trainer as trainer
from advunlearn_fast.training.bank import TrajectoryBank, build_groups, samples_per_call
from advunlearn_fast.training.config import TrainConfig


@pytest.fixture(scope="module")
def setup(sd_folder, tmp_path_factory):
    cfg = TrainConfig(model=str(sd_folder), concepts=["church"], out="unused", ddim_steps=3, bank=False,
                      retain_batch=2, device="cpu").validate()
    return trainer.build_setup(cfg)


def _bank(s, root, concepts=("church",), retain=(0, 1), seed=0, size=2, **frozen_changes):
    frozen = dataclasses.replace(s.frozen, **frozen_changes)
    return TrajectoryBank(frozen, root, list(concepts), s.retain_texts, size, 1, seed=seed, retain_used=list(retain))


def _key(bank) -> str:
    return bank.concepts[0]["key"]


def test_key_changes_with_everything_the_entries_depend_on(setup, tmp_path):
    s = setup
    base = _key(_bank(s, tmp_path))
    assert _key(_bank(s, tmp_path)) == base  # and nothing else
    other_unet = type(s.frozen.unet).from_config(s.frozen.unet.config)
    variants = {
        "weights": _bank(s, tmp_path, unet=other_unet),
        "prompt": _bank(s, tmp_path, concept_conds=s.frozen.retain_conds[:1]),
        "guidance": _bank(s, tmp_path, guidance=s.frozen.guidance + 1),
        "steps": _bank(s, tmp_path, scheduler=trainer.ddim_scheduler(s.parts.scheduler_config, 4)),
        "size": _bank(s, tmp_path, latent_shape=(4, 16, 16)),
    }
    for name, bank in variants.items():
        assert _key(bank) != base, name
    assert _key(_bank(s, tmp_path, size=3)) != base
    assert _key(_bank(s, tmp_path, seed=1)) != base


def test_key_changes_with_the_format(setup, tmp_path, monkeypatch):
    base = _key(_bank(setup, tmp_path))
    monkeypatch.setattr(bank_module, "BANK_FORMAT", bank_module.BANK_FORMAT + 1)
    assert _key(_bank(setup, tmp_path)) != base


def test_bank_seed_changes_the_trajectories_not_the_prompt_text(setup, tmp_path):
    a = _bank(setup, tmp_path / "a")
    b = _bank(setup, tmp_path / "b", seed=1)
    noise_a, _ = a.entry_noise_and_timesteps(a.concepts[0])
    noise_b, _ = b.entry_noise_and_timesteps(b.concepts[0])
    assert not torch.equal(noise_a, noise_b)
    # Seeded by the text: conditionings rounded differently (another machine) draw the same noise.
    nudged = dict(a.concepts[0], cond=a.concepts[0]["cond"] + 1e-7)
    assert torch.equal(a.entry_noise_and_timesteps(nudged)[0], noise_a)


def test_an_interrupted_build_keeps_its_finished_entries(setup, tmp_path, monkeypatch):
    bank = _bank(setup, tmp_path, retain=(0, 1, 2))
    real = TrajectoryBank._build_entries
    built = []

    def fail_on_retain(self, entries):
        if entries[0]["preds"] == 1:
            raise KeyboardInterrupt
        built.extend(entries)
        real(self, entries)

    monkeypatch.setattr(TrajectoryBank, "_build_entries", fail_on_retain)
    with pytest.raises(KeyboardInterrupt):
        bank.build(progress=False)
    monkeypatch.setattr(TrajectoryBank, "_build_entries", real)
    assert len(built) == 1 and (built[0]["folder"] / "meta.json").is_file()
    assert not any(e["folder"].exists() for e in bank.retain.values())
    again = _bank(setup, tmp_path, retain=(0, 1, 2))
    assert [e["key"] for e in again.missing()] == [e["key"] for e in again.retain.values()]
    assert again.build(progress=False) == 3


def test_retain_entries_are_reused_across_concepts(setup, tmp_path):
    first = _bank(setup, tmp_path, concepts=("church",))
    assert first.build(progress=False) == 1 + 2
    z = np.array(first.retain[0]["z"])
    second = _bank(setup, tmp_path, concepts=("another concept",), concept_conds=setup.frozen.retain_conds[5:6])
    assert second.build(progress=False) == 1  # only the new concept
    assert np.array_equal(np.array(second.retain[0]["z"]), z)


def test_only_the_retain_prompts_a_run_draws_are_built(setup, tmp_path):
    bank = _bank(setup, tmp_path, retain=(3, 7))
    assert sorted(bank.retain) == [3, 7]
    assert bank.build(progress=False) == 3


def test_entries_of_an_older_format_are_named_and_never_read(setup, tmp_path, capsys):
    # Format 1 (no field) paired z_t with the wrong timestep; format 2 walked from ldm's top timestep.
    older = {"0123456789abcdef01234567": {}, "89abcdef0123456789abcdef": {"format": 2}}
    for name, fields in older.items():
        (tmp_path / name).mkdir(parents=True)
        (tmp_path / name / "meta.json").write_text(json.dumps({"size": 2, "steps": 3, "preds": 2, **fields}))
    bank = _bank(setup, tmp_path)
    assert not {e["folder"].name for e in bank.entries()} & set(older)
    bank.build(progress=False)
    captured = capsys.readouterr()
    err = captured.out + captured.err
    assert "2 entries" in err and "authors' sampler" in err and str(tmp_path) in err


def _unet_calls(unet, build) -> list[int]:
    sizes = []
    hook = unet.register_forward_pre_hook(lambda module, args: sizes.append(args[0].shape[0]))
    try:
        build()
    finally:
        hook.remove()
    return sizes


def test_a_batched_build_gives_the_entries_of_a_one_trajectory_at_a_time_build(setup, tmp_path):
    retain = tuple(range(20))  # more than the 16 prompts per call of fixed-size groups
    batched = _bank(setup, tmp_path / "batched", retain=retain)
    single = _bank(setup, tmp_path / "single", retain=retain)
    single.samples_per_call = 2  # one guided trajectory per UNet call
    batched_calls = _unet_calls(setup.frozen.unet, lambda: batched.build(progress=False))
    single_calls = _unet_calls(setup.frozen.unet, lambda: single.build(progress=False))
    # The tiny model's 8x8 latents fit every retain entry in one call: a guided rollout call per
    # DDIM step (3) for all 20 trajectories, then one call for their targets at every step.
    assert batched_calls.count(2 * len(retain)) == 3 and max(batched_calls) == len(retain) * 3
    assert max(single_calls) == 2
    assert len(batched_calls) < len(single_calls) / 4
    # The same entries up to the fp32 rounding of other batch sizes (about 2e-6 here).
    for a, b in zip(batched.entries(), single.entries(), strict=True):
        assert np.array_equal(a["t"], b["t"])  # drawn per entry from its own seed
        np.testing.assert_allclose(np.array(a["z"]), np.array(b["z"]), rtol=1e-5, atol=1e-5)
        np.testing.assert_allclose(np.array(a["e"]), np.array(b["e"]), rtol=1e-5, atol=1e-5)


def test_entries_are_packed_by_trajectories_per_call():
    def sizes(groups):
        return [[e["size"] for e in group] for group in groups]

    retain = [{"size": 2}] * 40
    assert sizes(build_groups(retain, 32)) == [[2] * 16, [2] * 16, [2] * 8]
    # An entry larger than a call is a group of its own (its rollout is split into calls).
    assert sizes(build_groups([{"size": 2}, {"size": 40}, {"size": 2}, {"size": 2}], 32)) == [[2], [40], [2, 2]]
    assert build_groups([], 32) == []
    # SD v1's 64x64 latents: 64 samples (32 guided trajectories) per call; smaller latents more.
    assert samples_per_call((4, 64, 64)) == 64 and samples_per_call((4, 8, 8)) == 4096
    assert samples_per_call((4, 96, 96)) == 28 and samples_per_call((4, 1024, 1024)) == 2
