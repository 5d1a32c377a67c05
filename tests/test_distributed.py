"""Two gloo processes under torchrun, against one process: attack, eval and generate give the same
rows and images, the trajectory bank the same entries, and data-parallel training identical
weights on both ranks, written once, resumable. Every run is on the CPU (CPU = ...): on CUDA each
process takes a GPU of its own, which a one-GPU machine does not have."""

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers import FAST_ARGS, run_cli
from safetensors.torch import load_file
from weights import save_random_inception, save_tiny_clip

import advunlearn_fast.training.trainer as trainer
from advunlearn_fast.training.config import TrainConfig

WORKER = Path(__file__).with_name("distributed_worker.py")
PROMPTS = ("prompt,evaluation_seed,evaluation_guidance\na red circle,3,4.0\na blue square,7,\na green cross,,2.5\n"
           "a small red triangle,11,\na striped yellow circle,2,3.0\n")


def torchrun(*args, processes: int = 2) -> subprocess.CompletedProcess:
    """`torchrun --standalone --nproc-per-node N ARGS` (ARGS: a script, or -m module), bounded in time."""
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", str(processes),
               *map(str, args)]
    run = subprocess.run(command, capture_output=True, text=True, timeout=600, env=os.environ.copy())
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-5000:]
    return run


def advunlearn(*args):
    """The CLI under torchrun, as `torchrun --no-python advunlearn ...` runs it."""
    return torchrun("-m", "advunlearn_fast.cli.main", *args)


@pytest.fixture
def prompts(tmp_path):
    path = tmp_path / "prompts.csv"
    path.write_text(PROMPTS)
    return path


def _without_timing(rows):
    return [{k: v for k, v in row.items() if k != "seconds"} for row in rows]


def _same_files(a: Path, b: Path, pattern: str) -> int:
    names = sorted(p.relative_to(a) for p in a.glob(pattern))
    assert names == sorted(p.relative_to(b) for p in b.glob(pattern))
    for name in names:
        assert (a / name).read_bytes() == (b / name).read_bytes(), name
    return len(names)


# ---------------------------------------------------------------- attack, eval, generate


CPU = ["--device", "cpu"]
ATTACK = ["attack", "--model", "world", "--judge", "world:colour=red", "--timesteps", 2, "--steps-per-timestep", 2,
          "--adv-tokens", 2, "--gen-steps", 4, "--target-steps", 4, "--batch-size", 2, "--quiet", *CPU]


def test_attack_rows_are_one_process_rows_and_resume_takes_another_process_count(tmp_path, prompts):
    two, one = tmp_path / "two", tmp_path / "one"
    run = advunlearn(*ATTACK, "--prompts", prompts, "--out", two)
    assert run.stdout.count("done:") == 1  # rank 0 alone says it
    assert run_cli(*ATTACK, "--prompts", prompts, "--out", one).exit_code == 0
    report_two, report_one = (json.loads((d / "report.json").read_text()) for d in (two, one))
    # Three batches of two prompts at most: rank 0 took prompts 0, 1, 4 and rank 1 prompts 2, 3.
    assert [r["index"] for r in report_two["rows"]] == [0, 1, 2, 3, 4]
    assert _without_timing(report_two["rows"]) == _without_timing(report_one["rows"])
    assert any(r["attacked"] for r in report_one["rows"]) and any(not r["attacked"] for r in report_one["rows"])
    assert (report_two["asr"], report_two["pre_asr"], report_two["complete"]) == (report_one["asr"], report_one["pre_asr"], True)
    assert (report_two["manifest"]["world_size"], report_one["manifest"]["world_size"]) == (2, 1)
    assert _same_files(two, one, "images/*.png") > 5 and _same_files(two, one, "targets/*.png") == 5
    assert _same_files(two, one, "grids/*.png") == 5

    # As if the report had been cut after its first batch: one process finishes it.
    stopped = json.loads((two / "report.json").read_text())
    stopped["rows"] = stopped["rows"][:2]
    (two / "report.json").write_text(json.dumps(stopped))
    assert run_cli(*ATTACK, "--prompts", prompts, "--out", two, "--resume").exit_code == 0
    resumed = json.loads((two / "report.json").read_text())
    assert _without_timing(resumed["rows"]) == _without_timing(report_one["rows"])
    assert resumed["rows"][:2] == stopped["rows"]  # kept, not recomputed


