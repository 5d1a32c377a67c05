"""What `attack`, `generate` and `eval` are given: the first option given wrong is the one
named, a refused command leaves no folder or file behind, and a damaged weights file is
called truncated or corrupt, by its path, once."""

import hashlib
import json
import shutil

import pytest
import torch
from checkpoints import save_single_file
from helpers import assert_refused, run_cli, save_narrow_encoder
from PIL import Image
from safetensors.torch import save_file
from weights import save_random_inception, save_tiny_clip

from advunlearn_fast.models.loading import WORLD_MODEL_DIR
from advunlearn_fast.models.tiny import build_tiny_model

ATTACK_FAST = ["--timesteps", 1, "--steps-per-timestep", 1, "--gen-steps", 2, "--target-steps", 2, "--quiet"]
JUDGE = "def never(images, prompts):\n    return [False for _ in images]\n"


@pytest.fixture
def given(tmp_path):
    """Inputs that are right, and for each path option one that is wrong."""
    (tmp_path / "prompts.txt").write_text("a red circle\na blue square\n")
    (tmp_path / "judge.py").write_text(JUDGE)
    (tmp_path / "some.txt").write_text("my notes\n")
    (tmp_path / "a-file").write_text("x")
    return tmp_path


def _snapshot(folder):
    return {p.relative_to(folder).as_posix(): p.read_bytes() if p.is_file() else None for p in folder.rglob("*")}


# ---------------------------------------------------------------- the first option given wrong is named first


def _args(command, options):
    return [command] + [str(a) for pair in options.items() for a in pair]


def _first_named(command, options, fixes, message_of):
    """Give every option wrong, then right one at a time in the command's order: each refusal
    names the first option still wrong. Returns the options, all right."""
    options = dict(options)
    for flag, right in fixes:
        assert_refused(run_cli(*_args(command, options)), message_of[flag])
        options[flag] = right
    return options


def test_generate_names_the_first_wrong_path(given):
    t = given
    wrong = {"--model": t / "no-model", "--encoder": t / "some.txt", "--prompts": t / "none.txt", "--out": t / "a-file"}
    fixes = [("--model", "world"), ("--encoder", WORLD_MODEL_DIR / "text_encoder"), ("--prompts", t / "prompts.txt"),
             ("--out", t / "out")]
    messages = {"--model": "no-model does not exist",
                "--encoder": "some.txt is a text file; expected a text-encoder folder, a train run folder, or a "
                             ".pt/.safetensors state dict",
                "--prompts": "prompt file not found", "--out": "a-file is a file, not a folder"}
    options = _first_named("generate", {**wrong, "--steps": 1}, fixes, messages)
    result = run_cli(*_args("generate", options))
    assert result.exit_code == 0, result.output


def test_attack_names_the_first_wrong_path(given):
    t = given
    wrong = {"--model": t / "no-model", "--encoder": t / "some.txt", "--prompts": t / "none.txt", "--judge": "magic",
             "--out": t / "a-file", "--targets": t / "no-targets"}
    fixes = [("--model", "world"), ("--encoder", WORLD_MODEL_DIR / "text_encoder"), ("--prompts", t / "prompts.txt"),
             ("--judge", f"{t / 'judge.py'}:never"), ("--out", t / "out"), ("--targets", t)]
    messages = {"--model": "no-model does not exist", "--encoder": "some.txt is a text file",
                "--prompts": "prompt file not found", "--judge": "unknown judge 'magic'",
                "--out": "a-file is a file, not a folder", "--targets": "--targets " + str(t / "no-targets")}
    options = _first_named("attack", {**wrong, "--method": "none", "--gen-steps": 1}, fixes, messages)
    result = run_cli(*_args("attack", options), "--quiet")
    assert result.exit_code == 0, result.output


