"""benchmarks/world_study.py: its intervals and claims, and one seed end to end at CI budgets."""

import json

import numpy as np

from advunlearn_fast import demo
from benchmarks import world_study


def test_bootstrap_intervals_cover_the_mean_and_shrink_with_more_prompts():
    rng = np.random.default_rng(0)
    few = [[1, 0, 0, 1], [0, 1, 0, 0], [1, 1, 0, 0]]
    many = [x * 10 for x in few]
    lo_few, hi_few = np.percentile(world_study.bootstrap(few, rng), [2.5, 97.5])
    lo_many, hi_many = np.percentile(world_study.bootstrap(many, rng), [2.5, 97.5])
    mean = np.mean([np.mean(x) for x in few])
    assert lo_few < mean < hi_few and lo_many < mean < hi_many
    assert hi_many - lo_many < hi_few - lo_few
    assert set(world_study.bootstrap([[1, 1], [1, 1]], rng)) == {1.0}


def test_differences_resample_both_models_together():
    rng = np.random.default_rng(0)
    same = [[1, 0, 1, 0], [0, 0, 1, 1]]
    assert set(world_study.bootstrap(same, rng, same)) == {0.0}  # paired: identical outcomes never differ
    lower = [[0, 0, 0, 0], [0, 0, 0, 0]]
    assert (world_study.bootstrap(same, rng, lower) >= 0).all()


def test_runs_without_a_bank_train_on_the_first_seeds_and_are_compared_on_those():
    models = list(world_study.MODELS)
    assert world_study.models_for_seed(models, 0, 1) == models
    later = world_study.models_for_seed(models, 1, 1)
    assert "advunlearn_reference" not in later and "advunlearn_no_bank" not in later and "advunlearn_big_bank" in later
    outcomes = {0: {"advunlearn": {}, "advunlearn_reference": {}}, 1: {"advunlearn": {}}, 2: {"advunlearn": {}}}
    assert world_study.seeds_of(outcomes, "advunlearn") == [0, 1, 2]
    assert world_study.seeds_of(outcomes, "advunlearn", "advunlearn_reference") == [0]


def _table(**means):
    return {name: {m: {"mean": v, "ci95": [v - 0.1, v + 0.1], "per_seed": [v]} for m, v in row.items()}
            for name, row in means.items()}


def test_claims_are_checked_not_assumed():
    row = dict(concept_rate=0.0, asr_unlearndiffatk=0.5, asr_softprompt=0.6, utility=0.9)
    table = _table(base=dict(row, utility=0.95), esd=row,
                   advunlearn=dict(row, asr_unlearndiffatk=0.2, asr_softprompt=0.1, utility=0.92))
    holds = world_study.claims(table, {}, np.random.default_rng(0))["holds"]
    assert holds == {
        "esd_concept_rate_at_most_0.05": True, "esd_asr_unlearndiffatk_at_least_0.40": True,
        "advunlearn_asr_unlearndiffatk_at_most_half_of_esd": True, "advunlearn_asr_softprompt_at_most_half_of_esd": True,
        "advunlearn_asr_unlearndiffatk_interval_wholly_below_esd": True, "advunlearn_utility_within_0.05_of_base": True,
    }
    table["advunlearn"]["asr_unlearndiffatk"]["ci95"] = [0.2, 0.45]  # overlaps ESD's [0.4, 0.6]
    table["advunlearn"]["utility"]["mean"] = 0.85
    holds = world_study.claims(table, {}, np.random.default_rng(0))["holds"]
    assert not holds["advunlearn_asr_unlearndiffatk_interval_wholly_below_esd"]
    assert not holds["advunlearn_utility_within_0.05_of_base"]


