"""Joint training of the world's text encoder and pixel-space UNet.

One flat loop: render a batch, caption it, noise it, predict the noise. Every
`eval_every` steps the EMA weights generate from held-out captions and the
judge scores them; the best EMA weights so far are written as a world-model
folder. A checkpoint every `checkpoint_every` steps holds everything needed to
resume bit for bit (weights, EMA, optimizer, RNG states, history).
"""

from __future__ import annotations

import copy
import dataclasses
import json
import os
import time
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from PIL import Image
from tqdm import tqdm

from advunlearn_fast.world.captions import (
    ALIAS_RATE,
    ALIASES,
    HELDOUT_TEMPLATES,
    PAD_LENGTH,
    SOLID_UNSAID,
    TEXTURE_UNSAID,
    TRAIN_TEMPLATES,
    build_world_tokenizer,
    caption,
    name_for,
)
from advunlearn_fast.world.evaluate import as_grid, heldout_accuracy, score
from advunlearn_fast.world.io import save_world_model
from advunlearn_fast.world.model import (
    DEFAULT_GUIDANCE,
    DEFAULT_STEPS,
    build_sample_scheduler,
    build_text_encoder,
    build_train_scheduler,
    build_unet,
)
from advunlearn_fast.world.render import COLOURS, IMAGE_SIZE, SHAPES, TEXTURES, Scene, random_scenes, render


@dataclass
class WorldTrainConfig:
    out: Path = Path("runs/world")
    steps: int = 2600
    batch_size: int = 64
    lr_unet: float = 1e-3
    lr_text: float = 1e-3
    weight_decay: float = 1e-2
    warmup: int = 100
    ema: float = 0.999
    caption_dropout: float = 0.1
    eval_every: int = 250
    eval_samples: int = 60
    eval_seed: int = 1234
    checkpoint_every: int = 250
    max_minutes: float | None = None
    seed: int = 0

    def __post_init__(self) -> None:
        for name in ("steps", "batch_size", "eval_every", "eval_samples", "checkpoint_every"):
            if getattr(self, name) <= 0:
                raise ValueError(f"--{name.replace('_', '-')} must be positive, got {getattr(self, name)}")
        if not 0.0 <= self.caption_dropout < 1.0:
            raise ValueError(f"--caption-dropout must be in [0, 1), got {self.caption_dropout}")
        if not 0.0 <= self.ema < 1.0:
            raise ValueError(f"--ema must be in [0, 1), got {self.ema}")


def captions_for(scene: Scene, generator: torch.Generator, dropout: float) -> list[str]:
    n = len(scene)
    template = torch.randint(len(TRAIN_TEMPLATES), (n,), generator=generator)
    solid = scene.texture == TEXTURES.index("solid")
    said = torch.rand(n, generator=generator) >= torch.where(solid, SOLID_UNSAID, TEXTURE_UNSAID)
    dropped = torch.rand(n, generator=generator) < dropout
    colours = list(COLOURS)
    captions = []
    for i in range(n):
        if dropped[i]:
            captions.append("")
            continue
        colour = name_for(colours[scene.colour[i]], generator)
        shape = name_for(SHAPES[scene.shape[i]], generator)
        texture = name_for(TEXTURES[scene.texture[i]], generator) if said[i] else None
        captions.append(caption(TRAIN_TEMPLATES[template[i]], colour, shape, texture))
    return captions


def world_metadata(config: WorldTrainConfig, step: int, accuracy: dict[str, float]) -> dict:
    return {
        "kind": "advunlearn concept world",
        "pixel_space": True,
        "image_size": IMAGE_SIZE,
        "attributes": {"colour": list(COLOURS), "shape": list(SHAPES), "texture": list(TEXTURES)},
        "train_templates": list(TRAIN_TEMPLATES),
        "heldout_templates": list(HELDOUT_TEMPLATES),
        "template_obj": "[<texture> ]<colour> <shape>, e.g. 'striped red circle' or 'red circle'",
        "aliases": {k: list(v) for k, v in ALIASES.items()},
        "alias_rate": ALIAS_RATE,
        "pad_length": PAD_LENGTH,
        "default_guidance": DEFAULT_GUIDANCE,
        "default_steps": DEFAULT_STEPS,
        "judge": "world:<attribute>=<value>, e.g. world:colour=red",
        # Measured on the captions that chose this checkpoint, hence optimistic;
        # shipping adds an independent `heldout_accuracy` on fresh seeds.
        "selection_accuracy": {
            **accuracy,
            "samples": config.eval_samples,
            "seeds": [config.eval_seed],
            "guidance": DEFAULT_GUIDANCE,
            "steps": DEFAULT_STEPS,
        },
        "training": {"step": step, "seed": config.seed, "batch_size": config.batch_size},
    }


def _ema_decay(config: WorldTrainConfig, step: int) -> float:
    # Warm-up keeps the average from dragging the random initialisation along
    # for thousands of steps (0.999 alone still weighs it 37% after 1000).
    return min(config.ema, (1 + step) / (10 + step))


def _save_atomic(obj: dict, path: Path) -> None:
    tmp = path.with_suffix(".tmp")
    torch.save(obj, tmp)
    os.replace(tmp, path)


