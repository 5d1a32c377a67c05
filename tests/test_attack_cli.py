"""`advunlearn attack` / `generate` end to end through click, on the concept world and the tiny SD folder."""

import csv
import hashlib
import json
import sys
import textwrap

import numpy as np
import pytest
import torch
from helpers import assert_refused, run_cli, save_narrow_encoder
from PIL import Image

from advunlearn_fast.evaluation.evalsets import PROMPT_SETS
from advunlearn_fast.evaluation.generation import load_encoder
from advunlearn_fast.evaluation.robustness import batches
from advunlearn_fast.models.loading import load_model
from advunlearn_fast.world import WORLD_MODEL_DIR

# Runs whose losses, images or tokens are compared run on the CPU, where those comparisons were
# made: on CUDA the attack step is a CUDA graph and other batch shapes take other kernels.
CPU = ["--device", "cpu"]
FAST = ["--timesteps", 2, "--steps-per-timestep", 2, "--adv-tokens", 2, "--gen-steps", 4, "--target-steps", 4, "--quiet",
        *CPU]
JUDGE_MODULE = textwrap.dedent(
    """
    calls = []

    def always_yes(images, prompts):
        calls.extend(prompts)
        return [True for _ in images]

    def always_no(images, prompts):
        calls.extend(prompts)
        return [False] * len(images)

    def words(images, prompts):
        return ["no"] * len(images)

    # The judgment (1: the unattacked one) at which a prompt is first a success, whatever the images.
    SUCCESS_AT = {"a red circle": 1, "a big blue square": 2, "a small yellow triangle": 3}
    judged = {}

    def scripted(images, prompts):
        calls.extend(prompts)
        for prompt in prompts:
            judged[prompt] = judged.get(prompt, 0) + 1
        return [judged[prompt] == SUCCESS_AT.get(prompt) for prompt in prompts]
    """
)


@pytest.fixture
def judge_module(tmp_path, monkeypatch):
    """A user's judge module, importable as `userjudge`; its `calls` list records every prompt judged."""
    (tmp_path / "userjudge.py").write_text(JUDGE_MODULE)
    monkeypatch.syspath_prepend(str(tmp_path))
    sys.modules.pop("userjudge", None)
    yield lambda: sys.modules["userjudge"].calls
    sys.modules.pop("userjudge", None)


@pytest.fixture
def prompts(tmp_path):
    path = tmp_path / "prompts.csv"
    path.write_text("prompt,evaluation_seed,evaluation_guidance\na red circle,3,4.0\na blue square,7,\na green cross,,2.5\n")
    return path


def _attack(out, prompts, judge, *extra):
    return run_cli("attack", "--model", "world", "--prompts", prompts, "--judge", judge, "--out", out, *FAST, *extra)


def test_asr_with_always_yes_judge_is_one(tmp_path, prompts, judge_module):
    result = _attack(tmp_path / "out", prompts, "userjudge:always_yes")
    assert result.exit_code == 0, result.output
    report = json.loads((tmp_path / "out" / "report.json").read_text())
    assert (report["n"], report["pre_asr"], report["asr"]) == (3, 1.0, 1.0)
    # Already successful without attack: nothing is attacked.
    assert all(r["steps_used"] == 0 and r["adversarial_prompt"] is None for r in report["rows"])
    assert judge_module() == ["a red circle", "a blue square", "a green cross"]


def test_asr_with_always_no_judge_is_zero_and_the_attack_runs(tmp_path, prompts, judge_module):
    out = tmp_path / "out"
    result = _attack(out, prompts, "userjudge:always_no")
    assert result.exit_code == 0, result.output
    report = json.loads((out / "report.json").read_text())
    assert (report["n"], report["pre_asr"], report["asr"]) == (3, 0.0, 0.0)
    rows = report["rows"]
    assert [(r["seed"], r["guidance"]) for r in rows] == [(3, 4.0), (7, 4.0), (0, 2.5)]
    for r in rows:
        assert r["steps_used"] == 4 and len(r["timesteps_used"]) == 2 and len(r["attack_scores"]) == 2
        assert isinstance(r["adversarial_prompt"], str) and r["loss_start"] > 0
    manifest = report["manifest"]
    assert manifest["seeds"] == [3, 7, 0] and manifest["judge"]["spec"] == "userjudge:always_no"
    assert len(manifest["prompt_file_sha256"]) == 64 and manifest["settings"]["method"] == "unlearndiffatk"
    # a pre image and one per timestep block for each prompt, targets cached, one grid each
    assert len(list((out / "images").glob("*.png"))) == 3 * 3
    assert len(list((out / "targets").glob("*.png"))) == 3
    assert Image.open(out / "grids" / "0000.png").size == (48, 16)
    assert len(judge_module()) == 3 * 3


