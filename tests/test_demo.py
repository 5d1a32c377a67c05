"""`advunlearn demo` end to end on the shipped concept world, with budgets cut to CI size.

The real budgets are measured in benchmarks/README.md; here a short ESD must already lower the
concept rate, and the report, grid and resume must behave.
"""

import json

import pytest
from helpers import assert_refused, run_cli
from PIL import Image

from advunlearn_fast import demo


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
    """One demo run shared by the tests that only read its outputs."""
    patch = pytest.MonkeyPatch()
    _cut(patch)
    out = tmp_path_factory.mktemp("demo") / "out"
    extra = out.parent / "copy.json"
    result = run_cli("demo", "--out", str(out), "--json", str(extra), "--device", "cpu", "--quiet")
    patch.undo()
    return out, extra, result


def _cut(patch):
    """CI-sized budgets: a few seconds of training and one attack block per prompt."""
    patch.setattr(demo, "TRAINING", {**demo.TRAINING, "iterations": 60, "lr": 1e-2, "save_every": 30,
                                     "bank_size": 4, "retain_bank_size": 1})
    patch.setattr(demo, "ADVERSARIAL", {**demo.ADVERSARIAL, "warmup": 40, "attack_steps": 2})
    patch.setattr(demo, "ATTACKS", {**demo.ATTACKS, "timesteps": 1, "steps_per_timestep": 2})
    patch.setattr(demo, "CLEAN_PROMPTS", 60)
    patch.setattr(demo, "RETAIN_PROMPTS", 16)
    patch.setattr(demo, "ATTACK_PROMPTS", 4)


def test_demo_reports_every_model_and_a_short_erase_lowers_the_concept_rate(finished):
    out, extra, result = finished
    assert result.exit_code == 0, result.output
    report = json.loads((out / "demo.json").read_text())
    assert json.loads(extra.read_text()) == report
    for name in ("base", "esd", "advunlearn"):
        row = report[name]
        for key in ("concept_rate", "asr_softprompt", "asr_unlearndiffatk", "utility"):
            assert 0.0 <= row[key] <= 1.0, (name, key, row[key])
        assert row["seconds"] >= 0
    assert report["base"]["concept_rate"] >= 0.9
    assert report["base"]["asr_softprompt"] >= 0.9  # the base model draws red without any attack
    assert report["esd"]["concept_rate"] <= report["base"]["concept_rate"] - 0.2
    assert report["base"]["utility"] >= 0.9
    assert set(report["checks"]) and all(v in (True, False, None) for v in report["checks"].values())
    assert report["settings"]["training"]["iterations"] == 60
    for name in ("base", "esd", "advunlearn"):
        assert name in result.output
    for check in report["checks"]:
        assert check in result.output


def test_demo_grid_has_a_row_per_model_and_clean_and_attacked_columns(finished):
    out, _, _ = finished
    grid = Image.open(out / "demo.png")
    cell = 16 * 4 + 4
    assert grid.size == (4 * 3 * cell, 3 * cell)


def test_demo_resume_reuses_finished_stages(finished):
    out, _, _ = finished
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
    out, _, _ = finished
    assert_refused(run_cli("demo", "--out", str(out), "--quiet"), "pass --resume")


def test_demo_refuses_a_concept_outside_the_world(tmp_path):
    result = run_cli("demo", "--concept", "Van Gogh", "--out", str(tmp_path / "o"), "--quiet")
    assert_refused(result, "'Van Gogh' is not a concept of the world")
    assert "red" in result.output
    assert not (tmp_path / "o").exists()


@pytest.mark.parametrize("concept, phrases, attribute", [
    ("red", ["red circle", "red square", "red triangle", "red cross"], "colour"),
    ("Circle", ["red circle", "yellow circle", "green circle", "blue circle", "purple circle"], "shape"),
])
def test_demo_erases_the_concept_on_every_object_of_the_world(concept, phrases, attribute):
    found, value = demo.concept_attribute(concept)
    assert found == attribute
    assert demo.concept_phrases(found, value) == phrases
    assert len(demo.concept_phrases("texture", "striped")) == 20
