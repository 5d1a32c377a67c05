"""gpu_check.sh's parts that run anywhere: the attention benchmark and the summary of the steps."""

import json

import pytest

from benchmarks.bench_attention import main as bench_attention
from benchmarks.gpu_check_summary import first_iterations_excess, summary


def test_attention_benchmark_measures_every_layout_and_says_what_it_could_not(tmp_path):
    report = bench_attention(["--model", "tiny", "--device", "cpu", "--batches", "1,2", "--repeats", "1",
                              "--warmup", "0", "--json", str(tmp_path / "a.json")])
    assert json.loads((tmp_path / "a.json").read_text()) == report
    combinations = {(r["batch"], r["layout"], r["attention"]) for r in report["results"]}
    assert combinations == {(b, layout, "sdpa") for b in (1, 2) for layout in ("nchw", "channels_last")}
    assert "needs a CUDA GPU" in report["unavailable"]["xformers"]
    for row in report["results"]:
        assert row["ms"] > 0 and row["tflops_per_s"] > 0
        # The same computation in either layout, up to rounding; the reference row is itself.
        assert row["output_difference"] < 1e-5 and row["gradient_difference"] < 1e-5
        assert (row["output_difference"] == 0) == (row["layout"] == "nchw")


def _fast(losses, s_per_iter, first_warmup, first_attacked, warmup_s=0.1, **extra):
    return {"engines": {"fast": {
        "s_per_iter": s_per_iter, "warmup_s_per_iter": warmup_s, "peak_mb": 1024.0, "peak_reserved_mb": 2048.0,
        "first_iteration_s": {"warmup": first_warmup, "attacked": first_attacked},
        "loss_all": losses, "attack_loss_end_all": [None] * 2 + [1.0] * (len(losses) - 2), "profile": None,
        "attention": "sdpa", "channels_last": True, "tf32": True, "compile": False, "optim": "adam",
        "checkpointing": False, "attack_step": "cuda-graph", **extra,
    }}}


def test_first_iterations_excess_is_what_the_first_of_each_kind_took_beyond_the_rest():
    r = _fast([1.0] * 4, s_per_iter=0.5, first_warmup=2.1, first_attacked=10.5)["engines"]["fast"]
    assert first_iterations_excess(r) == pytest.approx(2.0 + 10.0)
    r["warmup_s_per_iter"] = None  # no warm-up iteration after the first: only the attacked ones count
    assert first_iterations_excess(r) == pytest.approx(10.0)


def test_summary_compares_each_short_run_with_the_step(tmp_path):
    rates = {"attack_round_s": 0.4, "defender_s": 0.1, "unet_forward_tflop": 0.8,
             "tflops_per_s": {"attack": 300.0, "defender": 200.0, "iteration": 280.0, "bank": 400.0}}
    step = _fast([1.0, 2.0, 3.0, 4.0, 5.0, 6.0], s_per_iter=0.5, first_warmup=1.1, first_attacked=5.5, **rates)
    (tmp_path / "step.json").write_text(json.dumps(step))
    fp32 = _fast([1.0, 2.0, 3.03, 4.0], s_per_iter=0.6, first_warmup=1.1, first_attacked=5.6)
    (tmp_path / "fast-fp32.json").write_text(json.dumps(fp32))
    compiled = _fast([1.0, 2.0, 3.0, 4.0], s_per_iter=0.4, first_warmup=31.1, first_attacked=65.4)
    compiled["engines"]["fast"]["compile"] = True
    (tmp_path / "fast-compile.json").write_text(json.dumps(compiled))
    text = summary(tmp_path)
    assert "--no-tf32: 0.600 s per attacked iteration (0.83x the defaults' speed)" in text
    assert "losses differ from the defaults' by at most 1%" in text  # 3.03 against 3.0
    # Compiling: the first iterations' excess beyond the step's own (warm-up and graph recording).
    assert "compiling took about 90 s" in text
    assert "attack 300, defender 200, iteration 280, bank 400" in text
