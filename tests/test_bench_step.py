"""The step benchmark runs both engines through the real loop and reports the promised keys."""

import statistics

import pytest

from benchmarks.bench_step import main

KEYS = ("device", "model", "dtype", "image_size", "reference_s_per_iter", "fast_s_per_iter", "speedup",
        "reference_peak_mb", "fast_peak_mb", "unet_fwd_equiv_reference", "unet_fwd_equiv_fast",
        "reference_s_per_iter_normalised", "speedup_normalised", "end_to_end_1000_s", "fast_peak_reserved_mb")


def test_bench_step_reports_both_engines(tmp_path):
    report = main(["--model", "tiny", "--device", "cpu", "--iterations", "2", "--reference-iterations", "1",
                   "--checkpointing", "--optim", "adam", "--attack-steps", "2",
                   "--ddim-steps", "4", "--retain-batch", "2", "--bank-size", "2", "--retain-bank-size", "1",
                   "--json", str(tmp_path / "r.json")])
    for key in KEYS:
        assert key in report, key
    # The bank removes every rollout and frozen target pass from an iteration.
    fast = report["engines"]["fast"]["unet_fwd_equiv_by_phase"]
    ref = report["engines"]["reference"]["unet_fwd_equiv_by_phase"]
    assert set(fast) == {"attack", "train", "retain"} and ref["rollout"] > 0 and ref["targets"] > 0
    assert report["unet_fwd_equiv_reference"] > report["unet_fwd_equiv_fast"]
    assert (tmp_path / "r.json").is_file()
    # --reference-iterations and the fast engine's memory options reach the runs they are for.
    engines = report["engines"]
    assert len(engines["reference"]["s_per_iter_all"]) == 1 and len(engines["fast"]["s_per_iter_all"]) == 2
    assert engines["fast"]["checkpointing"] and not engines["reference"]["checkpointing"]
    assert engines["fast"]["optim"] == engines["reference"]["optim"] == "adam"
    # CUDA graphs are for CUDA: a CPU runs every attack step eagerly and says so.
    assert engines["fast"]["attack_step"] == engines["reference"]["attack_step"] == "eager"
    assert len(engines["fast"]["loss_all"]) == len(engines["fast"]["attack_loss_end_all"]) == 2
    # Achieved TFLOP/s per phase, from the FLOPs of the tiny UNet's forward.
    for engine in engines.values():
        assert 0 < engine["unet_forward_tflop"] < 1e-3
        assert engine["attack_round_s"] > 0 and engine["defender_s"] > 0
        assert all(rate > 0 for phase, rate in engine["tflops_per_s"].items() if phase != "bank")
    assert engines["fast"]["tflops_per_s"]["bank"] > 0 and engines["reference"]["tflops_per_s"]["bank"] is None
    # The reference at its expected work per iteration: same seconds per forward-equivalent.
    ref = engines["reference"]
    assert ref["s_per_iter_normalised"] == pytest.approx(
        ref["s_per_iter"] / sum(ref["unet_fwd_equiv_by_phase"].values()) * ref["expected_unet_fwd_equiv"])


def test_bench_step_projects_the_published_run_from_a_bank_built_from_scratch(tmp_path):
    args = ["--model", "tiny", "--device", "cpu", "--engines", "fast", "--attack-steps", "2", "--ddim-steps", "4",
            "--retain-batch", "2", "--bank-size", "2", "--retain-bank-size", "1", "--bank-dir", str(tmp_path / "bank")]
    report = main([*args, "--iterations", "5", "--warmup", "3"])
    fast = report["engines"]["fast"]
    p = fast["end_to_end_1000"]
    # 3 warm-up iterations (the first dropped) and 2 attacked ones (the first dropped) were timed.
    assert p["warmup_measured"] and p["warmup_s_per_iter"] == pytest.approx(statistics.median(fast["s_per_iter_all"][1:3]))
    assert p["attacked_s_per_iter"] == fast["s_per_iter"] == fast["s_per_iter_all"][4]
    assert (p["warmup_iterations"], p["attacked_iterations"]) == (200, 800)
    # 5 iterations draw 10 retain prompts; the published run's 1000 draw all of them: the bank's time scales.
    assert p["bank_trajectories"]["built"] == 2 + 10 and p["bank_trajectories"]["published"] > 100
    assert p["bank_s"] == pytest.approx(fast["bank"]["seconds"] * p["bank_trajectories"]["published"] / 12)
    assert report["end_to_end_1000_s"] == pytest.approx(
        p["setup_s"] + p["bank_s"] + 200 * p["warmup_s_per_iter"] + 800 * p["attacked_s_per_iter"])
    # A bank partly built by an earlier run cannot be projected from.
    again = main([*args, "--iterations", "2"])
    assert again["engines"]["fast"]["end_to_end_1000"] is None and again["end_to_end_1000_s"] is None


def test_bench_step_profiles_the_iterations_after_the_first(tmp_path):
    report = main(["--model", "tiny", "--device", "cpu", "--engines", "fast", "--iterations", "3", "--attack-steps", "2",
                   "--ddim-steps", "4", "--retain-batch", "2", "--bank-size", "2", "--retain-bank-size", "1",
                   "--profile", "--trace", str(tmp_path / "trace")])
    profile = report["engines"]["fast"]["profile"]
    assert profile["iterations"] == 2
    # On a CPU: the share of the recorded time spent inside ATen operators, and the operators that took it.
    assert 0 < profile["in_operators_s"] <= profile["recorded_s"]
    # What is recorded is the iterations' work (the UNet's convolutions and attention), not an empty window.
    names = " ".join(op["name"] for op in profile["top"])
    assert "conv" in names or "scaled_dot_product" in names
    assert (tmp_path / "trace.fast.json").stat().st_size > 0


def test_bench_step_refuses_a_profile_it_could_not_record():
    for argv in (["--engines", "fast", "--iterations", "1", "--profile"],
                 ["--iterations", "3", "--reference-iterations", "1", "--profile"],
                 ["--iterations", "3", "--trace", "t"]):
        with pytest.raises(SystemExit) as refused:
            main(["--model", "tiny", "--device", "cpu", *argv])
        assert refused.value.code == 2


def test_gpu_busy_time_leaves_out_annotated_regions():
    """The profiler lists its ProfilerStep markers and annotations such as Optimizer.step among
    the device's events: counted as kernels, they would make the GPU more than fully busy."""
    from types import SimpleNamespace

    import torch
    from torch.autograd import DeviceType

    from benchmarks.bench_step import summarise_profile

    def event(name, device_us, device_type=DeviceType.CUDA, annotation=False):
        return SimpleNamespace(key=name, count=1, device_type=device_type, self_device_time_total=device_us,
                               is_user_annotation=annotation)

    averages = [event("ProfilerStep*", 2_000_000), event("Optimizer.step#Adam8bit.step", 49_000, annotation=True),
                event("gemm", 600_000), event("conv", 900_000), event("aten::add", 50, DeviceType.CPU)]
    profile = summarise_profile(averages, 2.0, torch.device("cuda"))
    assert profile["gpu_busy_s"] == pytest.approx(1.5)
    assert profile["gpu_busy_fraction"] == pytest.approx(0.75)
    assert [op["name"] for op in profile["top"]] == ["conv", "gemm"]
