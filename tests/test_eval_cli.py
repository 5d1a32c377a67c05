"""`advunlearn eval` end to end through click on the concept world, with a tiny CLIP folder and
random FID-Inception weights saved to disk; and the one-line refusals before generation."""

import hashlib
import json

import pytest
import torch
from helpers import assert_refused, run_cli
from PIL import Image
from transformers import CLIPModel, CLIPProcessor
from weights import save_random_inception, save_tiny_clip

from advunlearn_fast.models.loading import load_model

PROMPTS = "prompt,evaluation_seed\na red circle,3\nan image of a striped blue square,5\na photo of a cat,\n"
# On the CPU, where the CLIP scores computed here are.
FAST = ["--steps", 2, "--batch-size", 2, "--quiet", "--device", "cpu"]


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    root = tmp_path_factory.mktemp("eval-inputs")
    (root / "prompts.csv").write_text(PROMPTS)
    real = root / "real"
    real.mkdir()
    for i, colour in enumerate([(200, 30, 30), (30, 30, 200), (90, 160, 40)]):
        Image.new("RGB", (20 + 4 * i, 24), colour).save(real / f"{i}.png")  # sizes differ on purpose
    return {
        "prompts": root / "prompts.csv", "real": real, "clip": save_tiny_clip(root / "clip"),
        "inception": save_random_inception(root / "pt_inception-2015-12-05-6726825d.pth"),
    }


def _eval(out, files, *extra):
    return run_cli("eval", "--model", "world", "--prompts", files["prompts"], "--out", out, *FAST, *extra)


def _hand_clip_score(folder, image_file, prompt):
    model, processor = CLIPModel.from_pretrained(folder), CLIPProcessor.from_pretrained(folder)
    with torch.no_grad():
        out = model(**processor(text=[prompt], images=[Image.open(image_file)], return_tensors="pt", padding=True))
    return 100 * max(float((out.image_embeds * out.text_embeds).sum()), 0.0)


def test_eval_writes_clip_score_fid_world_accuracy_and_manifest(tmp_path, files, no_network):
    out = tmp_path / "eval"
    result = _eval(out, files, "--clip", files["clip"], "--real", files["real"], "--inception", files["inception"])
    assert result.exit_code == 0, result.output
    report = json.loads((out / "eval.json").read_text())
    rows = report["rows"]
    assert report["n"] == 3 and [(r["seed"], r["guidance"]) for r in rows] == [(3, 4.0), (5, 4.0), (0, 4.0)]
    assert all((out / r["file"]).is_file() for r in rows)

    hand = [_hand_clip_score(files["clip"], out / r["file"], r["prompt"]) for r in rows]
    assert [r["clip_score"] for r in rows] == pytest.approx(hand, abs=1e-3)
    assert report["metrics"]["clip_score"] == pytest.approx(sum(hand) / 3, abs=1e-3)
    assert max(hand) > 0  # the clamp is not all there is to check

    assert report["metrics"]["fid"] > 0 and "fewer than 2048" in report["notes"][0]
    # Prompts naming one world value per attribute are judged on it; the cat names none.
    accuracy = report["metrics"]["world_accuracy"]
    assert {a: v["n"] for a, v in accuracy.items()} == {"colour": 2, "shape": 2, "texture": 1}
    assert rows[1]["world"]["texture"]["named"] == "striped" and rows[2]["world"] == {}

    manifest = report["manifest"]
    assert manifest["prompt_file_sha256"] == hashlib.sha256(files["prompts"].read_bytes()).hexdigest()
    assert manifest["inception"]["sha256"] == hashlib.sha256(files["inception"].read_bytes()).hexdigest()
    assert len(manifest["clip"]["sha256"]) == 64 and manifest["real"]["n"] == 3 and manifest["seeds"] == [3, 5, 0]
    assert "torch" in manifest["versions"] and manifest["steps"] == 2


def test_fid_of_the_generated_images_against_themselves_is_zero(tmp_path, files, no_network):
    first, second = tmp_path / "first", tmp_path / "second"
    assert _eval(first, files, "--clip", files["clip"]).exit_code == 0
    result = _eval(second, files, "--real", first / "images", "--inception", files["inception"])
    assert result.exit_code == 0, result.output
    report = json.loads((second / "eval.json").read_text())
    # Same seeds, same images: FID is computed on exactly the pixels written.
    assert report["metrics"]["fid"] == pytest.approx(0.0, abs=1e-6)
    assert "clip_score" not in report["metrics"] and report["manifest"]["clip"] is None


