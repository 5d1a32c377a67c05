"""--attack-restarts R: R candidates in one batched UNet call per attack step; the best one is used.

R = 1 is the golden run of test_train_cli.py (unchanged behaviour).
"""

import json

import pytest
from helpers import run_cli

import advunlearn_fast.training.trainer as trainer
from advunlearn_fast.training.costs import CONDITIONING_BACKWARD

STEPS, RESTARTS = 3, 3
ARGS = ["--concept", "church", "--iterations", 2, "--warmup", 0, "--layers", "all", "--attack-init", "latest",
        "--ddim-steps", 4, "--attack-steps", STEPS, "--retain-batch", 2, "--quiet", "--attack-restarts", RESTARTS,
        "--bank", "--device", "cpu"]  # a bank: the counted UNet calls are the attack's; the CPU: no CUDA graph


def test_restarts_share_one_unet_call_per_step_and_the_best_is_used(sd_folder, tmp_path, monkeypatch):
    real_attack, rounds = trainer.run_attack, []

    def counting_attack(s, concept, adv_init, generator):
        calls = []
        hook = s.unet.register_forward_pre_hook(lambda module, args, kwargs: calls.append(args[0].shape[0]),
                                                with_kwargs=True)
        try:
            best, losses, candidates_end = real_attack(s, concept, adv_init, generator)
        finally:
            hook.remove()
        rounds.append({"init": adv_init, "best": best, "losses": losses, "end": candidates_end, "calls": calls})
        return best, losses, candidates_end

    monkeypatch.setattr(trainer, "run_attack", counting_attack)
    out = tmp_path / "run"
    result = run_cli("train", "--model", sd_folder, "--out", out, *ARGS)
    assert result.exit_code == 0, result.output
    log = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]

    assert len(rounds) == 2
    for r, record in zip(rounds, log):
        assert r["init"].shape[0] == RESTARTS
        assert r["calls"] == [RESTARTS] * STEPS  # one UNet call per step, all candidates in it
        assert record["unet_fwd_equiv"]["attack"] == pytest.approx(RESTARTS * STEPS * (1 + CONDITIONING_BACKWARD))
        assert record["attack_loss_end_candidates"] == r["end"]
        assert record["attack_loss_end"] == min(r["end"])
        assert all(record["attack_loss_end"] <= loss for loss in r["end"])
        assert len(set(r["end"])) == RESTARTS  # different starts, different attacks
    # The next round starts from the chosen candidate, and its other candidates are fresh.
    assert (rounds[1]["init"][0] == rounds[0]["best"]).all()
    assert not (rounds[1]["init"][1] == rounds[0]["best"]).all()


def test_a_candidate_that_blew_up_is_never_chosen_and_the_log_stays_json(sd_folder, tmp_path, monkeypatch):
    real_attack, chosen = trainer.soft_prompt_attack, []

    def first_candidate_blows_up(*args, **kwargs):
        candidates, losses = real_attack(*args, **kwargs)
        losses[-1, 0] = float("nan")  # argmin alone would pick it
        chosen.append(candidates)
        return candidates, losses

    monkeypatch.setattr(trainer, "soft_prompt_attack", first_candidate_blows_up)
    out = tmp_path / "run"
    result = run_cli("train", "--model", sd_folder, "--out", out, *ARGS)
    assert result.exit_code == 0, result.output

    def refuse(constant):
        raise AssertionError(f"log.jsonl holds {constant}")

    log = [json.loads(line, parse_constant=refuse) for line in (out / "log.jsonl").read_text().splitlines()]
    for record in log:
        ends = record["attack_loss_end_candidates"]
        assert ends[0] is None
        assert record["attack_loss_end"] == min(ends[1:])
