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
                "--encoder": "some.txt is a text file; expected a text-encoder folder, a train run folder, a "
                             "pipeline folder (its text_encoder/), or a .pt/.safetensors state dict",
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


# ---------------------------------------------------------------- options and files the three commands share


def _three_commands(t, out):
    """generate, eval and attack on the concept world, cheap, writing to `out`."""
    return [
        ["generate", "--model", "world", "--prompts", t / "prompts.txt", "--steps", 1, "--out", out],
        ["eval", "--model", "world", "--prompts", t / "prompts.txt", "--steps", 1, "--out", out, "--quiet"],
        ["attack", "--model", "world", "--prompts", t / "prompts.txt", "--judge", f"{t / 'judge.py'}:never",
         "--method", "none", "--gen-steps", 1, "--out", out, "--quiet"],
    ]


@pytest.mark.parametrize("device", ["tpu", "cuda:0", "meta"])
def test_device_is_checked_as_train_checks_it(given, device):
    message = f"--device must be one of auto, cpu, cuda, got {device!r}"
    for args in _three_commands(given, given / "out") + [["train", "--model", "world", "--concept", "red",
                                                          "--out", given / "out"]]:
        assert_refused(run_cli(*args, "--device", device), message)
        assert not (given / "out").exists(), args


@pytest.mark.parametrize("extra, message", [
    (["--seed", -1], "--seed must be a whole number from 0 to 9223372036854775807"),
    (["--seed", 2**63], "--seed must be a whole number from 0 to 9223372036854775807"),
    (["--guidance", "nan"], "--guidance must be a finite number >= 0, got nan"),
    (["--guidance", "inf"], "--guidance must be a finite number >= 0, got inf"),
    (["--guidance", -3], "--guidance must be a finite number >= 0, got -3"),
])
def test_seeds_and_guidance_out_of_range_are_refused(given, extra, message):
    for args in _three_commands(given, given / "out"):
        assert_refused(run_cli(*args, *extra), message)
        assert not (given / "out").exists(), args


@pytest.mark.parametrize("row, message", [
    ("a red circle,99999999999999999999,7.5", "csv:2: evaluation_seed must be a whole number from 0 to"),
    ("a red circle,-4,7.5", "csv:2: evaluation_seed must be a whole number from 0 to"),
    ("a red circle,1.5,7.5", "csv:2: evaluation_seed must be a whole number, got '1.5'"),
    ("a red circle,1,nan", "csv:2: evaluation_guidance must be a finite number >= 0, got nan"),
    ("a red circle,1,-5", "csv:2: evaluation_guidance must be a finite number >= 0, got -5"),
    ("a red circle,1,7.5,inf", "csv:2: sd_guidance_scale must be a finite number >= 0, got inf"),
])
def test_a_prompt_files_seed_and_guidance_are_checked(given, row, message):
    csv = given / "rows.csv"
    csv.write_text(f"prompt,evaluation_seed,evaluation_guidance,sd_guidance_scale\n{row}\n")
    for args in _three_commands(given, given / "out"):
        args[args.index("--prompts") + 1] = csv
        assert_refused(run_cli(*args), message)
        assert not (given / "out").exists(), args


def test_a_whole_seed_written_as_a_float_and_a_byte_order_mark_are_read(given):
    csv = given / "excel.csv"
    csv.write_bytes("\ufeffprompt,evaluation_seed,evaluation_guidance\na red circle,3.0,2\n".encode("utf-8"))
    result = run_cli("generate", "--model", "world", "--prompts", csv, "--steps", 1, "--out", given / "out")
    assert result.exit_code == 0, result.output
    images = json.loads((given / "out" / "manifest.json").read_text())["images"]
    assert [(i["prompt"], i["seed"], i["guidance"]) for i in images] == [("a red circle", 3, 2.0)]


def test_attack_lr_must_be_finite_and_positive(given):
    attack = _three_commands(given, given / "out")[2]
    for lr in ("nan", "inf", "0", "-1"):
        assert_refused(run_cli(*attack, "--attack-lr", lr), f"--attack-lr must be a finite number > 0, got {float(lr)}")
    assert not (given / "out").exists()


def test_a_csv_with_a_header_and_no_rows_has_no_prompts(given):
    (given / "header.csv").write_text("prompt,evaluation_seed\n")
    for args in _three_commands(given, given / "out"):
        args[args.index("--prompts") + 1] = given / "header.csv"
        assert_refused(run_cli(*args), "header.csv holds no prompts")


def _on_model(args, model, t):
    """The command on `model`, a latent SD folder (eval then measures the CLIP score)."""
    args[args.index("--model") + 1] = model
    return args + (["--clip", save_tiny_clip(t / "clip")] if args[0] == "eval" else [])


