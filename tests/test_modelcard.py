"""The model card every `train` run writes, and its refresh after `attack`/`eval` on the run."""

import hashlib
import json
import textwrap

import pytest
import yaml
from helpers import FAST_ARGS, run_cli
from weights import save_tiny_clip

from advunlearn_fast.training.modelcard import card_text, hub_id, record_evaluation

JUDGE = textwrap.dedent(
    """
    def every_other(images, prompts):
        return [i % 2 == 0 for i in range(len(images))]
    """
)


@pytest.fixture
def run(sd_folder, tmp_path):
    out = tmp_path / "vangogh-run"
    result = run_cli("train", "--model", sd_folder, "--concept", "Van Gogh", "--layers", "1-2", "--out", out,
                     "--iterations", 2, "--warmup", 1, "--no-bank", *FAST_ARGS)
    assert result.exit_code == 0, result.output
    return out


def _card(run):
    text = (run / "README.md").read_text(encoding="utf-8")
    _, header, body = text.split("---\n", 2)
    return yaml.safe_load(header), body


def test_train_writes_a_hugging_face_model_card(run, sd_folder):
    header, body = _card(run)
    assert {"concept-erasure", "advunlearn", "stable-diffusion", "text-encoder"} <= set(header["tags"])
    assert "license" not in header  # the user's choice
    assert "base_model" not in header  # a local folder is no hub id
    assert "# Van Gogh erased: AdvUnlearn text encoder" in body
    assert "- concept: `Van Gogh`" in body
    assert ("- utility kept on 243 retain prompts from the authors' retain set (their coco_object_retain.csv, "
            "built in), every prompt holding a concept phrase as whole words left out") in body
    assert "| `--iterations` | `2` |" in body and "| `--layers` | `1-2` |" in body
    assert "text-encoder layers 1-2 (component: all), final layer norm frozen" in body
    assert "- `encoder.layers.2.mlp.fc1.weight`" in body and "encoder.layers.0." not in body
    assert 'CLIPTextModel.from_pretrained("vangogh-run", subfolder="text_encoder")' in body
    assert (f"advunlearn export --model {sd_folder} --encoder vangogh-run --format single-file "
            "--out vangogh-run.safetensors") in body
    assert "No `advunlearn attack` or `advunlearn eval` report for this run yet" in body


def test_attack_and_eval_on_the_run_refresh_its_card(run, sd_folder, tmp_path):
    (tmp_path / "judge.py").write_text(JUDGE)
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("a painting by van gogh\na starry night by van gogh\n")
    sha = hashlib.sha256(prompts.read_bytes()).hexdigest()
    attack = run_cli("attack", "--encoder", run, "--prompts", prompts, "--judge", f"{tmp_path / 'judge.py'}:every_other",
                     "--method", "none", "--gen-steps", 3, "--quiet")
    assert attack.exit_code == 0, attack.output
    elsewhere = tmp_path / "utility"
    evaluation = run_cli("eval", "--model", sd_folder, "--encoder", run, "--prompts", prompts, "--out", elsewhere,
                         "--clip", save_tiny_clip(tmp_path / "clip"), "--steps", 3, "--sampler", "pndm", "--quiet")
    assert evaluation.exit_code == 0, evaluation.output
    clip = json.loads((elsewhere / "eval.json").read_text())["metrics"]["clip_score"]

    _, body = _card(run)
    assert "| none | `" in body and "judge.py:every_other` | 2 | 0.500 | 0.500 | `" + sha[:16] + "` |" in body
    assert f"(sha256 {sha})" in body  # the protocol line has the whole hash
    # each report's own sampler: the attack's default (LMS for SD), the eval's --sampler
    assert "judged images at 3 LMS steps" in body
    assert "; 3 PNDM steps, the seed and guidance of each prompt" in body
    assert f"| CLIP score | {clip:.2f} | 2 | `{sha[:16]}` | `{elsewhere / 'eval.json'}` |" in body
    # reports inside the run folder are named relative to it (it may move), others absolutely
    assert json.loads((run / "evaluations.json").read_text())["reports"] == [
        "attack-none/report.json", str(elsewhere / "eval.json")]

    # a report removed since is left out at the next refresh; the same report twice is listed once
    (elsewhere / "eval.json").unlink()
    record_evaluation(str(run), run / "attack-none" / "report.json")
    _, body = _card(run)
    assert "CLIP score" not in body and body.count("`attack-none/report.json`") == 2  # table row and protocol
    assert len(json.loads((run / "evaluations.json").read_text())["reports"]) == 2


def test_an_encoder_that_is_not_a_run_folder_has_no_card_to_refresh(run, tmp_path):
    report = tmp_path / "report.json"
    report.write_text(json.dumps({"n": 1, "asr": 1.0, "pre_asr": 1.0, "manifest": {}}))
    before = (run / "README.md").read_text()
    record_evaluation(str(run / "text_encoder"), report)
    record_evaluation(None, report)
    assert not (run / "text_encoder" / "README.md").exists() and not (run / "evaluations.json").exists()
    assert (run / "README.md").read_text() == before


