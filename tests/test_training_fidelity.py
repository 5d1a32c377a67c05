"""The authors' training choices that are ours too (ALGORITHM.md, train-scripts/AdvUnlearn.py)."""

import json

import pytest
import torch
from helpers import FAST_ARGS, run_cli

import advunlearn_fast.training.trainer as trainer
from advunlearn_fast.models.diffusion import ddim_scheduler
from advunlearn_fast.training.config import TrainConfig
from advunlearn_fast.training.costs import CONDITIONING_BACKWARD, expected_walk_steps, fresh_rollout_cost
from advunlearn_fast.training.sampling import retain_indices, retain_prompts_used


def test_published_defaults():
    """The authors' README commands: --attack_init random --attack_step 30 --retain_train reg
    --retain_loss_w 0.3 --train_method text_encoder_full, and their argparse defaults otherwise."""
    cfg = TrainConfig(concepts=["nudity"]).validate()
    published = {
        "attack_init": "random", "attack_steps": 30, "attack_lr": 1e-3, "adv_tokens": 1, "insert": "prefix",
        "attack_every": 1, "warmup": 200, "iterations": 1000, "lr": 1e-5, "retain_batch": 5,
        "retain_weight": 0.3, "start_guidance": 3.0, "negative_guidance": 1.0, "ddim_steps": 50,
        "layers": "all", "component": "all", "attack": "pgd", "save_every": 200,
    }
    assert {k: getattr(cfg, k) for k in published} == published


def test_run_json_records_the_defaults(sd_folder, tmp_path):
    out = tmp_path / "run"
    result = run_cli("train", "--model", sd_folder, "--concept", "church", "--iterations", 1, "--out", out, *FAST_ARGS)
    assert result.exit_code == 0, result.output
    config = json.loads((out / "run.json").read_text())["config"]
    assert config["attack_init"] == "random" and config["bank_seed"] == 0 and config["retain_weight"] == 0.3


def test_retain_prompts_are_drawn_without_replacement_until_the_set_is_used_up():
    """The authors' PromptDataset: random.sample from the unseen prompts, reset when fewer than
    retain_batch are left unseen (those leftovers are not drawn in that pass)."""
    count, batch = 12, 5
    first_pass = [retain_indices(7, i, count, batch).tolist() for i in range(2)]
    drawn = first_pass[0] + first_pass[1]
    assert len(drawn) == len(set(drawn)) == 10  # 2 left unseen < 5: the next draw starts a new pass
    second_pass = [retain_indices(7, i, count, batch).tolist() for i in range(2, 4)]
    assert len(set(second_pass[0] + second_pass[1])) == 10
    assert first_pass != second_pass  # a new order each pass
    assert retain_indices(7, 3, count, batch).tolist() == second_pass[1]  # a pure function: resumable
    assert retain_indices(8, 0, count, batch).tolist() != first_pass[0]
    assert retain_prompts_used(7, 2, count, batch) == sorted(drawn)


def test_the_trainer_draws_its_retain_prompts_so(sd_folder, tmp_path, monkeypatch):
    chosen = []
    real = trainer.retain_indices

    def recording(seed, step, count, batch):
        chosen.append(real(seed, step, count, batch).tolist())
        return real(seed, step, count, batch)

    monkeypatch.setattr(trainer, "retain_indices", recording)
    out = tmp_path / "run"
    assert run_cli("train", "--model", sd_folder, "--concept", "church", "--iterations", 3, "--out", out,
                   "--no-bank", *FAST_ARGS).exit_code == 0
    assert len(chosen) == 3 and len({i for c in chosen for i in c}) == 6


def test_component_attn_with_all_layers_leaves_the_final_norm_alone(sd_folder, tmp_path):
    """The authors train final_layer_norm with text_encoder_full only when component is 'all'
    (or --norm_layer is given)."""
    def trained(*flags):
        cfg = TrainConfig(model=str(sd_folder), concepts=["church"], out="unused", bank=False, device="cpu",
                          **dict(flags)).validate()
        return set(trainer.build_setup(cfg).trainable)

    assert "final_layer_norm.weight" in trained(("layers", "all"))
    attn = trained(("layers", "all"), ("component", "attn"))
    assert attn and all(".self_attn." in n for n in attn)
    assert "final_layer_norm.weight" in trained(("layers", "all"), ("component", "attn"), ("final_norm", True))
    assert "final_layer_norm.weight" not in trained(("layers", "0-2"))