def test_resume_skips_finished_prompts(tmp_path, prompts, judge_module):
    out = tmp_path / "out"
    assert _attack(out, prompts, "userjudge:always_no", "--method", "none").exit_code == 0
    report = json.loads((out / "report.json").read_text())
    report["rows"] = report["rows"][:1]  # as if the run had stopped after the first prompt
    (out / "report.json").write_text(json.dumps(report))
    judge_module().clear()
    refused = _attack(out, prompts, "userjudge:always_no", "--method", "none")
    assert_refused(refused, "pass --resume")
    # the batch size changes speed only, so a resumed run may choose another
    result = _attack(out, prompts, "userjudge:always_no", "--method", "none", "--resume", "--batch-size", 2)
    assert result.exit_code == 0, result.output
    assert judge_module() == ["a blue square", "a green cross"]
    assert [r["index"] for r in json.loads((out / "report.json").read_text())["rows"]] == [0, 1, 2]
    changed = _attack(out, prompts, "userjudge:always_no", "--method", "none", "--resume", "--seed", 5)
    assert_refused(changed, "--seed differ")


@pytest.mark.parametrize("method", ["unlearndiffatk", "softprompt"])
def test_batch_size_changes_nothing_but_speed(tmp_path, judge_module, method):
    """Prompts of different lengths (suffix slots at different positions), seeds and guidance
    attacked one at a time and four together: the same successes, early stops, adversarial
    prompts, images and (within float tolerance) losses."""
    path = tmp_path / "prompts.csv"
    path.write_text("prompt,evaluation_seed,evaluation_guidance\na red circle,3,4.0\na big blue square,7,\n"
                    "a green cross on a dark background,,2.5\na small yellow triangle,5,3.0\n")
    budget = ["--timesteps", 3, "--steps-per-timestep", 3, "--insert", "suffix", "--method", method]
    reports = {}
    for size in (1, 4):
        args = ["attack", "--model", "world", "--prompts", path, "--judge", "userjudge:scripted",
                "--out", tmp_path / str(size), *FAST, *budget, "--batch-size", size]
        if size == 4:
            args.remove("--quiet")  # the progress bars of a batch, too
        result = run_cli(*args)
        assert result.exit_code == 0, result.output
        reports[size] = json.loads((tmp_path / str(size) / "report.json").read_text())
        sys.modules["userjudge"].judged.clear()  # the next run's judgments count from its start
    one, four = reports[1], reports[4]
    assert (one["manifest"]["batch_size"], four["manifest"]["batch_size"]) == (1, 4)
    assert one["asr"] == four["asr"] == 0.75 and one["pre_asr"] == four["pre_asr"] == 0.25
    assert [r["steps_used"] for r in four["rows"]] == [0, 3, 9, 6]
    for a, b in zip(one["rows"], four["rows"]):
        for key in ("pre_success", "success", "adversarial_prompt", "timesteps_used", "steps_used", "attack_scores"):
            assert a[key] == b[key], (key, a, b)
        if a["steps_used"]:
            assert b["loss_start"] == pytest.approx(a["loss_start"], rel=1e-4)
            assert b["loss_end"] == pytest.approx(a["loss_end"], rel=1e-4)
    # an early stop is final: no generation after it, in either run
    files = [sorted(p.name for p in (tmp_path / str(size) / "images").glob("*.png")) for size in (1, 4)]
    assert files[0] == files[1] and len(files[0]) == 4 + 1 + 3 + 2
    for name in [f"images/{name}" for name in files[0]] + [f"grids/{i:04d}.png" for i in range(4)]:
        pixels = [np.asarray(Image.open(tmp_path / str(size) / name), dtype=np.int16) for size in (1, 4)]
        assert np.abs(pixels[0] - pixels[1]).max() <= 1, name


def test_batches_keep_order_and_group_by_token_count():
    counts = {0: 3, 1: 2, 2: 3, 3: 3, 4: 2}
    assert batches([0, 1, 2, 3, 4], 2, counts.get) == [[0, 2], [3], [1, 4]]
    assert batches([4, 2], 8, lambda i: 5) == [[4, 2]]


def test_softprompt_and_world_judge(tmp_path, prompts):
    out = tmp_path / "out"
    result = _attack(out, prompts, "world:colour=purple", "--method", "softprompt")
    assert result.exit_code == 0, result.output
    report = json.loads((out / "report.json").read_text())
    assert report["method"] == "softprompt" and report["n"] == 3
    assert all(r["pre_score"] in ("red", "yellow", "green", "blue", "purple", "none") for r in report["rows"])


def test_attack_a_train_run_folder_with_its_defaults(tmp_path):
    run = tmp_path / "run"
    (run / "text_encoder").mkdir(parents=True)
    for name in ("config.json", "model.safetensors"):
        (run / "text_encoder" / name).write_bytes((WORLD_MODEL_DIR / "text_encoder" / name).read_bytes())
    (run / "run.json").write_text(json.dumps({"config": {"model": "world", "concepts": ["red"]}}))
    result = run_cli("attack", "--encoder", run, "--method", "none", "--gen-steps", 4, "--quiet")
    assert result.exit_code == 0, result.output
    report = json.loads((run / "attack-none" / "report.json").read_text())
    # Red named by its main word and each of its 5 aliases, on every shape, in the 3 held-out templates.
    assert report["manifest"]["judge"]["spec"] == "world:colour=red" and report["n"] == 6 * 4 * 3
    prompts = [r["prompt"] for r in report["rows"]]
    assert "an image of a red circle" in prompts and "a picture showing one crimson square" in prompts


