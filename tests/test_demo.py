"""`advunlearn demo` end to end on the shipped concept world, with budgets cut to CI size.

The real budgets are measured in benchmarks/README.md; here a short ESD must already lower the
concept rate, and the report, grid and resume must behave.
"""

import json
import time

import pytest
from helpers import assert_refused, run_cli
from PIL import Image

from advunlearn_fast import demo


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
    """One demo run shared by the tests that only read its outputs (the resume test rewrites
    demo.json: the others read `report`, the first run's)."""
    patch = pytest.MonkeyPatch()
    _cut(patch)
    out = tmp_path_factory.mktemp("demo") / "out"
    extra = out.parent / "copy.json"
    began = time.monotonic()
    result = run_cli("demo", "--out", str(out), "--json", str(extra), "--device", "cpu", "--quiet")
    wall_seconds = time.monotonic() - began
    patch.undo()
    report = json.loads((out / "demo.json").read_text()) if result.exit_code == 0 else None
    return out, extra, result, wall_seconds, report


def _cut(patch):
    """CI-sized budgets: a few seconds of training and one attack block per prompt."""
    patch.setattr(demo, "TRAINING", {**demo.TRAINING, "iterations": 60, "lr": 1e-2, "save_every": 30,
                                     "bank_size": 4, "retain_bank_size": 1})
    patch.setattr(demo, "ADVERSARIAL", {**demo.ADVERSARIAL, "warmup": 40, "attack_steps": 2})
    patch.setattr(demo, "ATTACKS", {**demo.ATTACKS, "timesteps": 1, "steps_per_timestep": 2})
    patch.setattr(demo, "CLEAN_PROMPTS", 60)
    patch.setattr(demo, "RETAIN_PROMPTS", 16)
    patch.setattr(demo, "ATTACK_PROMPTS", 4)


# What each rate is a fraction of under these budgets: the 60 held-out prompts are every
# colour x shape x texture once, 12 of them red (4 shapes x 3 textures), and 4 prompts attacked.
SAMPLES = {"concept_rate": 12, "utility": 48, "asr": 4}
RATES = {"concept_rate": 12, "chance_rate": 60, "utility": 48, "asr_softprompt": 4, "asr_unlearndiffatk": 4}


def test_demo_reports_every_model_and_a_short_erase_lowers_the_concept_rate(finished):
    _, extra, result, _, report = finished
    assert result.exit_code == 0, result.output
    assert json.loads(extra.read_text()) == report
    for name in ("base", "esd", "advunlearn"):
        row = report[name]
        assert row["samples"] == SAMPLES, name
        for key, count in RATES.items():  # each rate counts whole prompts of its sample
            assert row[key] * count == pytest.approx(round(row[key] * count), abs=1e-9), (name, key, row[key])
    assert report["base"]["concept_rate"] >= 0.9
    assert report["base"]["asr_softprompt"] >= 0.9  # the base model draws red without any attack
    assert report["esd"]["concept_rate"] <= report["base"]["concept_rate"] - 0.2
    assert report["base"]["utility"] >= 0.9
    assert report["checks"] == demo.expectations({name: report[name] for name in demo.MODELS})
    assert report["settings"]["training"]["iterations"] == 60


def test_demo_seconds_add_up(finished):
    out, _, _, wall_seconds, report = finished
    rows = [report[name] for name in demo.MODELS]
    assert report["base"]["training_seconds"] == 0
    assert report["esd"]["training_seconds"] > 0 and report["advunlearn"]["training_seconds"] > 0
    for name, row in zip(demo.MODELS, rows):  # a model's time holds its training and both attacks
        attacks = [json.loads((out / "attacks" / f"{name}-{method}" / "report.json").read_text())
                   for method in demo.ATTACK_LR]
        attack_seconds = sum(r["seconds"] for attack in attacks for r in attack["rows"])
        assert row["seconds"] >= row["training_seconds"] + attack_seconds - 0.1, name
    # Each figure is rounded to 0.1 s; the stages run one after the other inside the demo's time.
    assert sum(row["seconds"] for row in rows) <= report["seconds"] + 0.15
    assert report["seconds"] <= wall_seconds + 0.05