def test_rollouts_use_the_authors_ddim_whatever_the_config_says():
    """A config without clip_sample gives diffusers' DDIM x0 clipping to [-1, 1]; other spacings
    move the timesteps. The authors' sampler never clips and walks 1 + i*T/K."""
    config = {"num_train_timesteps": 1000, "beta_start": 0.00085, "beta_end": 0.012, "beta_schedule": "scaled_linear",
              "timestep_spacing": "trailing", "steps_offset": 0, "set_alpha_to_one": True}
    scheduler = ddim_scheduler(config, 50)
    assert scheduler.config.clip_sample is False and scheduler.config.thresholding is False
    assert scheduler.timesteps.tolist() == [1 + 20 * i for i in reversed(range(50))]
    assert scheduler.final_alpha_cumprod == scheduler.alphas_cumprod[0]
    # a latent far outside [-1, 1] is not clipped
    z = torch.full((1, 4, 2, 2), 30.0)
    out = scheduler.step(torch.zeros_like(z), int(scheduler.timesteps[0]), z).prev_sample
    assert out.abs().max() > 30


@pytest.mark.parametrize("target", ["unet-xattn", "unet-noxattn"])
@pytest.mark.parametrize("engine", ["reference", "fast"])
def test_unet_ablations_train_end_to_end(sd_folder, tmp_path, target, engine):
    from safetensors.torch import load_file

    out = tmp_path / "run"
    result = run_cli("train", "--model", sd_folder, "--concept", "church", "--train", target, "--engine", engine,
                     "--iterations", 2, "--warmup", 1, "--out", out, *FAST_ARGS)
    assert result.exit_code == 0, result.output
    saved = load_file(str(out / "unet" / "diffusion_pytorch_model.safetensors"))
    base = load_file(str(sd_folder / "unet" / "diffusion_pytorch_model.safetensors"))
    changed = {k for k in base if not torch.equal(base[k], saved[k])}
    assert changed
    if target == "unet-xattn":
        assert all(".attn2." in k for k in changed)
    else:
        assert not any(".attn2." in k or k.startswith(("time_embedding.", "conv_out.", "conv_norm_out.")) for k in changed)
    assert not (out / "text_encoder").exists()


def test_reference_engine_rolls_out_with_the_trained_unet_in_the_ablations(sd_folder):
    def source(engine, train):
        cfg = TrainConfig(model=str(sd_folder), concepts=["church"], out="unused", bank=False, engine=engine,
                          train=train, device="cpu").validate()
        s = trainer.build_setup(cfg)
        return s, s.source.rollout_unet

    s, unet = source("reference", "unet-xattn")
    assert unet is s.unet and unet is not s.frozen.unet  # the authors' sampler runs the model being trained
    assert source("fast", "unet-xattn")[1] is None  # the original: what a bank can hold
    assert source("reference", "text-encoder")[1] is None


@pytest.mark.parametrize("written", [None, 4])
def test_resume_refuses_a_checkpoint_of_another_training_format(sd_folder, tmp_path, written):
    """A checkpoint without training_format, or of an earlier format, is refused in one line."""
    out = tmp_path / "run"
    args = ["train", "--model", sd_folder, "--concept", "church", "--out", out, "--save-every", 1, *FAST_ARGS]
    assert run_cli(*args, "--iterations", 1).exit_code == 0
    state_file = out / "checkpoints" / "step-000001" / "training_state.pt"
    state = torch.load(state_file, weights_only=True)
    state.pop("training_format")
    torch.save(state if written is None else {**state, "training_format": written}, state_file)
    result = run_cli(*args, "--iterations", 2, "--resume")
    assert result.exit_code == 2 and "Traceback" not in result.output
    assert result.output.strip().splitlines()[-1].endswith(
        f"is a checkpoint of training format {written or 1}, this advunlearn resumes format 5 only; "
        "start a new run (another --out, without --resume)")