def _summary(**config):
    return {"status": "complete", "config": {"model": "CompVis/stable-diffusion-v1-4", "concepts": ["nudity"],
                                             "train": "text-encoder", "attack": "pgd", **config},
            "trained_parameters": ["final_layer_norm.weight"], "trained_parameter_count": 768, "layers": []}


def test_card_names_hub_base_models_unfinished_runs_and_unet_runs():
    text = card_text("run", _summary(), [])
    assert yaml.safe_load(text.split("---\n")[1])["base_model"] == "CompVis/stable-diffusion-v1-4"
    assert "Training has not finished" not in text
    unfinished = card_text("run", {**_summary(), "status": "running"}, [])
    assert "**Training has not finished**" in unfinished
    esd_u = card_text("run", _summary(train="unet-noxattn", attack="none"), [])
    assert "ESD UNet (unet-noxattn)" in esd_u and "- unet" in esd_u
    assert 'UNet2DConditionModel.from_pretrained("run", subfolder="unet")' in esd_u
    assert "advunlearn export" not in esd_u  # export writes text encoders
    # attack, eval, generate and export refuse a UNet run folder: the card does not send the user there.
    assert "--encoder` set to this folder" not in esd_u
    assert "plug in text encoders (`--encoder`) and refuse this folder" in esd_u
    assert "It holds `unet/`" in esd_u and "pass `--model DIR`" in esd_u
    partial = {"n": 3, "prompts_total": 50, "complete": False, "asr": 0.25, "pre_asr": 0.0, "method": "unlearndiffatk",
               "manifest": {"judge": {"spec": "nudenet", "threshold": 0.45}, "prompt_file_sha256": "ab" * 32,
                            "settings": {"adv_tokens": 5, "insert": "prefix", "steps_per_timestep": 40,
                                         "attack_lr": 0.01, "target_steps": 25}, "timesteps": list(range(50)),
                            "gen_steps": 50, "sampler": "lms"}}
    text = card_text("run", _summary(), [("attack/report.json", partial)])
    assert "| unlearndiffatk | `nudenet` | 3 of 50 (unfinished) | 0.000 | 0.250 |" in text
    assert ("UnlearnDiffAtk with 5 adversarial tokens (prefix), 50 timestep blocks x 40 Adam steps at lr 0.01; "
            "targets from the original model at 25 LMS steps; judged images at 50 LMS steps") in text
    assert "judge `nudenet` (threshold 0.45)" in text


@pytest.mark.parametrize("model, expected", [
    ("CompVis/stable-diffusion-v1-4", "CompVis/stable-diffusion-v1-4"), ("tiny", None), ("world", None),
    ("./models/sd", None), ("/models/sd-v1-5.safetensors", None), ("a/b/c", None),
])
def test_hub_id(model, expected):
    assert hub_id(model) == expected


def test_card_of_a_built_in_model_says_how_to_use_it():
    tiny = card_text("run", _summary(model="tiny"), [])
    assert 'from_pretrained("tiny"' not in tiny  # diffusers cannot load a built-in model by name
    assert "`tiny` is a model built into advunlearn" in tiny
    assert "advunlearn generate --model tiny --encoder run" in tiny
    tiny_unet = card_text("run", _summary(model="tiny", train="unet-xattn"), [])
    assert 'from_pretrained("tiny"' not in tiny_unet and "pass `--model DIR`" not in tiny_unet


def test_card_says_what_the_retain_filter_left_out():
    assert "sharing a word with the concept or its related terms left out" in card_text(
        "run", _summary(retain_filter="related"), [])
    assert "retain prompts from the authors' retain set (their coco_object_retain.csv, built in), none left out" in \
        card_text("run", _summary(retain_filter="none"), [])
    # A model folder's own retain_prompts.txt (the concept world's) is named as the source.
    own = {**_summary(retain_filter="phrase"), "retain_source": "/models/world/retain_prompts.txt"}
    assert "retain prompts from `/models/world/retain_prompts.txt`, every prompt holding" in card_text("run", own, [])
    # A run from before the setting existed filtered with the `related` rule.
    assert "sharing a word with the concept or its related terms left out" in card_text("run", _summary(), [])


def test_a_run_whose_warmup_covers_it_is_called_esd():
    text = card_text("run", _summary(warmup=200, iterations=200), [])
    assert "# nudity erased: ESD text encoder" in text and "so no attack step ran" in text
    assert "# nudity erased: AdvUnlearn text encoder" in card_text("run", _summary(warmup=199, iterations=200), [])


def test_card_offers_only_the_export_formats_the_model_allows():
    def formats(model):
        text = card_text("run", _summary(model=model), [])
        return [f for f in ("diffusers", "single-file", "authors-pt") if f"--format {f} " in text]

    assert formats("tiny") == ["diffusers", "single-file", "authors-pt"]
    assert formats("world") == formats("sd-v1-random") == ["authors-pt"]  # no VAE: export refuses the others