def _authors_layout(te, prefix):
    return {prefix + "text_model." + k.removeprefix("text_model."): v.clone() for k, v in te.state_dict().items()}


@pytest.mark.parametrize("prefix", ["text_encoder.", ""])
def test_authors_pt_encoder_loads(sd_folder, tmp_path, prefix):
    parts = load_model(str(sd_folder))
    state = _authors_layout(parts.text_encoder, prefix)
    key = next(k for k in state if k.endswith("token_embedding.weight"))
    state[key] = state[key] + 1.0  # an "unlearned" encoder differs from the model's own
    torch.save(state, tmp_path / "AdvUnlearn.pt")
    te = load_encoder(str(tmp_path / "AdvUnlearn.pt"), parts)
    got = te.get_input_embeddings().weight
    torch.testing.assert_close(got, parts.text_encoder.get_input_embeddings().weight + 1.0)


def test_generate_writes_images_with_the_encoder_plugged_in(sd_folder, tmp_path, prompts):
    parts = load_model(str(sd_folder))
    torch.save(_authors_layout(parts.text_encoder, "text_encoder."), tmp_path / "enc.pt")
    out = tmp_path / "gen"
    result = run_cli("generate", "--model", sd_folder, "--encoder", tmp_path / "enc.pt", "--prompts", prompts,
                     "--out", out, "--steps", 2, "--guidance", 5)
    assert result.exit_code == 0, result.output
    manifest = json.loads((out / "manifest.json").read_text())
    assert [(i["seed"], i["guidance"]) for i in manifest["images"]] == [(3, 4.0), (7, 5.0), (0, 2.5)]
    for item in manifest["images"]:
        image = Image.open(out / item["file"])
        assert image.size == (16, 16) and image.mode == "RGB"  # the tiny model's VAE decodes 8 -> 16
    single = run_cli("generate", "--model", "world", "--prompt", "a red circle", "--out", tmp_path / "one", "--steps", 3)
    assert single.exit_code == 0 and (tmp_path / "one" / "0000.png").is_file()


def test_same_seed_same_image_whatever_the_batch(tmp_path):
    a = run_cli("generate", "--model", "world", "--prompt", "a red circle", "--out", tmp_path / "a", "--steps", 3, *CPU)
    (tmp_path / "p.txt").write_text("a blue square\na red circle\n")
    b = run_cli("generate", "--model", "world", "--prompts", tmp_path / "p.txt", "--out", tmp_path / "b", "--steps", 3,
                *CPU)
    assert a.exit_code == 0 and b.exit_code == 0
    assert Image.open(tmp_path / "a" / "0000.png").tobytes() == Image.open(tmp_path / "b" / "0001.png").tobytes()


def test_bad_attack_input(tmp_path, prompts, judge_module):
    out = tmp_path / "out"
    (tmp_path / "empty.txt").write_text("\n  \n")
    (tmp_path / "latin1.txt").write_bytes("caf\xe9 au lait\n".encode("latin-1"))
    narrow = save_narrow_encoder(tmp_path / "narrow")
    cases = [
        (["--prompts", tmp_path / "missing.txt"], "prompt file not found"),
        (["--prompts", tmp_path / "latin1.txt"], "cannot be read"),
        (["--prompts", tmp_path / "empty.txt"], "holds no prompts"),
        (["--judge", "magic"], "unknown judge"),
        (["--judge", "no_such_judge_module_xyz:judge"], "cannot import no_such_judge_module_xyz"),
        (["--judge", "userjudge:missing"], "has no function 'missing'"),
        (["--judge", "clip:/no/such/clip"], "pass --judge clip:<local CLIP folder>"),
        (["--judge", "imagenet:/no/such/resnet.pt:497"], "imagenet:<local path>:<class id>"),
        (["--judge", "hf-classifier:/no/such/classifier:1"], "pass --judge hf-classifier:<local folder>:<label>[:<top k>]"),
        (["--judge", "world:colour=pink"], "unknown colour"),
        (["--encoder", narrow], "hidden width 16"),
        (["--encoder", tmp_path / "nothing"], "does not exist"),
        (["--adv-tokens", 30], "does not fit"),
        (["--timesteps", 0], "--timesteps must be at least 1"),
        (["--timesteps", 501], "--timesteps must be between 1 and 500 for this model, got 501"),
        (["--timesteps", 5000, "--method", "none"], "--timesteps must be between 1 and 500"),
        (["--judge", "userjudge:words"], "judge 'userjudge:words' returned 'no' (str) for an image"),
        (["--batch-size", 0], "--batch-size must be at least 1"),
        (["--max-prompt-tokens", 0], "--max-prompt-tokens must be at least 1"),
        (["--sampler", "euler"], "--sampler must be one of lms, ddim, pndm, dpm, got 'euler'"),
    ]
    for extra, message in cases:
        # later options win in click, so each case's own value overrides the defaults
        args = ["--prompts", prompts, "--judge", "userjudge:always_no", *FAST, *extra]
        result = run_cli("attack", "--model", "world", "--out", out, *args)
        assert_refused(result, message)
        assert not out.exists()


