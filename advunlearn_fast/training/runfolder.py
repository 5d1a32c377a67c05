"""A training run's --out folder: which folders a run may write into or continue, its
checkpoints (saved and restored), run.json's summary, and the final trained weights."""

from __future__ import annotations

import json
import platform
from pathlib import Path
from typing import TYPE_CHECKING

import torch

from advunlearn_fast import __version__, distributed
from advunlearn_fast.errors import UserError
from advunlearn_fast.outputs import atomic_dir, load_module_weights, write_text_encoder, write_tokenizer, write_unet
from advunlearn_fast.training.config import TrainConfig, flag
from advunlearn_fast.training.graphs import GraphedStep
from advunlearn_fast.training.optim import bitsandbytes_version

if TYPE_CHECKING:
    from advunlearn_fast.training.trainer import Setup

# Settings a resumed run may change; every other one must match the checkpoint.
RESUMABLE_CHANGES = {
    "iterations", "out", "resume", "device", "save_every", "bank_dir", "compile", "checkpointing", "cuda_graphs",
    "attention", "channels_last", "tf32",
}
STATE_FILE = "training_state.pt"
# The layout and algorithm of the checkpoints written and read here: z_t where the authors' sampler
# ends for the drawn index (over ldm's timesteps less the top one), the run's settings under
# "config", and each process's generator, latest adversarial tokens and the concept it holds
# between --attack-every draws under "ranks". A checkpoint of another format is refused, never
# converted.
TRAINING_FORMAT = 5


def run_summary(cfg: TrainConfig, s: Setup, status: str) -> dict:
    import diffusers
    import transformers

    return {
        "status": status,
        "config": cfg.to_dict(),
        "world_size": distributed.world_size(),
        "model_source": s.parts.source,
        "device": str(s.device),
        "trained_parameters": sorted(s.trainable),
        "trained_parameter_count": sum(p.numel() for p in s.trainable.values()),
        "layers": s.layer_indices,
        "retain_prompt_count": len(s.retain_texts),
        # The file the retain prompts came from: --retain-prompts, the model folder's own, or the built-in one.
        "retain_source": cfg.retain_prompts or s.parts.default_retain_file or "built-in",
        "unet_dtype": str(s.frozen.unet.dtype).replace("torch.", ""),
        "train_timesteps": s.frozen.train_timesteps,  # the model's T: with --ddim-steps, the walk to z_t
        "attack_step": attack_step_mode(s),
        "trajectories": s.trajectories,
        "bank": {"entries_built": s.bank_built, "seconds": round(s.bank_seconds, 3)} if s.trajectories.get("source") == "bank" else None,
        "unet_fwd_equiv_total": s.meter.totals(),
        "versions": {
            "advunlearn": __version__, "torch": torch.__version__, "diffusers": diffusers.__version__,
            "transformers": transformers.__version__, "python": platform.python_version(),
            **({"bitsandbytes": bitsandbytes_version()} if cfg.optim == "adam8bit" else {}),
        },
    }


def attack_step_mode(s: Setup) -> str:
    """How the attack steps ran, for run.json: eager, cuda-graph, or why a graph was not used
    (each distinct answer once: concepts have their own graphs)."""
    steps = s.attack_step_by_concept.values()
    if not steps:
        return "no attack step ran"
    return "; ".join(sorted({step.describe() if isinstance(step, GraphedStep) else "eager" for step in steps}))


# ---------------------------------------------------------------- outputs and checkpoints


def check_output(out: Path, cfg: TrainConfig) -> Path | None:
    """Refuse an --out that holds something other than a run this command may write or continue;
    with --resume, return the checkpoint to continue from. Creates nothing: the folder is made once
    the inputs have been checked."""
    run = read_run(out)
    checkpoints = sorted((out / "checkpoints").glob("step-*")) if run else []
    resumable = [c for c in checkpoints if (c / STATE_FILE).is_file()]
    status = run.get("status") if run else None
    if cfg.resume:
        if run is None:
            raise UserError(f"--resume: there is no training run in {out} to resume")
        if status == "diverged":
            raise UserError(f"--resume: the run in {out} diverged at iteration {divergence_point(run)}; with the same "
                            "settings it would diverge again: start a new run in another --out with a lower --lr")
        if not resumable:
            raise UserError(f"--resume: no checkpoint to resume from in {out / 'checkpoints'} "
                            "(the run stopped before its first one): run the command without --resume")
        return resumable[-1]
    if run is None:
        present = sorted(p.name for p in out.iterdir()) if out.is_dir() else []
        if present:
            shown = ", ".join(present[:3]) + (", ..." if len(present) > 3 else "")
            raise UserError(f"--out {out} is not empty and holds no training run ({shown}): choose a new or empty folder")
        return None
    if status == "complete":
        raise UserError(f"--out {out} holds a finished run: choose another folder, or pass --resume with a higher "
                        "--iterations to train it further")
    if status == "diverged" and checkpoints:
        raise UserError(f"--out {out} holds a run that diverged at iteration {divergence_point(run)}, its checkpoints "
                        "kept: choose another folder")
    if checkpoints:
        raise UserError(f"--out {out} holds an unfinished run (checkpoints up to {checkpoints[-1].name}): pass --resume "
                        "to continue it, or choose another folder")
    # A run stopped before its first checkpoint left nothing to continue: it starts over.
    return None


