"""End-to-end `advunlearn train` through click on the tiny model."""

import json

import numpy as np
import pytest
import torch
from helpers import FAST_ARGS, assert_refused, run_cli
from safetensors.torch import load_file
from transformers import CLIPTextModel

from advunlearn_fast.evaluation.generation import load_encoder
from advunlearn_fast.models.loading import load_model

# Losses of the first three iterations of the run below (fast engine, trajectory bank),
# seed 0, CPU, torch 2.13: a change to the algorithm, the sampling or the RNG order changes them.
# The bank's trajectories are seeded by the prompt text, so float rounding that differs between
# machines moves them by rounding only.
# They detect change; they are not the oracle of fidelity. That the losses are the authors'
# algorithm is checked elsewhere: the fast engine against the reference engine (test_engines.py),
# z_t against a transcription of the authors' sampler (test_schedule.py), the losses by hand
# (test_losses.py). A change that moves them on purpose re-records them, and its commit says why:
#   python -c "import sys; sys.path.insert(0, 'tests'); from helpers import save_sd_folder; save_sd_folder('/tmp/tiny-sd')"
#   advunlearn train --model /tmp/tiny-sd --concept "Van Gogh" --layers 1 --out /tmp/golden --iterations 3 \
#       --warmup 1 --save-every 2 --bank --bank-dir /tmp/golden-bank --ddim-steps 4 --attack-steps 2 \
#       --retain-batch 2 --device cpu --quiet
# and take the "loss" of each line of /tmp/golden/log.jsonl.
GOLDEN_LOSSES = [0.003446892136707902, 0.0021230068523436785, 0.0014663918409496546]


@pytest.fixture(scope="module")
def trained(sd_folder, tmp_path_factory):
    out = tmp_path_factory.mktemp("run") / "out"
    result = run_cli(
        "train", "--model", sd_folder, "--concept", "Van Gogh", "--layers", "1", "--out", out,
        "--iterations", 3, "--warmup", 1, "--save-every", 2, "--bank", *FAST_ARGS,
    )
    assert result.exit_code == 0, result.output
    return out