EVAL = ["--model", "world", "--steps", 3, "--batch-size", 2, "--quiet", *CPU]


def test_eval_and_generate_write_what_one_process_writes(tmp_path, prompts):
    real = tmp_path / "real"
    real.mkdir()
    rng = np.random.default_rng(0)
    for i in range(5):
        from PIL import Image

        Image.fromarray(rng.integers(0, 256, (20 + 2 * i, 24, 3), dtype=np.uint8)).save(real / f"{i}.png")
    clip = save_tiny_clip(tmp_path / "clip")
    inception = save_random_inception(tmp_path / "pt_inception-2015-12-05-6726825d.pth")
    metrics = ["--clip", clip, "--real", real, "--inception", inception]

    two, one = tmp_path / "eval-two", tmp_path / "eval-one"
    run = advunlearn("eval", *EVAL, "--prompts", prompts, "--out", two, *metrics)
    assert run.stdout.count("done:") == 1
    assert run_cli("eval", *EVAL, "--prompts", prompts, "--out", one, *metrics).exit_code == 0
    eval_two, eval_one = (json.loads((d / "eval.json").read_text()) for d in (two, one))
    assert eval_two["rows"] == eval_one["rows"] and eval_two["n"] == 5
    # FID from real and generated features gathered in the one-process order: equal, not close.
    assert eval_two["metrics"] == eval_one["metrics"] and set(eval_one["metrics"]) == {"clip_score", "fid", "world_accuracy"}
    assert (eval_two["manifest"]["world_size"], eval_one["manifest"]["world_size"]) == (2, 1)
    assert _same_files(two, one, "images/*.png") == 5

    two, one = tmp_path / "generate-two", tmp_path / "generate-one"
    generate = ["generate", "--model", "world", "--steps", 3, "--batch-size", 2, "--prompts", prompts, *CPU]
    run = advunlearn(*generate, "--out", two)
    assert run.stdout.count("done: 5 images") == 1
    assert run_cli(*generate, "--out", one).exit_code == 0
    manifest_two, manifest_one = (json.loads((d / "manifest.json").read_text()) for d in (two, one))
    assert manifest_two.pop("world_size") == 2 and manifest_one.pop("world_size") == 1
    assert manifest_two == manifest_one
    assert _same_files(two, one, "*.png") == 5


# ---------------------------------------------------------------- training and its bank

TRAIN = dict(concepts=["nudity"], layers="0-1", warmup=1, save_every=2, attack_init="latest", bank=True,
             ddim_steps=4, attack_steps=2, retain_batch=2, bank_size=2, retain_bank_size=1, device="cpu")


def _train_two(tmp_path, name, sd_folder, bank_dir, **changes):
    cfg = dict(TRAIN, model=str(sd_folder), out=str(tmp_path / name), bank_dir=str(bank_dir), **changes)
    config = tmp_path / f"{name}.json"
    config.write_text(json.dumps(cfg))
    torchrun(WORKER, "train", config, tmp_path / f"{name}-weights")
    return tmp_path / name


def _weights(path: Path) -> dict:
    return load_file(str(path))


def _assert_same_weights(a: dict, b: dict):
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), key