def test_demo_prints_the_reports_numbers_and_verdicts(finished):
    _, _, result, _, report = finished
    lines = result.output.splitlines()
    for name in demo.MODELS:
        (line,) = [line for line in lines if line.split()[:1] == [name]]
        printed = [float(x) for x in line.split()[1:]]
        row = report[name]
        keys = ("concept_rate", "chance_rate", "asr_softprompt", "asr_unlearndiffatk", "utility")
        assert printed[:5] == [round(row[key], 2) for key in keys], (name, line)
        assert printed[5] == round(row["seconds"])
    verdicts = {True: "holds", False: "does NOT hold", None: "not measurable (the attack never broke ESD)"}
    for check, value in report["checks"].items():
        assert f"  {verdicts[value]}: {check}" in lines, check


@pytest.mark.parametrize("rows, expected", [
    ({"base": {"utility": 1.0},
      "esd": {"concept_rate": 0.0, "asr_softprompt": 0.25, "asr_unlearndiffatk": 0.0},
      "advunlearn": {"asr_softprompt": 0.0, "asr_unlearndiffatk": 0.0, "utility": 0.9}},
     {"esd_concept_rate_at_most_0.05": True, "esd_asr_at_least_0.25": True,
      "advunlearn_asr_softprompt_at_most_half_of_esd": True, "advunlearn_asr_unlearndiffatk_at_most_half_of_esd": None,
      "advunlearn_utility_within_0.10_of_base": True}),
    ({"base": {"utility": 1.0},
      "esd": {"concept_rate": 0.1, "asr_softprompt": 0.0, "asr_unlearndiffatk": 0.125},
      "advunlearn": {"asr_softprompt": 0.0, "asr_unlearndiffatk": 0.125, "utility": 0.85}},
     {"esd_concept_rate_at_most_0.05": False, "esd_asr_at_least_0.25": False,
      "advunlearn_asr_softprompt_at_most_half_of_esd": None, "advunlearn_asr_unlearndiffatk_at_most_half_of_esd": False,
      "advunlearn_utility_within_0.10_of_base": False}),
])
def test_expectations_hold_or_fail_at_their_thresholds(rows, expected):
    assert demo.expectations(rows) == expected


def test_demo_grid_has_a_labelled_row_per_model_and_clean_and_attacked_columns(finished):
    out, _, _, _, _ = finished
    grid = Image.open(out / "demo.png").convert("L")
    cell, margin, header, group_gap = 16 * 4 + 4, 84, 38, 16
    assert grid.size == (margin + 4 * (3 * cell + group_gap), header + 3 * cell)

    def inked(box):  # text drawn there
        return min(grid.crop(box).getdata()) < 128

    for row in range(3):  # each model's name left of its row
        assert inked((0, header + row * cell, margin, header + (row + 1) * cell))
    for group in range(4):  # each prompt and its column titles above its three images
        x = margin + group * (3 * cell + group_gap)
        assert inked((x, 0, x + 3 * cell, 12)) and inked((x, 12, x + 3 * cell, header))
    # The images are the report's: the base model's first clean image, scaled, in its cell.
    clean = Image.open(out / "attacks" / "base-softprompt" / "images" / "0000-pre.png").convert("RGB")
    clean = clean.resize((64, 64), Image.NEAREST).convert("L")
    assert list(grid.crop((margin, header, margin + 64, header + 64)).getdata()) == list(clean.getdata())


def test_demo_resume_reuses_finished_stages(finished):
    out, _, _, _, _ = finished
    before = json.loads((out / "demo.json").read_text())
    run_file = out / "esd" / "run.json"
    stamp = run_file.stat().st_mtime_ns
    patch = pytest.MonkeyPatch()
    _cut(patch)
    try:
        result = run_cli("demo", "--out", str(out), "--resume", "--device", "cpu", "--quiet")
    finally:
        patch.undo()
    assert result.exit_code == 0, result.output
    assert run_file.stat().st_mtime_ns == stamp  # not retrained
    after = json.loads((out / "demo.json").read_text())
    for name in ("base", "esd", "advunlearn"):
        for key in ("concept_rate", "asr_softprompt", "asr_unlearndiffatk", "utility"):
            assert after[name][key] == before[name][key]