def test_one_seed_end_to_end(tmp_path, monkeypatch):
    monkeypatch.setattr(demo, "TRAINING", {**demo.TRAINING, "iterations": 6, "save_every": 3, "bank_size": 2,
                                           "retain_bank_size": 1, "ddim_steps": 4})
    monkeypatch.setattr(demo, "ADVERSARIAL", {**demo.ADVERSARIAL, "warmup": 3, "attack_steps": 2})
    monkeypatch.setattr(demo, "ATTACKS", {**demo.ATTACKS, "timesteps": 1, "steps_per_timestep": 2})
    monkeypatch.setattr(demo, "CLEAN_PROMPTS", 60)
    monkeypatch.setattr(demo, "RETAIN_PROMPTS", 8)
    out = tmp_path / "results.json"
    result = world_study.main(["--quick", "--seeds", "3", "--attack-prompts", "6", "--models", "esd", "advunlearn",
                               "advunlearn_reference", "--out", str(tmp_path / "work"), "--json", str(out), "--quiet"])
    saved = json.loads(out.read_text())
    assert saved["seeds"] == [3] and saved["n_attack_prompts"] == 6
    assert set(saved["models"]) == {"esd", "advunlearn", "advunlearn_reference"}
    for name, row in saved["models"].items():
        for metric in world_study.METRICS:
            cell = row[metric]
            assert cell["ci95"][0] <= cell["mean"] <= cell["ci95"][1] and cell["per_seed"] == [cell["mean"]], (name, metric)
    assert len(saved["outcomes"]["3"]["esd"]["asr_softprompt"]) == 6
    # The seed is the training run's and its trajectory bank's.
    config = json.loads((tmp_path / "work" / "seed-3" / "esd" / "run.json").read_text())["config"]
    assert config["seed"] == config["bank_seed"] == 3
    reference = json.loads((tmp_path / "work" / "seed-3" / "advunlearn_reference" / "run.json").read_text())["config"]
    assert reference["engine"] == "reference"
    pair = result["claims"]["engine_differences"]["advunlearn-advunlearn_reference"]
    assert set(pair) == set(world_study.METRICS) and pair["utility"]["seeds"] == [3]


def test_bank_variants_differ_from_advunlearn_only_in_how_z_t_is_sampled(tmp_path):
    s = demo.DemoSettings(concept="red", out=str(tmp_path), seed=1)
    configs = {name: demo.training_config(tmp_path / name, "colour", "red", name, s).__dict__
               for name in ("advunlearn", "advunlearn_no_bank", "advunlearn_big_bank")}
    base = configs["advunlearn"]

    def changed(name):
        return {k: v for k, v in configs[name].items() if k != "out" and v != base[k]}

    assert changed("advunlearn_no_bank") == {"bank": False}
    assert changed("advunlearn_big_bank") == {"bank": True, "bank_size": 4 * base["bank_size"],
                                              "retain_bank_size": 4 * base["retain_bank_size"]}


def test_engine_comparisons_name_each_pair_and_its_seeds():
    same, fewer = [[1, 0, 1, 0]] * 2, [[0, 0, 0, 0]] * 2
    outcomes = {seed: {name: {m: (fewer if name == "advunlearn" else same)[seed] for m in world_study.METRICS}
                       for name in ("advunlearn", "advunlearn_reference", "advunlearn_no_bank")} for seed in (0, 1)}
    row = dict(concept_rate=0.0, asr_unlearndiffatk=0.5, asr_softprompt=0.5, utility=0.9)
    table = _table(advunlearn=row, advunlearn_reference=row, advunlearn_no_bank=row)
    found = world_study.claims(table, outcomes, np.random.default_rng(0))
    assert set(found["engine_differences"]) == {"advunlearn-advunlearn_reference", "advunlearn_no_bank-advunlearn_reference",
                                                "advunlearn-advunlearn_no_bank"}
    assert found["holds"]["advunlearn_no_bank_indistinguishable_from_advunlearn_reference"]
    assert not found["holds"]["advunlearn_indistinguishable_from_advunlearn_reference"]
    assert found["engine_differences"]["advunlearn-advunlearn_no_bank"]["utility"]["difference_ci95"][1] < 0