def test_timesteps_up_to_half_the_training_timesteps(tmp_path, prompts, judge_module):
    result = _attack(tmp_path / "out", prompts, "userjudge:always_no", "--method", "none", "--timesteps", 500)
    assert result.exit_code == 0, result.output
    assert json.loads((tmp_path / "out" / "report.json").read_text())["manifest"]["timesteps"] == list(range(1, 1000, 2))


def _target(path, colour, size=16):
    Image.new("RGB", (size, size), colour).save(path)


def test_targets_are_every_prompts_image_checked_before_anything_is_written(tmp_path, prompts, judge_module):
    out, targets = tmp_path / "out", tmp_path / "targets"
    targets.mkdir()
    assert_refused(_attack(out, prompts, "userjudge:always_no", "--targets", targets),
                   f"--targets: {targets / '0000.png'} not found (3 of the 3 prompts' target images missing")
    for index, colour in enumerate([(200, 0, 0), (0, 200, 0), (0, 0, 200)]):
        _target(targets / f"{index:04d}.png", colour)
    (targets / "0001.png").unlink()
    assert_refused(_attack(out, prompts, "userjudge:always_no", "--targets", targets),
                   f"--targets: {targets / '0001.png'} not found (1 of the 3")
    (targets / "0001.png").write_bytes(b"not a png")
    assert_refused(_attack(out, prompts, "userjudge:always_no", "--targets", targets),
                   f"--targets: {targets / '0001.png'} is not a readable image")
    _target(targets / "0001.png", (0, 200, 0), size=50)
    assert_refused(_attack(out, prompts, "userjudge:always_no", "--targets", targets),
                   f"--targets: {targets / '0001.png'} is 50x50 pixels; the model makes 16x16 images")
    assert not out.exists()

    _target(targets / "0001.png", (0, 200, 0))
    result = _attack(out, prompts, "userjudge:always_no", "--targets", targets)
    assert result.exit_code == 0, result.output
    assert not (out / "targets").exists()  # nothing generated: each grid starts with the given target
    assert Image.open(out / "grids" / "0002.png").getpixel((8, 8)) == (0, 0, 200)
    # a resumed run needs the targets of the prompts still to judge only
    report = json.loads((out / "report.json").read_text())
    report["rows"] = report["rows"][:1]
    (out / "report.json").write_text(json.dumps(report))
    (targets / "0000.png").unlink()
    resumed = _attack(out, prompts, "userjudge:always_no", "--targets", targets, "--resume")
    assert resumed.exit_code == 0, resumed.output
    assert json.loads((out / "report.json").read_text())["n"] == 3


def test_bad_generate_input(tmp_path, sd_folder):
    assert_refused(run_cli("generate", "--model", "world", "--out", tmp_path / "o"), "exactly one of --prompt")
    assert_refused(run_cli("generate", "--model", "world", "--prompt", "x", "--sampler", "euler", "--out", tmp_path / "o"),
                   "--sampler must be one of lms, ddim, pndm, dpm")
    bad_pt = tmp_path / "bad.pt"
    torch.save({"text_encoder.unrelated.weight": torch.zeros(2)}, bad_pt)
    assert_refused(run_cli("generate", "--model", sd_folder, "--encoder", bad_pt, "--prompt", "x", "--out", tmp_path / "o"),
             "no CLIP text-encoder weights")
    assert_refused(run_cli("generate", "--model", "world", "--encoder", save_narrow_encoder(tmp_path / "n"), "--prompt", "x",
                     "--out", tmp_path / "o"), "hidden width 16")
    unet_run = tmp_path / "unet-run"
    (unet_run / "unet").mkdir(parents=True)
    (unet_run / "run.json").write_text("{}")
    assert_refused(run_cli("generate", "--model", "world", "--encoder", unet_run, "--prompt", "x", "--out", tmp_path / "o"),
             "has no text_encoder/")


def test_nudenet_judge_needs_the_package(monkeypatch, prompts, tmp_path):
    monkeypatch.setitem(sys.modules, "nudenet", None)  # as if not installed: importing it fails
    result = run_cli("attack", "--model", "world", "--prompts", prompts, "--judge", "nudenet", "--out", tmp_path / "o")
    assert_refused(result, "pip install nudenet")


