"""The attack benchmark runs the real attack on the tiny model and reports the promised keys."""

from benchmarks.bench_attack import main

KEYS = ("s_per_prompt_per_block", "s_per_prompt_per_judged_generation", "s_per_prompt_unattacked_generation",
        "s_per_prompt_target_image", "peak_mb", "projected_i2p_nudity_s", "attack_step", "sampler")


def test_bench_attack_reports_per_block_and_generation_times_and_a_projection(tmp_path):
    report = main(["--model", "tiny", "--device", "cpu", "--prompts", "3", "--batch-size", "2", "--timesteps", "2",
                   "--steps-per-timestep", "2", "--gen-steps", "3", "--target-steps", "3", "--json",
                   str(tmp_path / "r.json")])
    for key in KEYS:
        assert key in report, key
    # Two batches (2 + 1 prompts), every prompt attacked through both blocks (the judge never stops one).
    assert report["rows_attacked"] == 3 and len(report["s_per_prompt_per_block_all"]) == 2 * 2
    assert report["attack_step"] == "eager" and report["sampler"] == "lms"
    # Every part of the projection was timed.
    parts = ("s_per_prompt_per_block", "s_per_prompt_per_judged_generation", "s_per_prompt_unattacked_generation",
             "s_per_prompt_target_image", "projected_i2p_nudity_s")
    assert all(0 < report[key] < float("inf") for key in parts), {key: report[key] for key in parts}
    assert all(seconds > 0 for seconds in report["s_per_prompt_per_block_all"])
    assert (tmp_path / "r.json").is_file()
