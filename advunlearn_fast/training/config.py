"""Training configuration: one dataclass, validated field by field, naming the flag at fault.

Defaults are the published AdvUnlearn nudity run (ALGORITHM.md).
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import sys
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

from advunlearn_fast.device import check_device
from advunlearn_fast.errors import UserError
from advunlearn_fast.models.attention import ATTENTION_BACKENDS
from advunlearn_fast.prompts import CONCEPT_SHORTCUTS, INSERT_MODES, RETAIN_FILTERS

DEFAULT_MODEL = "CompVis/stable-diffusion-v1-4"
ATTACKS = ("pgd", "fast-at", "none")
ATTACK_INITS = ("random", "latest")
COMPONENTS = ("all", "attn", "mlp")
TRAIN_TARGETS = ("text-encoder", "unet-xattn", "unet-noxattn")
ENGINES = ("fast", "reference")
OPTIMS = ("adam", "adam8bit")


@dataclass
class TrainConfig:
    model: str = field(default=DEFAULT_MODEL, metadata={"help": "SD v1.x model: diffusers folder, .safetensors/.ckpt file, hub id, 'tiny', or 'world' (the shipped concept world)"})
    model_config: Optional[str] = field(default=None, metadata={"help": "local diffusers folder with the configs for a single-file checkpoint"})
    concepts: list = field(default_factory=list, metadata={"help": "concept to erase; repeatable for several phrases of one concept (e.g. red circle, red square), one sampled per iteration; allartist, i2p and artifact stand for the authors' lists, as in their script"})
    train: str = field(default="text-encoder", metadata={"help": "what is trained: text-encoder, or the UNet ablations unet-xattn (ESD-x) / unet-noxattn (ESD-u)"})
    layers: str = field(default="all", metadata={"help": "text-encoder layers to train: all, 0-5, 0,1,2 (exact indices)"})
    component: str = field(default="all", metadata={"help": "part of each selected layer to train: all, attn or mlp"})
    final_norm: Optional[bool] = field(default=None, metadata={"help": "train the final layer norm (default: yes with --layers all --component all, as the authors' text_encoder_full)"})
    out: str = field(default="out", metadata={"help": "output folder"})
    iterations: int = field(default=1000, metadata={"help": "training iterations"})
    warmup: int = field(default=200, metadata={"help": "iterations without attack at the start"})
    attack: str = field(default="pgd", metadata={"help": "attacker: pgd, fast-at (sign gradient) or none (plain ESD)"})
    attack_steps: int = field(default=30, metadata={"help": "attack optimisation steps per round"})
    attack_lr: float = field(default=1e-3, metadata={"help": "attack learning rate (Adam)"})
    adv_tokens: int = field(default=1, metadata={"help": "adversarial token embeddings"})
    insert: str = field(default="prefix", metadata={"help": "where adversarial tokens go: " + ", ".join(INSERT_MODES)})
    attack_init: str = field(default="random", metadata={"help": "attack start: random tokens (the published runs), or the latest round's result"})
    attack_every: int = field(default=1, metadata={"help": "iterations between attack rounds"})
    lr: float = field(default=1e-5, metadata={"help": "learning rate of the trained parameters (Adam)"})
    retain_batch: int = field(default=5, metadata={"help": "retain prompts per iteration"})
    retain_weight: float = field(default=0.3, metadata={"help": "weight of the utility-retaining loss"})
    retain_prompts: Optional[str] = field(default=None, metadata={"help": "retain prompts (.txt one per line, or .csv with a prompt column) [default: the authors' coco_object_retain.csv]"})
    retain_filter: str = field(default="phrase", metadata={"help": "retain prompts dropped before training: phrase (those holding a concept phrase as whole words; none of the authors' set for their concepts), related (also any sharing a word with the concept or its related terms) or none"})
    start_guidance: float = field(default=3.0, metadata={"help": "guidance of the frozen rollouts that produce z_t"})
    negative_guidance: float = field(default=1.0, metadata={"help": "eta of the ESD target e_0 - eta (e_p - e_0)"})
    ddim_steps: int = field(default=50, metadata={"help": "DDIM steps of the rollouts"})
    image_size: Optional[int] = field(default=None, metadata={"help": "image size in pixels (default: the model's native size)"})
    save_every: int = field(default=200, metadata={"help": "checkpoint interval in iterations"})
    resume: bool = field(default=False, metadata={"help": "continue from the last checkpoint in --out"})
    seed: int = field(default=0, metadata={"help": "random seed"})
    device: str = field(default="auto", metadata={"help": "auto, cpu or cuda"})
    engine: str = field(default="fast", metadata={"help": "fast, or reference (the authors' loop structure and precision, the benchmark baseline)"})
    bank: Optional[bool] = field(default=None, metadata={"help": "fast engine: sample z_t and targets from a trajectory bank built once (--bank), or roll out fresh (--no-bank) [default: whichever costs fewer UNet passes for this run; a short run rolls out fresh]"})
    bank_dir: str = field(default_factory=lambda: os.environ.get("ADVUNLEARN_BANK_DIR", "~/.cache/advunlearn/bank"), metadata={"help": "where trajectory banks are kept (reused across runs on the same model)"})
    bank_size: int = field(default=32, metadata={"help": "bank trajectories per concept prompt"})
    bank_seed: int = field(default=0, metadata={"help": "seed of the bank's trajectories (part of its key: studies over seeds should vary it too)"})
    retain_bank_size: int = field(default=2, metadata={"help": "bank trajectories per retain prompt"})
    optim: str = field(default="adam", metadata={"help": "optimiser of the trained parameters: adam (torch's, as the authors), or adam8bit (bitsandbytes 8-bit Adam state: less memory, other updates)"})
    compile: bool = field(default=False, metadata={"help": "fast engine: torch.compile the UNet's transformer blocks and the text encoder's layers, each block on its own (compiling first; for long GPU runs)"})
    attention: str = field(default="sdpa", metadata={"help": "the UNet's attention kernel: sdpa (PyTorch's scaled_dot_product_attention) or xformers (CUDA, needs the xformers package)"})
    channels_last: Optional[bool] = field(default=None, metadata={"help": "fast engine: the UNet in channels_last (NHWC) memory layout [default: on CUDA]"})
    tf32: Optional[bool] = field(default=None, metadata={"help": "fast engine: fp32 matrix products on CUDA in TF32: the trained text encoder's (and the trained UNet's in the UNet ablations); no effect on a CPU [default: on CUDA]"})
    cuda_graphs: bool = field(default=True, metadata={"help": "fast engine on CUDA: record the attack step once as a CUDA graph and replay it (the eager step is host-bound; run.json's attack_step says how the step ran)"})
    checkpointing: bool = field(default=False, metadata={"help": "activation checkpointing in the UNet and the trained text encoder: less memory for about one more forward pass"})
    attack_restarts: int = field(default=1, metadata={"help": "adversarial candidates optimised together, one batched UNet call per attack step; the lowest final attack loss is used"})

    def validate(self) -> "TrainConfig":
        self.concepts = [" ".join(str(c).split()) for c in self.concepts]
        self.concepts = [CONCEPT_SHORTCUTS.get(c, c) for c in self.concepts]
        if not self.concepts or any(not c for c in self.concepts):
            raise UserError("--concept must be given and non-empty")
        _choice("train", self.train, TRAIN_TARGETS)
        _choice("component", self.component, COMPONENTS)
        _choice("attack", self.attack, ATTACKS)
        _choice("insert", self.insert, INSERT_MODES)
        _choice("attack-init", self.attack_init, ATTACK_INITS)
        _choice("retain-filter", self.retain_filter, RETAIN_FILTERS)
        check_device(self.device)
        _choice("engine", self.engine, ENGINES)
        _choice("optim", self.optim, OPTIMS)
        _choice("attention", self.attention, ATTENTION_BACKENDS)
        for name in ("compile", "channels_last", "tf32"):
            if getattr(self, name) and self.engine == "reference":
                raise UserError(f"--{flag(name)} applies to the fast engine; the reference engine stays the "
                                "unmodified baseline")
        for name in ("iterations", "attack_steps", "adv_tokens", "attack_every", "retain_batch", "ddim_steps", "save_every",
                     "bank_size", "retain_bank_size", "attack_restarts"):
            if getattr(self, name) <= 0:
                raise UserError(f"--{flag(name)} must be a positive integer, got {getattr(self, name)}")
        for name, kind in typing.get_type_hints(TrainConfig).items():
            value = getattr(self, name)
            if kind is float and not math.isfinite(value):
                raise UserError(f"--{flag(name)} must be a finite number, got {value}")
        if self.warmup < 0:
            raise UserError(f"--warmup must be >= 0, got {self.warmup}")
        for name in ("lr", "attack_lr"):
            if not getattr(self, name) > 0:
                raise UserError(f"--{flag(name)} must be positive, got {getattr(self, name)}")
        for name in ("retain_weight", "start_guidance", "negative_guidance"):
            if not getattr(self, name) >= 0:
                raise UserError(f"--{flag(name)} must be >= 0, got {getattr(self, name)}")
        if self.image_size is not None and self.image_size <= 0:
            raise UserError(f"--image-size must be a positive integer, got {self.image_size}")
        from advunlearn_fast.outputs import check_output_path  # imports torch: not at --help time

        check_output_path(self.out, "--out")
        if self.engine == "fast" and self.bank is not False:
            check_output_path(self.bank_dir, "--bank-dir")
        return self

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


def flag(name: str) -> str:
    """The command-line flag of a setting, as the user types it (without the dashes)."""
    return "concept" if name == "concepts" else name.replace("_", "-")


def _choice(name: str, value, choices) -> None:
    if value not in choices:
        raise UserError(f"--{name} must be one of {', '.join(choices)}, got {value!r}")


def config_fields() -> dict[str, dataclasses.Field]:
    return {f.name: f for f in dataclasses.fields(TrainConfig)}


def read_config_file(path: str) -> dict:
    """Settings from a YAML or TOML file, keys as field names or flag names (dashes)."""
    p = Path(path)
    if not p.is_file():
        raise UserError(f"--config file not found: {path}")
    text = p.read_text(encoding="utf-8")
    try:
        if p.suffix.lower() == ".toml":
            if sys.version_info >= (3, 11):
                import tomllib
            else:  # pragma: no cover - depends on the interpreter
                import tomli as tomllib
            data = tomllib.loads(text)
        elif p.suffix.lower() == ".json":
            data = json.loads(text)
        else:
            import yaml

            data = yaml.safe_load(text) or {}
    except Exception as err:  # any parser's error is the user's file being malformed
        raise UserError(f"--config {path} cannot be parsed: {str(err).splitlines()[0]}") from None
    if not isinstance(data, dict):
        raise UserError(f"--config {path} must hold a mapping of settings")
    known = config_fields()
    settings = {}
    for key, value in data.items():
        name = str(key).replace("-", "_")
        if name == "concept":
            name, value = "concepts", value if isinstance(value, list) else [value]
        if name not in known:
            hint = closest_setting(name)
            raise UserError(f"--config {path}: unknown setting {key!r}" + (f" (did you mean {hint!r}?)" if hint else ""))
        settings[name] = check_setting_type(path, key, name, value)
    return settings


# The authors' argparse names (train-scripts/AdvUnlearn.py) of the settings that exist here.
AUTHORS_NAMES = {
    "prompt": "concept", "learning_rate": "lr", "attack_step": "attack_steps", "adv_prompt_num": "adv_tokens",
    "attack_type": "insert", "attack_method": "attack", "warmup_iter": "warmup", "retain_loss_w": "retain_weight",
    "save_interval": "save_every", "adv_prompt_update_step": "attack_every", "norm_layer": "final_norm",
}


def closest_setting(name: str) -> str | None:
    """The setting a mistyped or foreign name most likely means: the authors' name for it, the
    initials of its words (learning_rate -> lr), or the nearest spelling."""
    import difflib

    names = [n for n in config_fields() if n != "concepts"] + ["concept"]
    if name in AUTHORS_NAMES:
        return AUTHORS_NAMES[name]
    initials = "".join(word[0] for word in name.split("_") if word)
    if len(initials) > 1 and initials in names:
        return initials
    close = difflib.get_close_matches(name, names, n=1, cutoff=0.6)
    return close[0] if close else None


def check_setting_type(path: str, key: str, name: str, value):
    """A config-file value of its setting's type, or one line naming the key and the type. Numbers
    written as text are read (PyYAML reads `1e-5`, without a dot, as text)."""
    hint = typing.get_type_hints(TrainConfig)[name]
    base = next((a for a in typing.get_args(hint) if a is not type(None)), hint)
    if value is None and type(None) in typing.get_args(hint):
        return value
    if name == "concepts":
        if isinstance(value, list) and all(isinstance(v, str) for v in value):
            return value
        expected = "a text or a list of texts"
    elif base is bool:
        if isinstance(value, bool):
            return value
        expected = "true or false"
    elif base in (int, float):
        number = _number(value, base)
        if number is not None:
            return number
        expected = "an integer" if base is int else "a number"
    elif isinstance(value, str):
        return value
    else:
        expected = "a text"
    raise UserError(f"--config {path}: {key} must be {expected}, got {value!r}")


def _number(value, kind):
    if isinstance(value, bool):
        return None
    if isinstance(value, str):
        try:
            value = float(value.strip())
        except ValueError:
            return None
    if kind is int:
        return int(value) if isinstance(value, (int, float)) and float(value).is_integer() else None
    return float(value) if isinstance(value, (int, float)) else None