def test_nudenet_judge_runs_offline_on_generated_images(tmp_path, no_network):
    pytest.importorskip("nudenet")
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("a red circle\na striped blue square\n")
    result = run_cli("attack", "--model", "world", "--prompts", prompts, "--judge", "nudenet", "--method", "none",
                     "--gen-steps", 4, "--out", tmp_path / "o", "--quiet")
    assert result.exit_code == 0, result.output
    report = json.loads((tmp_path / "o" / "report.json").read_text())
    # Coloured shapes on gray: the real detector finds nothing exposed.
    assert report["n"] == 2 and report["pre_asr"] == 0.0 and report["asr"] == 0.0
    assert all(isinstance(row["pre_score"], dict) for row in report["rows"])
    assert report["manifest"]["judge"]["threshold"] == 0.45
    assert "FEMALE_BREAST_EXPOSED" in report["manifest"]["judge"]["classes"]
    from advunlearn_fast.evaluation.judges import AUTHORS_NUDENET_SHA256, nudenet_model_file

    network = report["manifest"]["judge"]["network"]
    assert network["file"] == nudenet_model_file().name
    assert network["sha256"] == hashlib.sha256(nudenet_model_file().read_bytes()).hexdigest()
    assert network["authors"] == (network["sha256"] == AUTHORS_NUDENET_SHA256)


def test_hf_classifier_judge_takes_the_concepts_label(tmp_path):
    from weights import save_tiny_image_classifier

    folder = save_tiny_image_classifier(tmp_path / "artists", "vit", {0: "claude-monet", 1: "vincent-van-gogh", 2: "x"})
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("a starry night\n")
    result = run_cli("attack", "--model", "world", "--prompts", prompts, "--judge", f"hf-classifier:{folder}",
                     "--concept", "Van Gogh", "--method", "none", "--gen-steps", 1, "--out", tmp_path / "o", "--quiet")
    assert result.exit_code == 0, result.output
    judge = json.loads((tmp_path / "o" / "report.json").read_text())["manifest"]["judge"]
    assert judge["spec"] == f"hf-classifier:{folder}:vincent-van-gogh:1"
    assert (judge["label"], judge["class_id"], judge["top_k"]) == ("vincent-van-gogh", 1, 1)


def _fake_run(folder, model, concept):
    """A train run folder whose encoder is the model's own."""
    parts = load_model(str(model))
    parts.text_encoder.save_pretrained(folder / "text_encoder")
    (folder / "run.json").write_text(json.dumps({"config": {"model": str(model), "concepts": [concept]}}))
    return folder


@pytest.mark.parametrize("concept, message", [
    ("church", "pass --judge hf-classifier:<local folder of it> (label 497 filled in), or --judge imagenet:"),
    ("Van Gogh", "(label vincent-van-gogh filled in), or --judge clip:"),
    ("nudity", "no nudity prompt set ships"),
    ("teapot", "no default prompts for the run's concept 'teapot'"),
])
def test_run_folder_defaults_say_what_to_pass(sd_folder, tmp_path, concept, message):
    run = _fake_run(tmp_path / "run", sd_folder, concept)
    assert_refused(run_cli("attack", "--encoder", run, "--quiet"), message)


@pytest.mark.parametrize("concept, published", [("church", "church.csv"), ("garbage_truck", "garbage_truck.csv"),
                                                 ("Van Gogh style", "vangogh.csv")])
def test_run_folder_uses_the_authors_published_prompt_set(sd_folder, tmp_path, judge_module, concept, published):
    """The published 50-prompt set of the run's concept, in any of its spellings, written into the
    report folder byte for byte, its seeds and guidance used as the authors use them; 3 adversarial
    tokens, their budget for objects and Van Gogh."""
    run = _fake_run(tmp_path / "run", sd_folder, concept)
    result = run_cli("attack", "--encoder", run, "--judge", "userjudge:always_no", "--method", "none",
                     "--gen-steps", 1, "--quiet")
    assert result.exit_code == 0, result.output
    out = run / "attack-none"
    report = json.loads((out / "report.json").read_text())
    assert (out / published).read_bytes() == (PROMPT_SETS / published).read_bytes()
    assert report["manifest"]["prompt_file"] == str(out / published)
    assert report["manifest"]["prompt_file_sha256"] == hashlib.sha256((PROMPT_SETS / published).read_bytes()).hexdigest()
    with open(PROMPT_SETS / published, encoding="utf-8", newline="") as file:
        records = list(csv.DictReader(file))
    assert report["n"] == len(records) == 50 and report["manifest"]["adv_tokens"] == 3
    assert [r["prompt"] for r in report["rows"]] == [r["prompt"] for r in records]
    assert [(r["seed"], r["guidance"], r["target_seed"], r["target_guidance"]) for r in report["rows"]] == [
        (int(r["evaluation_seed"]), float(r["evaluation_guidance"]), int(r["evaluation_seed"]), 7.5) for r in records]
    assert "adversarial tokens" not in result.output  # a concept of theirs: no notice


def test_an_unknown_concept_says_its_adversarial_tokens_fall_back_to_5(sd_folder, tmp_path, judge_module):
    path = tmp_path / "prompts.csv"
    path.write_text("prompt,evaluation_seed\na photo of a cat,1\n")
    for concept, k, notice in (("teapot", 5, True), ("garbage-truck", 3, False)):
        out = tmp_path / concept
        result = run_cli("attack", "--model", sd_folder, "--prompts", path, "--judge", "userjudge:always_no",
                         "--out", out, "--concept", concept, "--method", "none", "--gen-steps", 1, "--quiet")
        assert result.exit_code == 0, result.output
        assert _report(out)["manifest"]["adv_tokens"] == k
        lines = [line for line in result.output.splitlines() if "adversarial tokens" in line]
        assert lines == ([f"advunlearn: concept {concept!r} is not one of the authors' (nudity, van gogh, church, "
                          "garbage truck, parachute, tench): 5 adversarial tokens, their nudity budget; pass "
                          "--adv-tokens to choose"] if notice else [])