def read_run(out: Path) -> dict | None:
    """The run.json of a training run in `out`, None when `out` holds none."""
    try:
        run = json.loads((out / "run.json").read_text())
    except (OSError, ValueError):
        return None
    return run if isinstance(run, dict) and "status" in run and isinstance(run.get("config"), dict) else None


def divergence_point(run: dict):
    return (run.get("diverged") or {}).get("iteration", "?")


def resume_point(out: Path, cfg: TrainConfig) -> tuple[Path | None, dict | None]:
    """The checkpoint to continue from (None: a new run) and where its run took z_t from. A run
    continues with as many processes as it had: each holds its own random state."""
    checkpoint = check_output(out, cfg)
    if checkpoint is None:
        return None, None
    earlier = json.loads((out / "run.json").read_text())
    processes = earlier.get("world_size", 1)
    if processes != distributed.world_size():
        raise UserError(f"--resume: the run in {out} ran as {processes} process(es), this is {distributed.world_size()}: "
                        f"continue it with as many (torchrun --nproc-per-node and --nnodes as it had)")
    return checkpoint, earlier.get("trajectories")


def resume_hint(out: Path) -> str:
    """What an interrupted training run can do next."""
    resumable = sorted(c.name for c in (out / "checkpoints").glob("step-*") if (c / STATE_FILE).is_file())
    if resumable:
        return f"continue from {out / 'checkpoints' / resumable[-1]} with the same command and --resume"
    return "no checkpoint was saved yet (one every --save-every iterations): run the same command again to start over"


def trained_folder_name(s: Setup) -> str:
    return "text_encoder" if s.trained is s.te else "unet"


def _write_trained(s: Setup, folder: Path) -> None:
    if s.trained is s.te:
        write_text_encoder(s.te, folder)
    else:
        write_unet(s.unet, folder)


def save_checkpoint(out: Path, step: int, s: Setup, optimizer, generator, latest_adv, concept: int) -> None:
    """Written by rank 0: the weights and optimiser state (the same on every rank) and each rank's
    random state, latest adversarial prompts and the concept it holds."""
    ranks = distributed.gather_to_main({"generator": generator.get_state(), "concept": concept,
                                        "latest_adv": {k: v.cpu() for k, v in latest_adv.items()}})
    if ranks is None:
        return
    root = out / "checkpoints"
    with atomic_dir(root / f"step-{step:06d}") as tmp:
        _write_trained(s, tmp / trained_folder_name(s))
        torch.save(
            {
                "step": step,
                "training_format": TRAINING_FORMAT,
                "config": s.cfg.to_dict(),
                "optimizer": optimizer.state_dict(),
                "ranks": ranks,
            },
            tmp / STATE_FILE,
        )
    # Only the newest checkpoint keeps the (large) optimizer state needed to resume.
    for older in root.glob("step-*"):
        if older.name != f"step-{step:06d}":
            (older / STATE_FILE).unlink(missing_ok=True)


def restore_checkpoint(folder: Path, s: Setup, optimizer, generator, latest_adv) -> tuple[int, int]:
    """The checkpoint's weights, optimiser and this rank's state restored; returns its iteration and
    the concept this rank holds there."""
    try:
        state = torch.load(folder / STATE_FILE, map_location="cpu", weights_only=True)
    except Exception as err:
        raise UserError(f"cannot read checkpoint {folder}: {str(err).splitlines()[0]}") from None
    written = state.get("training_format", 1)  # format 1 did not name itself
    if written != TRAINING_FORMAT:
        raise UserError(
            f"--resume: {folder} is a checkpoint of training format {written}, this advunlearn resumes format "
            f"{TRAINING_FORMAT} only; start a new run (another --out, without --resume)"
        )
    # A setting the checkpoint does not name is compared at its default.
    saved = {**TrainConfig().to_dict(), **state["config"]}
    now = s.cfg.to_dict()
    changed = [k for k, v in now.items() if k not in RESUMABLE_CHANGES and saved[k] != v]
    if changed:
        flags = [f"--{flag(k)}" for k in changed]
        listed = flags[0] if len(flags) == 1 else ", ".join(flags[:-1]) + " and " + flags[-1]
        values = "; ".join(f"{f} was {saved[k]!r}, now {now[k]!r}" for f, k in zip(flags, changed))
        one = len(changed) == 1
        raise UserError(f"--resume: {listed} {'differs' if one else 'differ'} from the checkpoint's run ({values}); "
                        f"keep {'it as it was' if one else 'them as they were'}")
    if state["step"] >= s.cfg.iterations:
        raise UserError(f"--resume: the checkpoint is at iteration {state['step']}; raise --iterations to go further")
    name = trained_folder_name(s)
    weights = folder / name / ("model.safetensors" if name == "text_encoder" else "diffusion_pytorch_model.safetensors")
    load_module_weights(s.trained, weights)
    optimizer.load_state_dict(state["optimizer"])
    mine = state["ranks"][distributed.rank()]
    generator.set_state(mine["generator"])
    latest_adv.update({int(k): v.to(s.device) for k, v in mine["latest_adv"].items()})
    return int(state["step"]), int(mine["concept"])


def write_final_outputs(out: Path, s: Setup) -> None:
    with atomic_dir(out / "tokenizer") as tmp:
        write_tokenizer(s.parts.tokenizer, tmp)
    with atomic_dir(out / trained_folder_name(s)) as tmp:
        _write_trained(s, tmp)