def test_eval_names_the_first_wrong_path(given):
    t = given
    (t / "real").mkdir()
    for i in range(2):
        Image.new("RGB", (8, 8), (100 * i, 0, 0)).save(t / "real" / f"{i}.png")
    wrong = {"--model": t / "no-model", "--encoder": t / "none.pt", "--prompts": t / "none.txt", "--out": t / "a-file",
             "--clip": t / "no-clip", "--real": t / "no-real", "--inception": t / "none.pth"}
    fixes = [("--model", "world"), ("--encoder", WORLD_MODEL_DIR / "text_encoder"), ("--prompts", t / "prompts.txt"),
             ("--out", t / "out"), ("--clip", save_tiny_clip(t / "clip")), ("--real", t / "real")]
    messages = {"--model": "no-model does not exist", "--encoder": "none.pt does not exist",
                "--prompts": "prompt file not found", "--out": "a-file is a file, not a folder",
                "--clip": "--clip " + str(t / "no-clip") + " is not a folder", "--real": "no-real is not a folder"}
    options = _first_named("eval", wrong, fixes, messages)
    assert_refused(run_cli(*_args("eval", options)), "--inception " + str(t / "none.pth") + " is not a file")
    assert not (t / "out").exists()


# ---------------------------------------------------------------- a refused command leaves nothing behind


def _world_run(folder):
    """A train run folder on the concept world (concept red) whose encoder is the world's own."""
    shutil.copytree(WORLD_MODEL_DIR / "text_encoder", folder / "text_encoder")
    (folder / "run.json").write_text(json.dumps({"config": {"model": "world", "concepts": ["red"]}}))
    return folder


def _refusals(t):
    """(command and arguments, message) of refusals found early and late: before and after the
    model loads, and a judge that fails when first called. The attacks on a run folder write to
    RUN/attack-<method>/ unless given --out."""
    (t / "empty.txt").write_text("\n")
    (t / "broken.py").write_text("def judge(images, prompts):\n    raise RuntimeError('no GPU for my judge')\n")
    narrow = save_narrow_encoder(t / "narrow")
    run = _world_run(t / "run")
    generate = ["generate", "--model", "world", "--prompts", t / "prompts.txt", "--steps", 1]
    attack = ["attack", "--model", "world", "--prompts", t / "prompts.txt", "--judge", f"{t / 'judge.py'}:never",
              *ATTACK_FAST]
    evaluate = ["eval", "--model", "world", "--prompts", t / "prompts.txt", "--steps", 1, "--quiet"]
    return [
        (generate + ["--encoder", narrow], "hidden width 16"),
        (generate + ["--steps", 0], "--steps must be at least 1"),
        (generate[:3] + ["--prompts", t / "empty.txt"], "holds no prompts"),
        (attack + ["--encoder", narrow], "hidden width 16"),
        (attack + ["--adv-tokens", 80], "does not fit"),
        (attack + ["--judge", f"{t / 'broken.py'}:judge"], "no GPU for my judge"),
        (["attack", "--encoder", run, "--judge", "magic", "--quiet"], "unknown judge"),
        (["attack", "--encoder", run, "--adv-tokens", 80, "--quiet"], "does not fit"),
        (evaluate + ["--encoder", narrow], "hidden width 16"),
        (evaluate + ["--clip", t / "nowhere"], "is not a folder"),
    ]


def test_a_refused_command_leaves_no_new_folder_or_file(given):
    for args, message in _refusals(given):
        before = _snapshot(given)
        on_a_run = args[:3] == ["attack", "--encoder", given / "run"]
        assert_refused(run_cli(*args, *([] if on_a_run else ["--out", given / "new" / "out"])), message)
        assert _snapshot(given) == before, (args, message)  # the run folder too: no attack-*/prompts.txt


def test_a_refused_command_leaves_an_existing_folder_as_it_was(given):
    out = given / "existing"
    out.mkdir()
    (out / "notes.md").write_text("mine")
    for args, message in _refusals(given):
        before = _snapshot(given)
        assert_refused(run_cli(*args, "--out", out), message)
        assert _snapshot(given) == before, (args, message)