def test_real_images_are_found_in_subfolders_as_t2ibenchmark_finds_them(tmp_path, files):
    """T2IBenchmark's get_images_from_folder walks the folder (os.walk) and keeps the extensions of
    its IMAGE_EXTENSIONS as written, lower case; an image it would read that cannot be read is
    refused, naming it."""
    from advunlearn_fast.evaluation.utility import real_image_files

    real = tmp_path / "real"
    (real / "a" / "b").mkdir(parents=True)
    for name in ("top.png", "a/one.jpg", "a/b/two.tiff", "a/b/three.ppm"):
        Image.new("RGB", (12, 10), (10, 200, 30)).save(real / name)
    for name in ("a/SHOUT.PNG", "a/notes.txt"):
        (real / name).write_bytes(b"skipped")
    assert [p.relative_to(real).as_posix() for p in real_image_files(str(real))] == [
        "a/b/three.ppm", "a/b/two.tiff", "a/one.jpg", "top.png"]
    out = tmp_path / "eval"
    result = _eval(out, files, "--real", real, "--inception", files["inception"])
    assert result.exit_code == 0, result.output
    assert json.loads((out / "eval.json").read_text())["manifest"]["real"]["n"] == 4
    (real / "a" / "b" / "broken.png").write_bytes(b"not a png")
    assert_refused(_eval(tmp_path / "eval2", files, "--real", real, "--inception", files["inception"]),
                   f"--real: cannot read {real / 'a' / 'b' / 'broken.png'}")


@pytest.mark.parametrize("extra, message", [
    (["--real", "{real}"], "FID needs the Inception weights on local disk: pass --inception <path to pt_inception"),
    (["--real", "{real}", "--inception", "{tmp}/none.pth"], "is not a file on local disk: pass the FID Inception weights"),
    (["--inception", "{inception}"], "--inception is for FID, which also needs --real DIR"),
    (["--clip", "{tmp}/no-clip"], "is not a folder on local disk: pass --clip <a local CLIP model folder"),
    (["--clip", "{tmp}"], "has no config.json: not a CLIP model folder"),
    (["--real", "{tmp}/one", "--inception", "{inception}"], "holds 1 images"),
    (["--real", "{real}", "--inception", "{tmp}/junk.pth"], "junk.pth is a text file; expected a state dict"),
    (["--clip", "{clip}", "--steps", "0"], "--steps must be at least 1"),
])
def test_missing_or_bad_metric_inputs_are_refused_before_generation(tmp_path, files, extra, message):
    (tmp_path / "one").mkdir()
    Image.new("RGB", (8, 8)).save(tmp_path / "one" / "a.png")
    (tmp_path / "junk.pth").write_bytes(b"not a checkpoint")
    out = tmp_path / "out"
    args = [a.format(tmp=tmp_path, real=files["real"], inception=files["inception"], clip=files["clip"]) for a in extra]
    assert_refused(_eval(out, files, *args), message)
    assert not (out / "images").exists()


def test_nothing_to_measure_names_the_options(tmp_path, files):
    result = run_cli("eval", "--model", "tiny", "--prompts", files["prompts"], "--out", tmp_path / "o", "--quiet")
    assert_refused(result, "nothing to measure: pass --clip <local CLIP folder> for the CLIP score and/or --real DIR")


def test_attack_with_a_clip_judge_takes_the_runs_concept(tmp_path, files):
    run = tmp_path / "run"
    load_model("world").text_encoder.save_pretrained(run / "text_encoder")
    (run / "run.json").write_text(json.dumps({"config": {"model": "world", "concepts": ["red"]}}))
    result = run_cli("attack", "--encoder", run, "--judge", f"clip:{files['clip']}", "--method", "none",
                     "--gen-steps", 1, "--quiet")
    assert result.exit_code == 0, result.output
    judge = json.loads((run / "attack-none" / "report.json").read_text())["manifest"]["judge"]
    assert judge["spec"] == f"clip:{files['clip']}:red" and judge["texts"] == ["an image of red", "an image"]
    prompts = tmp_path / "p.txt"
    prompts.write_text("a red circle\n")
    given = run_cli("attack", "--model", "world", "--prompts", prompts, "--judge", f"clip:{files['clip']}",
                    "--concept", "blue", "--method", "none", "--gen-steps", 1, "--out", tmp_path / "given", "--quiet")
    assert given.exit_code == 0, given.output
    report = json.loads((tmp_path / "given" / "report.json").read_text())
    assert report["manifest"]["judge"]["texts"] == ["an image of blue", "an image"]