def train_world(config: WorldTrainConfig, resume: bool = False) -> dict:
    out = Path(config.out)
    out.mkdir(parents=True, exist_ok=True)
    checkpoint_path = out / "checkpoint.pt"
    torch.manual_seed(config.seed)
    generator = torch.Generator().manual_seed(config.seed)

    tokenizer = build_world_tokenizer()
    text_encoder = build_text_encoder(tokenizer)
    unet = build_unet()
    noise_scheduler = build_train_scheduler()
    sample_scheduler = build_sample_scheduler()
    ema_text, ema_unet = copy.deepcopy(text_encoder).eval(), copy.deepcopy(unet).eval()
    optimizer = torch.optim.AdamW(
        [
            {"params": unet.parameters(), "lr": config.lr_unet},
            {"params": text_encoder.parameters(), "lr": config.lr_text},
        ],
        weight_decay=config.weight_decay,
    )
    warmup = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: min(1.0, (s + 1) / config.warmup))
    state = {"step": 0, "best": None, "history": [], "seconds": 0.0}

    if resume and checkpoint_path.exists():
        ckpt = torch.load(checkpoint_path, weights_only=False)
        text_encoder.load_state_dict(ckpt["text_encoder"])
        unet.load_state_dict(ckpt["unet"])
        ema_text.load_state_dict(ckpt["ema_text"])
        ema_unet.load_state_dict(ckpt["ema_unet"])
        optimizer.load_state_dict(ckpt["optimizer"])
        warmup.load_state_dict(ckpt["warmup"])
        generator.set_state(ckpt["generator"])
        torch.set_rng_state(ckpt["torch_rng"])
        state = ckpt["state"]
        print(f"resumed from step {state['step']}")
    (out / "config.json").write_text(json.dumps(dataclasses.asdict(config), default=str, indent=2) + "\n")

    params = list(text_encoder.parameters()) + list(unet.parameters())
    ema_params = list(ema_text.parameters()) + list(ema_unet.parameters())
    alphas = noise_scheduler.alphas_cumprod

    def evaluate_and_keep_best(step: int) -> None:
        accuracy, images = heldout_accuracy(
            tokenizer, ema_text, ema_unet, sample_scheduler, n=config.eval_samples, seed=config.eval_seed
        )
        # The aliases count too: the world must know its synonyms for them to be attack routes.
        aliased, _ = heldout_accuracy(
            tokenizer, ema_text, ema_unet, sample_scheduler, n=config.eval_samples, seed=config.eval_seed, aliased=True
        )
        accuracy.update({f"{k}_aliased": v for k, v in aliased.items()})
        state["history"].append({"step": step, **accuracy})
        tqdm.write(f"step {step}: held-out " + ", ".join(f"{k} {v:.1%}" for k, v in accuracy.items()))
        if state["best"] is None or score(accuracy) > score({k: v for k, v in state["best"].items() if k != "step"}):
            state["best"] = {"step": step, **accuracy}
            save_world_model(out / "best", tokenizer, ema_text, ema_unet, world_metadata(config, step, accuracy))
            grid = as_grid(images, columns=10).numpy()
            preview = Image.fromarray(grid).resize((4 * grid.shape[1], 4 * grid.shape[0]), Image.NEAREST)
            preview.save(out / "best_samples.png")

    def save_checkpoint() -> None:
        _save_atomic(
            {
                "text_encoder": text_encoder.state_dict(),
                "unet": unet.state_dict(),
                "ema_text": ema_text.state_dict(),
                "ema_unet": ema_unet.state_dict(),
                "optimizer": optimizer.state_dict(),
                "warmup": warmup.state_dict(),
                "generator": generator.get_state(),
                "torch_rng": torch.get_rng_state(),
                "state": state,
            },
            checkpoint_path,
        )

    started = time.time() - state["seconds"]
    bar = tqdm(range(state["step"], config.steps), initial=state["step"], total=config.steps, desc="world")
    for step in bar:
        scene = random_scenes(config.batch_size, generator)
        images = render(scene, generator)
        prompts = captions_for(scene, generator, config.caption_dropout)
        ids = tokenizer(prompts, padding="max_length", truncation=True, max_length=PAD_LENGTH, return_tensors="pt").input_ids
        t = torch.randint(0, noise_scheduler.config.num_train_timesteps, (config.batch_size,), generator=generator)
        noise = torch.randn(images.shape, generator=generator)
        a = alphas[t].view(-1, 1, 1, 1)
        noisy = a.sqrt() * images + (1 - a).sqrt() * noise

        context = text_encoder(ids).last_hidden_state
        loss = F.mse_loss(unet(noisy, t, encoder_hidden_states=context).sample, noise)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        optimizer.step()
        warmup.step()
        with torch.no_grad():
            torch._foreach_lerp_(ema_params, params, 1.0 - _ema_decay(config, step))
        bar.set_postfix(loss=f"{loss.item():.4f}")

        done = step + 1
        state["step"] = done
        state["seconds"] = time.time() - started
        out_of_time = config.max_minutes is not None and state["seconds"] >= 60 * config.max_minutes
        if done % config.eval_every == 0 or done == config.steps or out_of_time:
            evaluate_and_keep_best(done)
        if done % config.checkpoint_every == 0 or done == config.steps or out_of_time:
            state["seconds"] = time.time() - started
            save_checkpoint()
        if out_of_time:
            tqdm.write(f"stopping at step {done}: --max-minutes {config.max_minutes} reached")
            break
    bar.close()
    summary = {"steps": state["step"], "seconds": round(state["seconds"], 1), "best": state["best"], "history": state["history"]}
    (out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    return summary