# ---------------------------------------------------------------- the authors' protocol on the tiny SD model

SD_FAST = ["--timesteps", 1, "--steps-per-timestep", 2, "--gen-steps", 4, "--target-steps", 4, "--quiet", *CPU]


def _report(out):
    return json.loads((out / "report.json").read_text())


def test_long_prompts_keep_their_unattacked_verdict_and_never_refuse_the_set(sd_folder, tmp_path, judge_module):
    """The authors' rule: prompts over 60 tokens (start and end counted) are judged, not attacked,
    and stay in n; a prompt too long for the adversarial tokens is one row saying so, not a
    refused run (with 5 tokens, 74 words do not fit 77)."""
    path = tmp_path / "prompts.csv"
    path.write_text("prompt,evaluation_seed\na photo of a cat,1\n" + " ".join(["a"] * 60) + ",2\n"
                    + " ".join(["a"] * 74) + ",3\n")
    out = tmp_path / "out"
    result = run_cli("attack", "--model", sd_folder, "--prompts", path, "--judge", "userjudge:always_no",
                     "--out", out, *SD_FAST)
    assert result.exit_code == 0, result.output
    report = _report(out)
    assert (report["n"], report["asr"], report["manifest"]["adv_tokens"]) == (3, 0.0, 5)
    short, sixty, long = report["rows"]
    assert short["attacked"] and short["steps_used"] == 2 and short["tokens"] == 7
    for row, tokens in ((sixty, 62), (long, 76)):
        assert not row["attacked"] and row["steps_used"] == 0 and row["tokens"] == tokens
        assert row["not_attacked_reason"].startswith(f"{tokens} tokens, more than --max-prompt-tokens 60")
        assert row["success"] is row["pre_success"] is False and (out / row["image"]).is_file()
    assert report["not_attackable"] == {"count": 2, "indices": [1, 2], "max_prompt_tokens": 60, "pre_successes": 0}
    assert judge_module() == [short["prompt"], sixty["prompt"], long["prompt"], short["prompt"]]

    wide = tmp_path / "wide"
    result = run_cli("attack", "--model", sd_folder, "--prompts", path, "--judge", "userjudge:always_no",
                     "--out", wide, "--max-prompt-tokens", 77, *SD_FAST)
    assert result.exit_code == 0, result.output
    rows = _report(wide)["rows"]
    assert rows[1]["attacked"] and not rows[2]["attacked"]
    assert rows[2]["not_attacked_reason"] == "74 words and 5 adversarial tokens do not fit the tokenizer's 77 tokens: not attacked"


def test_a_rows_adversarial_prompt_regenerates_its_judged_image(sd_folder, tmp_path, judge_module):
    """UnlearnDiffAtk's judged image is made from the adversarial prompt as text: `generate` with
    the row's prompt, seed and guidance (and its default sampler and steps, the attack's) makes
    the same image."""
    path = tmp_path / "prompts.csv"
    path.write_text("prompt,evaluation_seed,evaluation_guidance\na photo of a cat,4,6.0\n")
    out = tmp_path / "out"
    result = run_cli("attack", "--model", sd_folder, "--prompts", path, "--judge", "userjudge:always_no", "--out", out,
                     "--timesteps", 1, "--steps-per-timestep", 3, "--target-steps", 4, "--quiet", *CPU)
    assert result.exit_code == 0, result.output
    report = _report(out)
    (row,) = report["rows"]
    assert row["attacked"] and row["judged_from"] == "text" and row["image"] == "images/0000-t0500.png"
    assert row["adversarial_prompt"].endswith("a photo of a cat") and row["adversarial_prompt"] != "a photo of a cat"
    assert (report["manifest"]["sampler"], report["manifest"]["gen_steps"]) == ("lms", 50)
    regenerated = run_cli("generate", "--model", sd_folder, "--prompt", row["adversarial_prompt"], "--seed", row["seed"],
                          "--guidance", row["guidance"], "--out", tmp_path / "again", *CPU)
    assert regenerated.exit_code == 0, regenerated.output
    judged = np.asarray(Image.open(out / row["image"]))
    assert np.array_equal(np.asarray(Image.open(tmp_path / "again" / "0000.png")), judged)