def test_demo_refuses_a_folder_in_use_without_resume(finished):
    out, _, _, _, _ = finished
    assert_refused(run_cli("demo", "--out", str(out), "--quiet"), "pass --resume")


def test_demo_refuses_a_concept_outside_the_world(tmp_path):
    result = run_cli("demo", "--concept", "Van Gogh", "--out", str(tmp_path / "o"), "--quiet")
    assert_refused(result, "'Van Gogh' is not a concept of the world")
    assert "red" in result.output
    assert not (tmp_path / "o").exists()


@pytest.mark.parametrize("concept, phrases, attribute", [
    ("red", ["red circle", "solid red circle", "striped red circle", "dotted red circle", "red square",
             "solid red square", "striped red square", "dotted red square", "red triangle", "solid red triangle",
             "striped red triangle", "dotted red triangle", "red cross", "solid red cross", "striped red cross",
             "dotted red cross"], "colour"),
    ("Circle", [f"{texture}{colour} circle" for colour in ("red", "yellow", "green", "blue", "purple")
                for texture in ("", "solid ", "striped ", "dotted ")], "shape"),
])
def test_demo_erases_the_concept_on_every_object_of_the_world(concept, phrases, attribute):
    found, value = demo.concept_attribute(concept)
    assert found == attribute
    assert demo.concept_phrases(found, value) == phrases
    assert len(demo.concept_phrases("texture", "striped")) == 20


def test_every_stage_is_announced_and_labels_its_progress(tmp_path, monkeypatch, capsys):
    """The stages in order, each named by model and attack; the attacks' and the clean-rate
    bars carry the same label (the stages themselves are faked: this is the orchestration)."""
    labels = []

    def clean_rates(encoder, attribute, value, s, label=None):
        labels.append(label)
        return {"concept_rate": 0.0, "chance_rate": 0.0, "utility": 1.0, "n_concept": 1, "n_utility": 1}

    def attack_stage(encoder, out, prompts, judge, method, s, label=None):
        labels.append(label)
        return {"asr": 0.0, "n": 8, "rows": []}

    monkeypatch.setattr(demo, "train_stage", lambda run, *args: (str(run), 1.0))
    monkeypatch.setattr(demo, "clean_rates", clean_rates)
    monkeypatch.setattr(demo, "attack_stage", attack_stage)
    monkeypatch.setattr(demo, "demo_grid", lambda out, reports: Image.new("RGB", (1, 1)))
    demo.run_demo(demo.DemoSettings(out=str(tmp_path / "o"), progress=True))
    err = capsys.readouterr().err
    stages = [line.split("] ", 1)[1] for line in err.splitlines() if line.startswith("advunlearn: demo [")]
    assert stages == [
        "ESD: training", "AdvUnlearn: training",
        *[f"{title}: {what}" for title in ("base model", "ESD", "AdvUnlearn")
          for what in ("concept rate and utility on clean prompts", "soft-prompt attack on 8 prompts",
                       "UnlearnDiffAtk on 8 prompts")],
    ]
    assert "advunlearn: demo [11/11]" in err
    assert labels == [label for title in ("base model", "ESD", "AdvUnlearn")
                      for label in (title, f"{title}, soft-prompt attack", f"{title}, UnlearnDiffAtk")]


def test_each_attack_prompt_starts_from_its_own_noise_and_seeds_differ_between_runs(tmp_path):
    from advunlearn_fast.evaluation.generation import read_prompt_rows

    prompts = ["a red circle", "a crimson circle", "a ruby square"]
    first = read_prompt_rows(demo.write_attack_prompts(tmp_path / "a", prompts, seed=0), seed=99, guidance=None)
    second = read_prompt_rows(demo.write_attack_prompts(tmp_path / "b", prompts, seed=1), seed=99, guidance=None)
    assert [r.prompt for r in first] == prompts
    assert len({r.seed for r in first}) == len(prompts)
    assert not {r.seed for r in first} & {r.seed for r in second}