def test_data_parallel_training(sd_folder, tmp_path):
    bank_two = tmp_path / "bank-two"
    whole = _train_two(tmp_path, "whole", sd_folder, bank_two, iterations=4)

    # Both ranks hold the same encoder, bit for bit, and it is the one written.
    ranks = [_weights(tmp_path / "whole-weights" / f"rank-{r}.safetensors") for r in (0, 1)]
    _assert_same_weights(ranks[0], ranks[1])
    _assert_same_weights(ranks[0], _weights(whole / "text_encoder" / "model.safetensors"))
    before = load_file(str(sd_folder / "text_encoder" / "model.safetensors"))
    assert not torch.equal(ranks[0]["text_model.encoder.layers.0.mlp.fc1.weight"],
                           before["text_model.encoder.layers.0.mlp.fc1.weight"])

    # Written once, by rank 0: one log line per iteration holding both ranks' own records.
    run = json.loads((whole / "run.json").read_text())
    assert (run["status"], run["world_size"]) == ("complete", 2)
    assert "data-parallel over 2 processes" in (whole / "README.md").read_text()  # the model card says so
    log = [json.loads(line) for line in (whole / "log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in log] == [1, 2, 3, 4]
    assert all(len(r["ranks"]) == 2 for r in log)
    assert all(r["loss"] == pytest.approx(sum(x["loss"] for x in r["ranks"]) / 2) for r in log)
    # Each rank drew and attacked on its own: its own generator draws its own timesteps.
    assert any(r["ranks"][0]["t"] != r["ranks"][1]["t"] for r in log)
    assert all(r["ranks"][1]["attack_loss_end"] is not None for r in log[1:])
    assert not list(whole.rglob("*.partial"))

    # The bank the two processes built, entry for entry as one process builds it for the same draws
    # (one process in 8 iterations draws the retain prompts two draw in 4).
    cfg = TrainConfig(**dict(TRAIN, model=str(sd_folder), out="unused", iterations=8, bank_dir=str(tmp_path / "bank-one")))
    trainer.build_setup(cfg.validate())
    entries = sorted(p.name for p in bank_two.iterdir())
    # The concept's entries and the retain entries are built in separate groups: both ranks built some.
    assert len(entries) > 1
    assert entries == sorted(p.name for p in (tmp_path / "bank-one").iterdir())
    for entry in entries:
        for array in ("z.npy", "t.npy", "e.npy"):
            assert np.array_equal(np.load(bank_two / entry / array), np.load(tmp_path / "bank-one" / entry / array))

    # A run stopped at its checkpoint continues to the same weights, with as many processes only.
    cut = _train_two(tmp_path, "cut", sd_folder, bank_two, iterations=2)
    refused = run_cli("train", "--model", sd_folder, "--out", cut, "--concept", "nudity", "--layers", "0-1", "--warmup", 1,
                      "--save-every", 2, "--attack-init", "latest", "--bank", "--bank-dir", bank_two, "--bank-size", 2,
                      "--retain-bank-size", 1, "--iterations", 4, "--resume", *FAST_ARGS)
    assert refused.exit_code == 2 and "ran as 2 process(es), this is 1" in refused.output
    _train_two(tmp_path, "cut", sd_folder, bank_two, iterations=4, resume=True)
    _assert_same_weights(_weights(cut / "text_encoder" / "model.safetensors"), ranks[0])
    resumed = [json.loads(line) for line in (cut / "log.jsonl").read_text().splitlines()]
    assert [_without_timing(r["ranks"]) for r in resumed] == [_without_timing(r["ranks"]) for r in log]


def test_ranks_draw_what_one_process_draws_in_as_many_iterations_and_rank_0_keeps_the_seed(monkeypatch):
    from advunlearn_fast.training.sampling import rank_seed

    assert rank_seed(7, 0) == 7 and len({rank_seed(7, r) for r in range(4)}) == 4
    draws = []
    for rank in (0, 1):
        for name, value in {"RANK": rank, "WORLD_SIZE": 2, "LOCAL_RANK": rank, "MASTER_ADDR": "127.0.0.1",
                            "MASTER_PORT": 1}.items():
            monkeypatch.setenv(name, str(value))
        draws += [trainer.retain_draw(step) for step in range(5)]
    assert sorted(draws) == list(range(10))
    cfg = TrainConfig(concepts=["x"], iterations=5)
    assert trainer.retain_draws(cfg, 2) == 10


def test_a_folder_some_rank_does_not_see_is_refused(tmp_path):
    run = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
                          str(WORKER), "shared", str(tmp_path / "out")], capture_output=True, text=True, timeout=300)
    assert run.returncode != 0
    lines = sorted(line for line in run.stdout.splitlines() if line.startswith("rank "))
    assert len(lines) == 2, run.stdout + run.stderr
    assert all("--out" in line and "rank(s) 1 do not see" in line for line in lines)
    assert not [p for p in (tmp_path / "out").iterdir()]  # the probe is gone


def test_one_process_under_torchrun_names_its_rank_in_errors(monkeypatch):
    for name, value in {"RANK": "1", "WORLD_SIZE": "2", "LOCAL_RANK": "1", "MASTER_ADDR": "127.0.0.1",
                        "MASTER_PORT": "1"}.items():
        monkeypatch.setenv(name, value)
    result = run_cli("attack", "--model", "world", "--prompts", "missing.txt", "--judge", "world:colour=red",
                     "--out", "o")
    assert result.exit_code == 2
    assert result.output.strip() == "advunlearn: error (rank 1): prompt file not found: missing.txt"