def test_outputs_are_written(trained):
    for name in ("text_encoder/config.json", "text_encoder/model.safetensors", "tokenizer/vocab.json",
                 "tokenizer/merges.txt", "run.json", "log.jsonl", "loss.png",
                 "checkpoints/step-000002/text_encoder/model.safetensors",
                 "checkpoints/step-000003/training_state.pt"):
        assert (trained / name).is_file(), name
    # only the newest checkpoint keeps the optimizer state
    assert not (trained / "checkpoints/step-000002/training_state.pt").exists()
    run = json.loads((trained / "run.json").read_text())
    assert run["status"] == "complete" and run["layers"] == [1]
    assert run["config"]["concepts"] == ["Van Gogh"]
    assert run["config"]["optim"] == "adam"  # the default, the authors' torch Adam
    log = [json.loads(line) for line in (trained / "log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in log] == [1, 2, 3]
    assert [r["adversarial"] for r in log] == [False, True, True]
    assert log[0]["attack_loss_end"] is None and log[1]["attack_loss_end"] is not None


def test_encoder_keeps_sd_layout_and_changes_only_layer_one(trained, sd_folder):
    saved = load_file(str(trained / "text_encoder" / "model.safetensors"))
    assert all(k.startswith("text_model.") for k in saved)
    base = load_file(str(sd_folder / "text_encoder" / "model.safetensors"))
    changed = {k for k in base if k in saved and not torch.equal(base[k], saved[k])}
    assert changed and all(k.startswith("text_model.encoder.layers.1.") for k in changed)
    assert set(saved) == set(base) - {"text_model.embeddings.position_ids"}
    loaded = CLIPTextModel.from_pretrained(trained / "text_encoder")
    for k, v in loaded.state_dict().items():
        torch.testing.assert_close(v, saved["text_model." + k], rtol=0, atol=0)


def test_encoder_plugs_into_a_stable_diffusion_pipeline(trained, sd_folder, tmp_path):
    """The run's text_encoder/ in the model's own pipeline draws what `advunlearn export` of the
    run draws, and not what the model's own encoder draws."""
    from diffusers import StableDiffusionPipeline

    def image(folder, **parts):
        pipe = StableDiffusionPipeline.from_pretrained(folder, safety_checker=None, requires_safety_checker=False,
                                                       local_files_only=True, **parts)
        return pipe("a photo of a cat", num_inference_steps=2, height=16, width=16,
                    generator=torch.Generator().manual_seed(0), output_type="np").images

    plugged = image(sd_folder, text_encoder=CLIPTextModel.from_pretrained(trained / "text_encoder"))
    assert plugged.shape == (1, 16, 16, 3)
    assert not np.array_equal(plugged, image(sd_folder))
    exported = tmp_path / "pipeline"
    result = run_cli("export", "--model", sd_folder, "--encoder", trained, "--format", "diffusers", "--out", exported)
    assert result.exit_code == 0, result.output
    np.testing.assert_array_equal(plugged, image(exported))


def test_our_loader_takes_the_run_folder_as_the_trained_encoder(trained, sd_folder):
    # What `generate`/`attack --encoder RUN` plug in: the weights training wrote, not the input model's.
    encoder = load_encoder(str(trained), load_model(str(sd_folder))).state_dict()
    written = load_file(str(trained / "text_encoder" / "model.safetensors"))
    newest = load_file(str(trained / "checkpoints" / "step-000003" / "text_encoder" / "model.safetensors"))
    assert written.keys() == newest.keys() == {"text_model." + k for k in encoder}
    for key, value in written.items():
        assert torch.equal(encoder[key.removeprefix("text_model.")], value), key
        assert torch.equal(newest[key], value), key


def test_golden_losses(trained):
    log = [json.loads(line) for line in (trained / "log.jsonl").read_text().splitlines()]
    assert [r["loss"] for r in log] == pytest.approx(GOLDEN_LOSSES, rel=1e-3)


def _strict_json(path):
    """JSON as other tools read it: NaN and Infinity are not JSON."""
    def refuse(constant):
        raise AssertionError(f"{path} holds {constant}")

    return json.loads(path.read_text(), parse_constant=refuse)


def test_a_diverging_run_stops_and_never_looks_finished(sd_folder, tmp_path):
    out = tmp_path / "run"
    args = ["train", "--model", sd_folder, "--concept", "x", "--out", out, "--iterations", 4, "--warmup", 0,
            "--save-every", 1, "--lr", "1e12", *FAST_ARGS]
    result = run_cli(*args)
    assert result.exit_code == 2 and "Traceback" not in result.output
    last = result.output.splitlines()[-1]
    assert last.startswith("advunlearn: error: training diverged at iteration ") and "lower --lr (it was 1e+12)" in last
    assert not (out / "text_encoder").exists() and not (out / "README.md").exists()
    run = _strict_json(out / "run.json")
    assert run["status"] == "diverged"
    stopped = run["diverged"]["iteration"]
    assert f"iteration {stopped}: loss " in last
    log = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in log] == list(range(1, stopped))  # the iteration that diverged took no step
    # The checkpoints before it are kept, and named.
    kept = sorted(p.name for p in (out / "checkpoints").iterdir())
    assert kept == [f"step-{i:06d}" for i in range(1, stopped)] and f"up to {kept[-1]} are kept" in last
    # With the same settings a resumed run would diverge again: refused, as is a new run mixed into the folder.
    assert_refused(run_cli(*args, "--resume"), f"--resume: the run in {out} diverged at iteration {stopped}")
    assert_refused(run_cli(*args[:-len(FAST_ARGS) - 2], *FAST_ARGS), f"--out {out} holds a run that diverged")


def test_world_concepts_the_model_never_saw_are_named(tmp_path):
    args = ["--model", "world", "--iterations", 1, "--warmup", 0, *FAST_ARGS]
    result = run_cli("train", "--concept", "banana", "--out", tmp_path / "banana", *args)
    assert result.exit_code == 0, result.output
    assert "--concept 'banana' names nothing in the concept world" in result.output
    for known in ("red", "ripe banana", "striped blue"):  # a value, an alias, a phrase of values
        result = run_cli("train", "--concept", known, "--out", tmp_path / known.replace(" ", "-"), *args)
        assert result.exit_code == 0 and "names nothing" not in result.output, result.output


def test_help_names_every_output():
    result = run_cli("train", "--help")
    for name in ("text_encoder", "tokenizer", "run.json", "log.jsonl", "loss.png", "README.md", "checkpoints"):
        assert name in result.output, name


@pytest.mark.parametrize("concept, flags, kept", [
    ("nudity", [], 243),  # the authors' set, whole, as they train on it
    ("cat", [], 242),  # "a photo of cat" holds the concept
    ("nudity", ["--retain-filter", "related"], 234),
    ("cat", ["--retain-filter", "none"], 243),
])
def test_a_run_trains_on_the_authors_retain_set_filtered_as_asked(sd_folder, tmp_path, concept, flags, kept):
    out = tmp_path / "run"
    result = run_cli("train", "--model", sd_folder, "--concept", concept, "--out", out, "--iterations", 1,
                     *flags, *FAST_ARGS)
    assert result.exit_code == 0, result.output
    run = json.loads((out / "run.json").read_text())
    assert run["retain_prompt_count"] == kept
    assert run["config"]["retain_filter"] == (flags[1] if flags else "phrase")