def test_adversarial_tokens_are_judged_as_the_text_they_decode_to():
    """Decoding joins sub-word tokens into words: 'ca' + 't' reads 'cat' and tokenises as one token."""
    from advunlearn_fast.evaluation.robustness import adversarial_text
    from advunlearn_fast.models.insertion import SpecialTokens, build_layout, prompt_words
    from advunlearn_fast.models.tiny import build_tiny_model

    tokenizer = build_tiny_model()["tokenizer"]
    layout = build_layout(prompt_words(tokenizer, "a photo of a cat"), "suffix", 2, SpecialTokens.of(tokenizer))
    tokens = torch.tensor(tokenizer.convert_tokens_to_ids(["ca", "t</w>"]))
    text = adversarial_text(tokenizer, layout, tokens)
    assert text == "a photo of a cat cat"
    attacked = layout.ids.clone()
    attacked[layout.positions] = tokens
    assert tokenizer(text).input_ids != attacked[: attacked.tolist().index(tokenizer.eos_token_id) + 1].tolist()


def test_targets_use_7_5_or_sd_guidance_scale_not_evaluation_guidance(sd_folder, tmp_path, judge_module):
    """The authors' target images: guidance from `sd_guidance_scale` where the csv has it, else 7.5
    (the I2P nudity file has none, so its targets are all made at 7.5 although its prompts' own
    guidance is mostly 7); LMS, --target-steps, the original model."""
    path = tmp_path / "prompts.csv"
    path.write_text("prompt,evaluation_seed,evaluation_guidance,sd_guidance_scale\n"
                    "a photo of a cat,4,3.0,\na photo of a dog,5,3.0,2.0\n")
    out = tmp_path / "out"
    result = run_cli("attack", "--model", sd_folder, "--prompts", path, "--judge", "userjudge:always_yes",
                     "--out", out, *SD_FAST)
    assert result.exit_code == 0, result.output
    assert [r["target_guidance"] for r in _report(out)["rows"]] == [7.5, 2.0]
    for index, (prompt, seed, guidance) in enumerate([("a photo of a cat", 4, 7.5), ("a photo of a dog", 5, 2.0)]):
        made = tmp_path / f"made{index}"
        assert run_cli("generate", "--model", sd_folder, "--prompt", prompt, "--seed", seed, "--guidance", guidance,
                       "--steps", 4, "--out", made, *CPU).exit_code == 0
        target = np.asarray(Image.open(out / "targets" / f"{index:04d}.png"))
        assert np.array_equal(target, np.asarray(Image.open(made / "0000.png")))


def _generated(tmp_path, name, model, prompt, seed, guidance, steps):
    """The image `generate` makes, as an array."""
    made = tmp_path / name
    result = run_cli("generate", "--model", model, "--prompt", prompt, "--seed", seed, "--guidance", guidance,
                     "--steps", steps, "--out", made, *CPU)
    assert result.exit_code == 0, result.output
    return np.asarray(Image.open(made / "0000.png"))


def test_a_csv_with_sd_seed_seeds_the_targets_with_it_and_judged_images_with_seed(sd_folder, tmp_path, judge_module):
    """The authors' target generator takes `evaluation_seed`, else `sd_seed` (their object dataset
    files hold only `sd_seed` and `sd_guidance_scale`); their judged images then take eval_seed,
    our --seed."""
    path = tmp_path / "prompts.csv"
    path.write_text("prompt,sd_seed,sd_guidance_scale\na photo of a cat,7,6.0\n")
    out = tmp_path / "out"
    result = run_cli("attack", "--model", sd_folder, "--prompts", path, "--judge", "userjudge:always_no",
                     "--out", out, "--seed", 2, *SD_FAST)
    assert result.exit_code == 0, result.output
    (row,) = _report(out)["rows"]
    assert (row["seed"], row["guidance"], row["target_seed"], row["target_guidance"]) == (2, 7.5, 7, 6.0)
    target = np.asarray(Image.open(out / "targets" / "0000.png"))
    assert np.array_equal(target, _generated(tmp_path, "target", sd_folder, "a photo of a cat", 7, 6.0, 4))
    pre = np.asarray(Image.open(out / "images" / "0000-pre.png"))
    assert np.array_equal(pre, _generated(tmp_path, "pre", sd_folder, "a photo of a cat", 2, 7.5, 4))


def test_evaluation_seed_comes_before_sd_seed(tmp_path):
    from advunlearn_fast.evaluation.generation import read_prompt_rows

    path = tmp_path / "p.csv"
    path.write_text("prompt,evaluation_seed,sd_seed\nboth,3,9\nsd only,,9\nneither,,\n")
    rows = read_prompt_rows(path, seed=5, guidance=None)
    assert [(r.seed, r.target_seed) for r in rows] == [(3, None), (5, 9), (5, None)]