def test_a_latent_model_without_its_vae_is_refused(sd_folder, given):
    model = given / "novae"
    shutil.copytree(sd_folder, model)
    shutil.rmtree(model / "vae")
    for args in _three_commands(given, given / "out"):
        args = _on_model(args, model, given)
        assert_refused(run_cli(*args), f"--model {model} has no vae/, but its UNet works in a latent space of 4 channels")
        assert not (given / "out").exists(), args


def test_an_encoder_of_another_architecture_is_refused(sd_folder, given):
    """Two layers where the model's text encoder has 12, at its width: what export refuses."""
    from transformers import CLIPTextConfig, CLIPTextModel

    config = json.loads((sd_folder / "text_encoder" / "config.json").read_text())
    CLIPTextModel(CLIPTextConfig(vocab_size=config["vocab_size"], hidden_size=config["hidden_size"],
                                 intermediate_size=config["intermediate_size"], num_hidden_layers=2,
                                 num_attention_heads=config["num_attention_heads"],
                                 max_position_embeddings=config["max_position_embeddings"])).save_pretrained(given / "enc")
    for args in _three_commands(given, given / "out"):
        args = _on_model(args, sd_folder, given)
        assert_refused(run_cli(*args, "--encoder", given / "enc"),
                       "does not have the model's text-encoder architecture (2 layers, the model's has 12)")
        assert not (given / "out").exists(), args


def test_an_out_folder_with_an_earlier_run_is_refused_and_left_as_it_was(given):
    """generate and eval, as attack with its report.json: never mixed with, nor written over, what
    an earlier run left; a folder of other files is used."""
    out = given / "out"
    out.mkdir()
    (out / "notes.md").write_text("mine")
    for args, held in zip(_three_commands(given, out)[:2], ("manifest.json and 2 images (0000.png, ...)",
                                                              "eval.json and 2 images (images/0000.png, ...)")):
        first = run_cli(*args)
        assert first.exit_code == 0, first.output
        before = _snapshot(out)
        command = args[0]
        assert_refused(run_cli(*args), f"--out {out} already holds an earlier {command} run's {held}")
        assert _snapshot(out) == before


def test_an_earlier_generate_with_more_images_is_never_mixed_in(given):
    (given / "six.txt").write_text("".join(f"a red circle {i}\n" for i in range(6)))
    first = run_cli("generate", "--model", "world", "--prompts", given / "six.txt", "--steps", 1, "--out", given / "g")
    assert first.exit_code == 0, first.output
    (given / "g" / "manifest.json").unlink()  # an interrupted run leaves images without a manifest
    result = run_cli("generate", "--model", "world", "--prompts", given / "prompts.txt", "--steps", 1, "--out", given / "g")
    assert_refused(result, "already holds an earlier generate run's 6 images (0000.png, ...)")


def test_a_pickle_checkpoint_is_refused_for_safety(sd_folder, given):
    torch.save({"state_dict": {"x": given}}, given / "model.ckpt")  # a Path: a class weights-only loading refuses
    (given / "noise.ckpt").write_bytes(bytes(range(256)) * 20)
    for name in ("model.ckpt", "noise.ckpt"):
        result = run_cli("generate", "--model", given / name, "--model-config", sd_folder, "--prompt", "a cat",
                         "--out", given / "out")
        assert_refused(result, "was refused: it holds objects other than weights (or is no torch checkpoint at all), "
                               "which weights-only loading refuses for safety")


def test_clip_that_is_not_a_clip_model(sd_folder, given):
    evaluate = _three_commands(given, given / "out")[1]
    assert_refused(run_cli(*evaluate, "--clip", sd_folder / "text_encoder"),
                   f"--clip {sd_folder / 'text_encoder'} holds a clip_text_model (config.json), not a CLIP model")
    assert_refused(run_cli(*evaluate, "--clip", sd_folder), f"--clip {sd_folder} has no config.json")


def test_model_config_is_only_for_a_single_file_model(sd_folder, given):
    for args in _three_commands(given, given / "out"):
        assert_refused(run_cli(*args, "--model-config", sd_folder),
                       "--model-config is for a single-file --model (.safetensors/.ckpt checkpoint); --model world")
        assert_refused(run_cli(*args, "--model-config", given / "nope"), f"--model-config {given / 'nope'} does not exist")
    assert_refused(run_cli("train", "--model", "tiny", "--concept", "x", "--model-config", sd_folder),
                   "--model-config is for a single-file --model")


def test_generate_shows_progress_unless_quiet(given):
    generate = _three_commands(given, given / "a")[0]
    shown = run_cli(*generate)
    assert shown.exit_code == 0 and "images: 100%" in shown.output, shown.output
    quiet = run_cli(*_three_commands(given, given / "b")[0], "--quiet")
    assert quiet.exit_code == 0 and "images:" not in quiet.output, quiet.output