def test_a_run_folders_prompt_set_is_written_with_the_report(given):
    run = _world_run(given / "run")
    result = run_cli("attack", "--encoder", run, "--method", "none", "--gen-steps", 1, "--quiet")
    assert result.exit_code == 0, result.output
    out = run / "attack-none"
    report = json.loads((out / "report.json").read_text())
    assert report["manifest"]["prompt_file"] == str(out / "prompts.txt")
    assert report["manifest"]["prompt_file_sha256"] == hashlib.sha256((out / "prompts.txt").read_bytes()).hexdigest()
    assert len((out / "prompts.txt").read_text().splitlines()) == report["n"] == 72  # red and its 5 aliases x 4 shapes x 3 templates
    resumed = run_cli("attack", "--encoder", run, "--method", "none", "--gen-steps", 1, "--quiet", "--resume")
    assert resumed.exit_code == 0, resumed.output


# ---------------------------------------------------------------- damaged weights files


def _cut(path):
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


def _assert_truncated(result, path):
    assert_refused(result, f"{path} is truncated or corrupt (")
    assert result.output.count(str(path.parent)) == 1, result.output  # the path once, no folder besides


@pytest.mark.parametrize("part, file", [
    ("unet", "diffusion_pytorch_model.safetensors"), ("text_encoder", "model.safetensors"),
    ("vae", "diffusion_pytorch_model.safetensors"),
])
def test_a_truncated_model_part(sd_folder, tmp_path, part, file):
    model = tmp_path / "model"
    shutil.copytree(sd_folder, model)
    _cut(model / part / file)
    result = run_cli("generate", "--model", model, "--prompt", "a cat", "--steps", 1, "--out", tmp_path / "o")
    _assert_truncated(result, model / part / file)
    assert not (tmp_path / "o").exists()


def test_truncated_encoders(sd_folder, tmp_path):
    state = tmp_path / "encoder.safetensors"
    shutil.copy(sd_folder / "text_encoder" / "model.safetensors", state)
    _cut(state)
    folder = tmp_path / "folder"
    shutil.copytree(sd_folder / "text_encoder", folder)
    _cut(folder / "model.safetensors")
    pt = tmp_path / "encoder.pt"
    torch.save({"text_encoder.text_model.x": torch.zeros(1000)}, pt)
    _cut(pt)
    for encoder, damaged in ((state, state), (folder, folder / "model.safetensors"), (pt, pt)):
        result = run_cli("generate", "--model", sd_folder, "--encoder", encoder, "--prompt", "a cat", "--steps", 1,
                         "--out", tmp_path / "o")
        _assert_truncated(result, damaged)


def test_a_truncated_single_file_model(sd_folder, tmp_path):
    path = save_single_file(build_tiny_model(seed=1), tmp_path / "sd-v1.safetensors")
    _cut(path)
    for config in ([], ["--model-config", sd_folder]):
        result = run_cli("generate", "--model", path, *config, "--prompt", "a cat", "--steps", 1, "--out", tmp_path / "o")
        _assert_truncated(result, path)


def test_truncated_metric_and_judge_weights(given):
    t = given
    clip = save_tiny_clip(t / "clip")
    _cut(clip / "model.safetensors")
    inception = t / "inception.safetensors"
    save_file(torch.load(save_random_inception(t / "inception.pth"), weights_only=True), str(inception))
    _cut(inception)
    (t / "real").mkdir()
    for i in range(2):
        Image.new("RGB", (8, 8), (100 * i, 0, 0)).save(t / "real" / f"{i}.png")
    evaluate = ["eval", "--model", "world", "--prompts", t / "prompts.txt", "--steps", 1, "--out", t / "o", "--quiet"]
    _assert_truncated(run_cli(*evaluate, "--clip", clip), clip / "model.safetensors")
    _assert_truncated(run_cli(*evaluate, "--real", t / "real", "--inception", inception), inception)
    resnet = t / "resnet.safetensors"
    save_file({"fc.weight": torch.zeros(1000, 2048)}, str(resnet))
    _cut(resnet)
    attack = ["attack", "--model", "world", "--prompts", t / "prompts.txt", "--out", t / "o", *ATTACK_FAST]
    _assert_truncated(run_cli(*attack, "--judge", f"imagenet:{resnet}:497"), resnet)
    assert not (t / "o").exists()
