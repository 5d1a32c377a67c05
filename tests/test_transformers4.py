"""Opt-in: a text encoder written by `advunlearn train` loads weight for weight in transformers 4.57.

SD v1.x tools still run transformers 4.x, which keys CLIPTextModel weights under `text_model.`
and silently re-initialises any weight it cannot find. The check runs in a virtual environment
of its own (torch and transformers 4.57 from the package registry, nothing of advunlearn), so it
takes minutes and is skipped unless ADVUNLEARN_TEST_TRANSFORMERS4=1. ADVUNLEARN_TRANSFORMERS4_VENV
may name a folder where that environment is kept between runs.
"""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from helpers import FAST_ARGS, run_cli

from advunlearn_fast.models.loading import load_model

pytestmark = pytest.mark.skipif(
    os.environ.get("ADVUNLEARN_TEST_TRANSFORMERS4") != "1",
    reason="opt-in: ADVUNLEARN_TEST_TRANSFORMERS4=1 builds a venv with transformers 4.57 from the package registry",
)

# torch first, and the CPU build: installed as a dependency of transformers it could be a CUDA one.
REQUIREMENTS = (["torch==2.13.0"], ["transformers==4.57.*"])
PROMPT = "a photo of a cat on a bench"

PROBE = """
import json, sys
import torch, transformers
from safetensors.torch import load_file
from transformers import CLIPTextModel, CLIPTokenizer

run, prompt = sys.argv[1], sys.argv[2]
model, info = CLIPTextModel.from_pretrained(run + "/text_encoder", output_loading_info=True)
stored = load_file(run + "/text_encoder/model.safetensors")
state = model.state_dict()
print(json.dumps({
    "transformers": transformers.__version__,
    "missing": info["missing_keys"],
    "unexpected": info["unexpected_keys"],
    "mismatched": [str(m) for m in info["mismatched_keys"]],
    "not_in_file": sorted(k for k in state if k not in stored),
    "differ": sorted(k for k, v in stored.items() if k not in state or not torch.equal(state[k], v)),
    "compared": len(stored),
    "ids": CLIPTokenizer.from_pretrained(run + "/tokenizer")(prompt).input_ids,
}))
"""


def _run(command, **kwargs):
    result = subprocess.run(command, capture_output=True, text=True, **kwargs)
    assert result.returncode == 0, f"{command[:4]}: {result.stdout[-2000:]}{result.stderr[-3000:]}"
    return result.stdout


@pytest.fixture(scope="module")
def transformers4_python(tmp_path_factory):
    folder = Path(os.environ.get("ADVUNLEARN_TRANSFORMERS4_VENV") or tmp_path_factory.mktemp("tf4") / "venv")
    python = folder / "bin" / "python"
    if not python.exists():
        _run([sys.executable, "-m", "venv", str(folder)])
    for requirement in REQUIREMENTS:
        _run([str(python), "-m", "pip", "install", "-q", *requirement])
    return python


def test_trained_encoder_loads_weight_for_weight_in_transformers_4(transformers4_python, sd_folder, tmp_path):
    run = tmp_path / "run"
    result = run_cli("train", "--model", sd_folder, "--concept", "cat", "--layers", "1", "--out", run,
                     "--iterations", 2, "--warmup", 1, *FAST_ARGS)
    assert result.exit_code == 0, result.output
    # Away from the checkout and without PYTHONPATH: only the environment's own packages.
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    report = json.loads(_run([str(transformers4_python), "-c", PROBE, str(run), PROMPT], cwd=tmp_path, env=env))
    assert report["transformers"].startswith("4.57."), report["transformers"]
    assert report["missing"] == report["unexpected"] == report["mismatched"] == [], report
    assert report["not_in_file"] == [] and report["differ"] == [], report
    assert report["compared"] > 0
    assert report["ids"] == load_model(str(sd_folder)).tokenizer(PROMPT).input_ids