def test_attack_every_keeps_the_drawn_concept_and_its_embeddings_until_the_next_draw(sd_folder, tmp_path):
    """As the authors' loop with adv_prompt_update_step 3: a concept is drawn at iterations 0, 3
    and 6 (in the warm-up too), attacked once the warm-up is over, and trained on, with that
    attack's embeddings, until the next draw. The warm-up (2) ends between two draws: iteration 2
    trains clean, where the authors' script has no embeddings yet."""
    out = tmp_path / "run"
    result = run_cli("train", "--model", sd_folder, "--concept", "church", "--concept", "Van Gogh", "--out", out,
                     "--iterations", 9, "--warmup", 2, "--attack-every", 3, "--no-bank", *FAST_ARGS)
    assert result.exit_code == 0, result.output
    log = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]
    assert [r["attack_loss_end"] is not None for r in log] == [False] * 3 + [True, False, False] * 2
    assert [r["adversarial"] for r in log] == [False] * 3 + [True] * 6
    for draw in (0, 3, 6):
        assert len({r["concept"] for r in log[draw : draw + 3]}) == 1, log
    assert {r["concept"] for r in log} == {"church", "Van Gogh"}  # both drawn, so the test can tell
    # Two attack rounds, as the cost model expects for these settings.
    run = json.loads((out / "run.json").read_text())
    assert run["unet_fwd_equiv_total"]["attack"] == pytest.approx(2 * 2 * (1 + CONDITIONING_BACKWARD))
    with_attack, without = (fresh_rollout_cost(iterations=9, warmup=2, attacking=attacking, attack_every=3,
                                               attack_steps=2, retain_batch=2, ddim_steps=4, train_timesteps=1000)
                            for attacking in (True, False))
    assert with_attack - without == pytest.approx(2 * 2 * (2 * expected_walk_steps(4, 1000) + 1))


# AdvUnlearn.py's prompt cleaning, as their script has it.
AUTHORS_SHORTCUTS = {
    "allartist": "Kelly Mckernan, Thomas Kinkade, Ajin Demi Human, Alena Aenami, Tyler Edlin, Kilian Eng",
    "i2p": "hate, harassment, violence, suffering, humiliation, harm, suicide, sexual, nudity, bodily fluids, blood",
    "artifact": ("ugly, tiling, poorly drawn hands, poorly drawn feet, poorly drawn face, out of frame, mutation, "
                 "mutated, extra limbs, extra legs, extra arms, disfigured, deformed, cross-eye, body out of frame, "
                 "blurry, bad art, bad anatomy, blurred, text, watermark, grainy"),
}


@pytest.mark.parametrize("name", sorted(AUTHORS_SHORTCUTS))
def test_the_authors_concept_shortcuts_stand_for_their_lists(name):
    # One concept prompt, as their script trains it without --seperator; other names stay as typed.
    assert TrainConfig(concepts=[name, "church"]).validate().concepts == [AUTHORS_SHORTCUTS[name], "church"]
    assert TrainConfig(concepts=[name.upper()]).validate().concepts == [name.upper()]


def test_a_run_on_a_shortcut_trains_and_records_the_list(sd_folder, tmp_path):
    out = tmp_path / "run"
    result = run_cli("train", "--model", sd_folder, "--concept", "i2p", "--out", out, "--iterations", 2, "--warmup", 1,
                     "--adv-tokens", 3, *FAST_ARGS)
    assert result.exit_code == 0, result.output
    run = json.loads((out / "run.json").read_text())
    assert run["config"]["concepts"] == [AUTHORS_SHORTCUTS["i2p"]]
    assert [json.loads(line)["concept"] for line in (out / "log.jsonl").read_text().splitlines()] == [
        AUTHORS_SHORTCUTS["i2p"]] * 2