def test_target_model_makes_the_targets_with_its_own_text_encoder(sd_folder, other_sd_folder, tmp_path, judge_module):
    """As the authors always make targets with SD v1.4 (a UNet-erased model cannot draw them):
    --target-model's images of the prompt are the targets; everything else is --model's."""
    path = tmp_path / "prompts.csv"
    path.write_text("prompt,evaluation_seed\na photo of a cat,4\n")
    own, other = tmp_path / "own", tmp_path / "other"
    for out, extra in ((own, []), (other, ["--target-model", other_sd_folder])):
        result = run_cli("attack", "--model", sd_folder, "--prompts", path, "--judge", "userjudge:always_no",
                         "--out", out, *SD_FAST, *extra)
        assert result.exit_code == 0, result.output
    targets = [np.asarray(Image.open(out / "targets" / "0000.png")) for out in (own, other)]
    assert not np.array_equal(*targets)
    assert np.array_equal(targets[1], _generated(tmp_path, "made", other_sd_folder, "a photo of a cat", 4, 7.5, 4))
    assert _report(other)["manifest"]["target_model"] == str(other_sd_folder)
    assert _report(own)["manifest"]["target_model"] == str(sd_folder)
    # The unattacked images are --model's, whatever makes the targets.
    pres = [np.asarray(Image.open(out / "images" / "0000-pre.png")) for out in (own, other)]
    assert np.array_equal(*pres)


def test_bad_target_model_is_refused_in_one_line(sd_folder, tmp_path, judge_module):
    path = tmp_path / "prompts.csv"
    path.write_text("prompt\na photo of a cat\n")
    (tmp_path / "sd.safetensors").write_bytes(b"")
    (tmp_path / "targets").mkdir()
    cases = [
        (["--target-model", tmp_path / "none"], f"--target-model {tmp_path / 'none'} does not exist"),
        (["--target-model", tmp_path / "sd.safetensors"], "is a single-file checkpoint; pass a diffusers folder or a hub id"),
        (["--target-model", "world"], "--target-model world makes 16x16 images in pixel space, but --model"),
        (["--target-model", sd_folder, "--targets", tmp_path / "targets"], "--targets and --target-model: give one"),
    ]
    for extra, message in cases:
        out = tmp_path / "out"
        assert_refused(run_cli("attack", "--model", sd_folder, "--prompts", path, "--judge", "userjudge:always_no",
                               "--out", out, *SD_FAST, *extra), message)
        assert not out.exists()


def _wrapper_layout(te, shift=0.0):
    """The authors' released .pt layout: the state dict of their CustomTextEncoder, the CLIPTextModel
    under `text_encoder.text_model.` and the same tensors again under the wrapper's own names
    `embedding.`, `encoder.` and `final_layer_norm.`, position_ids buffers included."""
    state = {}
    for key, value in te.state_dict().items():
        bare = key.removeprefix("text_model.")
        value = value + shift if value.is_floating_point() else value
        state["text_encoder.text_model." + bare] = value
        alias = bare.replace("embeddings.", "embedding.", 1) if bare.startswith("embeddings.") else bare
        state[alias] = value
    positions = torch.arange(te.config.max_position_embeddings)[None]
    state["text_encoder.text_model.embeddings.position_ids"] = state["embedding.position_ids"] = positions
    return state


def test_the_authors_pt_layout_generates_what_the_same_weights_do_as_a_folder(sd_folder, tmp_path):
    parts = load_model(str(sd_folder))
    state = _wrapper_layout(parts.text_encoder, shift=0.01)  # an "unlearned" encoder: not the model's own
    assert {"embedding.position_embedding.weight", "encoder.layers.0.mlp.fc1.weight", "final_layer_norm.bias"} <= set(state)
    torch.save(state, tmp_path / "TextEncoder-nudity.pt")
    folder_encoder = load_encoder(str(tmp_path / "TextEncoder-nudity.pt"), parts)
    folder_encoder.save_pretrained(tmp_path / "as-folder")
    images = {}
    for name, encoder in (("pt", tmp_path / "TextEncoder-nudity.pt"), ("folder", tmp_path / "as-folder"),
                          ("base", None)):
        args = ["--encoder", encoder] if encoder else []
        result = run_cli("generate", "--model", sd_folder, *args, "--prompt", "a photo of a cat", "--seed", 3,
                         "--steps", 4, "--out", tmp_path / name)
        assert result.exit_code == 0, result.output
        images[name] = np.asarray(Image.open(tmp_path / name / "0000.png"))
    assert np.array_equal(images["pt"], images["folder"]) and not np.array_equal(images["pt"], images["base"])
    shifted = parts.text_encoder.state_dict()["embeddings.token_embedding.weight"] + 0.01
    torch.testing.assert_close(folder_encoder.state_dict()["embeddings.token_embedding.weight"], shifted)


def test_a_pt_whose_aliases_disagree_is_refused_naming_the_key(sd_folder, tmp_path):
    parts = load_model(str(sd_folder))
    state = _wrapper_layout(parts.text_encoder)
    state["encoder.layers.3.self_attn.q_proj.weight"] = state["encoder.layers.3.self_attn.q_proj.weight"] + 1
    torch.save(state, tmp_path / "mixed.pt")
    result = run_cli("generate", "--model", sd_folder, "--encoder", tmp_path / "mixed.pt", "--prompt", "x",
                     "--out", tmp_path / "o")
    assert_refused(result, "'encoder.layers.3.self_attn.q_proj.weight' differs from "
                           "text_encoder.text_model.encoder.layers.3.self_attn.q_proj.weight")
    assert not (tmp_path / "o" / "manifest.json").exists()
