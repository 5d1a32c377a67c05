"""`advunlearn attack`: pre-ASR and ASR of a (victim) text encoder under an attack (EVALUATION.md).

Per prompt: generate with the victim at the prompt's seed and guidance and judge it (pre);
unless that already succeeds, attack with the ORIGINAL model's image of the prompt as target,
judging a generation after every timestep block and stopping at the first success. Prompts go
`--batch-size` at a time: their generations, judgments and attack steps share calls, and each
prompt's attack is the one it would have alone (unlearndiffatk.py), so the batch size changes
speed, not results (beyond float rounding). The report is rewritten after every batch, so
`--resume` continues where a run stopped.
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from diffusers import DDIMScheduler
from tqdm.auto import tqdm

from advunlearn_fast.device import kernel_backend, limit_threads_for_small_model, resolve_device
from advunlearn_fast.errors import UserError
from advunlearn_fast.evaluation.generation import (
    Pipeline,
    build_pipeline,
    encode_images,
    from_pil,
    generate_from_conditions,
    image_grid,
    read_prompt_rows,
    to_pil,
    with_default_guidance,
)
from advunlearn_fast.evaluation.judges import Judge, make_judge, with_concept
from advunlearn_fast.evaluation.manifest import file_sha256, versions
from advunlearn_fast.evaluation.unlearndiffatk import (
    attack_timesteps,
    diffusion_classifier_loss,
    nearest_tokens,
    soft_prompt,
    uniform_simplex,
    unlearndiffatk,
)
from advunlearn_fast.models.diffusion import draw_noise
from advunlearn_fast.models.insertion import SpecialTokens, build_layout, prompt_words, stack_layouts
from advunlearn_fast.models.text_encoding import adversarial_condition, token_table
from advunlearn_fast.outputs import write_json_atomic
from advunlearn_fast.prompts import concept_name

METHODS = ("unlearndiffatk", "softprompt", "none")
REPORT = "report.json"


@dataclass
class AttackSettings:
    model: str
    encoder: str | None
    prompts: str
    judge: str
    out: str
    method: str = "unlearndiffatk"
    adv_tokens: int = 5
    timesteps: int = 50
    steps_per_timestep: int = 40
    attack_lr: float = 0.01
    insert: str = "prefix"
    targets: str | None = None
    target_steps: int = 25
    gen_steps: int | None = None  # the model's default (50 for SD, the world's own)
    guidance: float | None = None  # for prompts without their own; the model's default
    seed: int = 0  # for prompts without their own
    device: str = "auto"
    resume: bool = False
    model_config: str | None = None
    # Prompts attacked together. On the concept world (CPU, 8 prompts, 2 blocks of 20 steps) a
    # run took 24.5 s one at a time, 17.4 s in twos, 10.1 s in fours, 7.6 s in eights, and 16
    # gained only ~10% more; the attack's memory grows with it (SD on a GPU: not measured).
    batch_size: int = 8

    def validate(self) -> "AttackSettings":
        if self.method not in METHODS:
            raise UserError(f"--method must be one of {', '.join(METHODS)}, got {self.method!r}")
        for flag, value in (("--adv-tokens", self.adv_tokens), ("--timesteps", self.timesteps),
                            ("--steps-per-timestep", self.steps_per_timestep), ("--target-steps", self.target_steps),
                            ("--batch-size", self.batch_size)):
            if value < 1:
                raise UserError(f"{flag} must be at least 1, got {value}")
        if self.gen_steps is not None and self.gen_steps < 1:
            raise UserError(f"--gen-steps must be at least 1, got {self.gen_steps}")
        if self.attack_lr <= 0:
            raise UserError(f"--attack-lr must be positive, got {self.attack_lr}")
        return self

    def comparable(self) -> dict:
        """The settings a resumed run must share with the report it continues (not those that
        change only speed)."""
        return {k: v for k, v in asdict(self).items() if k not in ("out", "resume", "device", "batch_size")}


def batches(indices: list[int], size: int, key) -> list[list[int]]:
    """`indices` in order, `size` at a time, prompts sharing a batch only where `key` agrees:
    their adversarial variables are stacked, so they need the same number of tokens (which
    differs between prompts only with --insert add)."""
    groups: dict = {}
    for index in indices:
        groups.setdefault(key(index), []).append(index)
    return [group[start : start + size] for group in groups.values() for start in range(0, len(group), size)]


def _load_report(out: Path, settings: AttackSettings, prompt_hash: str) -> list[dict]:
    report_file = out / REPORT
    if not report_file.is_file():
        if settings.resume:
            raise UserError(f"--resume: no {REPORT} in {out} to continue")
        return []
    if not settings.resume:
        raise UserError(f"--out {out} already holds a {REPORT}; pass --resume to continue it or choose another folder")
    try:
        report = json.loads(report_file.read_text(encoding="utf-8"))
        manifest = report["manifest"]
    except (OSError, ValueError, KeyError) as err:
        raise UserError(f"--resume: {report_file} cannot be read: {err}") from None
    if manifest.get("prompt_file_sha256") != prompt_hash:
        raise UserError("--resume: the prompt file differs from the one the report was made with")
    before, now = manifest.get("settings", {}), settings.comparable()
    changed = [k for k in now if before.get(k) != now[k]]
    if changed:
        raise UserError(f"--resume: {', '.join('--' + k.replace('_', '-') for k in changed)} differ from the report's run")
    return list(report.get("rows", []))


class Evaluation:
    """One `attack` run: models, judge, prompts and the folder it writes."""

    def __init__(self, settings: AttackSettings, progress: bool = True):
        self.s = settings.validate()
        self.progress = progress
        self.device = resolve_device(settings.device)
        self.judge: Judge = make_judge(settings.judge, self.device)  # a bad judge fails before models load
        self.out = Path(settings.out)
        rows = read_prompt_rows(settings.prompts, settings.seed, settings.guidance)
        self.prompt_hash = file_sha256(settings.prompts)
        self.backend = kernel_backend(self.device)
        self.pipe: Pipeline = build_pipeline(settings.model, settings.encoder, self.device, settings.model_config)
        limit_threads_for_small_model(self.pipe.unet, self.pipe.device)
        self.rows = with_default_guidance(rows, self.pipe.default_guidance)
        self.gen_steps = settings.gen_steps or self.pipe.default_steps
        special = SpecialTokens.of(self.pipe.tokenizer)
        self.layouts = [build_layout(prompt_words(self.pipe.tokenizer, r.prompt), settings.insert, settings.adv_tokens, special)
                        for r in self.rows]
        self.original = self.pipe.with_encoder(self.pipe.parts.text_encoder)
        self.alphas = DDIMScheduler.from_config(self.pipe.parts.scheduler_config).alphas_cumprod
        self.done = _load_report(self.out, settings, self.prompt_hash)

    # ------------------------------------------------------------ one batch of prompts

    def target_images(self, indices: list[int]) -> torch.Tensor:
        """The ORIGINAL model's images of the prompts [B, 3, H, W]: from --targets, cached, or
        generated (the missing ones in one batch) and cached."""
        from PIL import Image

        images: dict[int, torch.Tensor] = {}
        for index in indices:
            name = f"{index:04d}.png"
            given = Path(self.s.targets) / name if self.s.targets else None
            cached = self.out / "targets" / name
            found = given if given is not None and given.is_file() else cached if cached.is_file() else None
            if found is not None:
                images[index] = from_pil([Image.open(found)])[0]
        missing = [index for index in indices if index not in images]
        if missing:
            rows = [self.rows[index] for index in missing]
            made = generate_from_conditions(self.original, self.original.encode([r.prompt for r in rows]),
                                            [r.seed for r in rows], [r.guidance for r in rows], self.s.target_steps)
            (self.out / "targets").mkdir(parents=True, exist_ok=True)
            for index, image, picture in zip(missing, made, to_pil(made)):
                picture.save(self.out / "targets" / f"{index:04d}.png")
                images[index] = image
        return torch.stack([images[index] for index in indices])

    def judged_images(self, indices: list[int], conds: torch.Tensor, tag: str):
        """Images of the victim from one conditioning per prompt (at its seed and guidance), the
        judge's verdicts, and each image kept as images/NNNN-TAG.png."""
        rows = [self.rows[index] for index in indices]
        images = generate_from_conditions(self.pipe, conds, [r.seed for r in rows], [r.guidance for r in rows],
                                          self.gen_steps)
        verdicts = self.judge(images, [r.prompt for r in rows])
        folder = self.out / "images"
        folder.mkdir(parents=True, exist_ok=True)
        for index, picture in zip(indices, to_pil(images)):
            picture.save(folder / f"{index:04d}-{tag}.png")
        return images, verdicts

    def attack_batch(self, indices: list[int], x_target: torch.Tensor, bar) -> list[dict]:
        """Attack the prompts together, each towards its own target latents (`x_target` [B, ...])
        through its own layout, with its own generator seeded by its seed and drawn from in the
        order its attack alone would draw; after each block the prompts still attacked are
        generated and judged as one batch."""
        te, s = self.pipe.text_encoder, self.s
        table = token_table(te).detach()
        layouts = stack_layouts([self.layouts[index] for index in indices]).to(self.device)
        generators = [torch.Generator().manual_seed(self.rows[index].seed) for index in indices]
        kept = [{"image": None, "tokens": None, "scores": []} for _ in indices]

        def embedding_loss(adv, t, active):
            noise = torch.cat([draw_noise(generators[b], 1, self.pipe.latent_shape, self.device, x_target.dtype)
                               for b in active])
            cond = adversarial_condition(te, layouts.select(active), adv.to(table.dtype), self.backend)
            return diffusion_classifier_loss(self.pipe.unet, self.alphas, x_target[active], t, noise, cond)

        def after_block(variables, t, active):
            if s.method == "unlearndiffatk":
                tokens = variables.argmax(-1)
                adv = table[tokens]
            else:
                tokens, adv = nearest_tokens(variables, table), variables.to(table.dtype)
            with torch.no_grad():
                cond = adversarial_condition(te, layouts.select(active), adv, self.backend)
            images, verdicts = self.judged_images([indices[b] for b in active], cond, f"t{t:04d}")
            for b, image, verdict, row_tokens in zip(active, images, verdicts, tokens):
                kept[b].update(image=image, tokens=row_tokens)
                kept[b]["scores"].append({"t": t, "success": verdict.success, "score": verdict.score})
            bar.update(1)
            return [verdict.success for verdict in verdicts]

        timesteps = attack_timesteps(s.timesteps, len(self.alphas))
        if s.method == "unlearndiffatk":
            start = uniform_simplex(layouts.k, table.shape[0], self.device).repeat(len(indices), 1, 1)
            results = unlearndiffatk(start, embedding_loss, table, timesteps, s.steps_per_timestep, s.attack_lr,
                                     generators, self.backend, after_block=after_block)
        else:
            start = torch.stack([table[torch.randint(table.shape[0], (layouts.k,), generator=g).to(self.device)]
                                 for g in generators])
            results = soft_prompt(start, embedding_loss, timesteps, s.steps_per_timestep, s.attack_lr, self.backend,
                                  after_block=after_block)
        return [{
            "success": result.stopped, "adversarial_prompt": self.decode_prompt(self.layouts[index], state["tokens"]),
            "timesteps_used": result.timesteps_used, "steps_used": result.steps_used,
            "loss_start": result.losses[0], "loss_end": result.losses[-1], "attack_scores": state["scores"],
            "attacked_image": state["image"],
        } for index, result, state in zip(indices, results, kept)]

    def decode_prompt(self, layout, tokens: torch.Tensor) -> str:
        ids = layout.ids.clone()
        if not layout.add:
            ids[layout.positions] = tokens.cpu()
        return self.pipe.tokenizer.decode(ids.tolist(), skip_special_tokens=True)

    def evaluate_batch(self, indices: list[int], bar) -> list[dict]:
        """The report rows of the prompts: pre-attack generations and judgments in one batch,
        then the attack on those not already judged successes."""
        began = time.time()
        rows = [self.rows[index] for index in indices]
        pre_images, pre = self.judged_images(indices, self.pipe.encode([r.prompt for r in rows]), "pre")
        outcomes: dict[int, dict] = {}
        if self.s.method != "none":
            targets = self.target_images(indices)
            attacked = [b for b, verdict in enumerate(pre) if not verdict.success]
            if attacked:
                latents = encode_images(self.pipe, targets[attacked])
                outcomes = dict(zip(attacked, self.attack_batch([indices[b] for b in attacked], latents, bar)))
        records = []
        for b, (index, row, verdict) in enumerate(zip(indices, rows, pre)):
            record = {"index": index, "prompt": row.prompt, "seed": row.seed, "guidance": row.guidance,
                      "pre_success": verdict.success, "pre_score": verdict.score}
            outcome = outcomes.get(b) or {"success": verdict.success, "adversarial_prompt": None, "timesteps_used": [],
                                          "steps_used": 0, "loss_start": None, "loss_end": None, "attack_scores": []}
            attacked_image = outcome.pop("attacked_image", None)
            record.update(outcome)
            if self.s.method != "none":
                grid = [targets[b], pre_images[b]] + ([attacked_image] if attacked_image is not None else [])
                (self.out / "grids").mkdir(parents=True, exist_ok=True)
                image_grid(grid).save(self.out / "grids" / f"{index:04d}.png")
            records.append(record)
        # The prompts shared every call, so each is charged an equal share of the batch's time.
        share = round((time.time() - began) / len(indices), 3)
        return [{**record, "seconds": share} for record in records]

    # ------------------------------------------------------------ the run

    def report(self, rows: list[dict]) -> dict:
        n = len(rows)
        return {
            "n": n,
            "prompts_total": len(self.rows),
            "complete": n == len(self.rows),
            "pre_asr": sum(r["pre_success"] for r in rows) / n if n else None,
            "asr": sum(r["success"] for r in rows) / n if n else None,
            "method": self.s.method,
            "rows": rows,
            "manifest": self.manifest(),
        }

    def manifest(self) -> dict:
        return {
            "versions": versions(), "device": str(self.device), "judge": self.judge.describe(),
            "model": self.pipe.parts.source, "encoder": self.s.encoder,
            "prompt_file": str(self.s.prompts), "prompt_file_sha256": self.prompt_hash,
            "seeds": [r.seed for r in self.rows], "guidance": [r.guidance for r in self.rows],
            "gen_steps": self.gen_steps, "timesteps": attack_timesteps(self.s.timesteps, len(self.alphas)),
            "batch_size": self.s.batch_size, "settings": self.s.comparable(),
        }

    def run(self) -> dict:
        self.out.mkdir(parents=True, exist_ok=True)
        rows = list(self.done)
        finished = {r["index"] for r in rows}
        todo = [i for i in range(len(self.rows)) if i not in finished]
        overall = tqdm(total=len(self.rows), initial=len(finished), desc="prompts", disable=not self.progress)
        blocks = 0 if self.s.method == "none" else self.s.timesteps
        for batch in batches(todo, self.s.batch_size, key=lambda index: self.layouts[index].k):
            desc = f"prompt{'s' * (len(batch) > 1)} {', '.join(map(str, batch))}"
            bar = tqdm(total=blocks, desc=desc, leave=False, disable=not self.progress or not blocks)
            rows.extend(self.evaluate_batch(batch, bar))
            bar.close()
            rows.sort(key=lambda r: r["index"])
            write_json_atomic(self.out / REPORT, self.report(rows))
            overall.update(len(batch))
        overall.close()
        report = self.report(rows)
        write_json_atomic(self.out / REPORT, report)
        return report


def run_evaluation(settings: AttackSettings, progress: bool = True) -> dict:
    return Evaluation(settings, progress).run()


# ---------------------------------------------------------------- `attack --encoder RUN/` defaults


def resolve_attack_settings(**values) -> AttackSettings:
    """Settings from the flags; with a `train` run folder as --encoder, the model, prompt set,
    judge and output folder default to the run's (see `default_evaluation`)."""
    encoder = values.get("encoder")
    run_file = Path(encoder).expanduser() / "run.json" if encoder else None
    if run_file is not None and run_file.is_file():
        try:
            config = json.loads(run_file.read_text(encoding="utf-8"))["config"]
        except (OSError, ValueError, KeyError) as err:
            raise UserError(f"--encoder {encoder}: cannot read run.json: {err}") from None
        if values.get("model") is None:
            values["model"], values["model_config"] = config["model"], values.get("model_config") or config.get("model_config")
        if values.get("out") is None:
            values["out"] = str(Path(encoder) / f"attack-{values.get('method', 'unlearndiffatk')}")
        concept = concept_name(config.get("concepts") or [""])
        if values.get("judge") is not None:
            values["judge"] = with_concept(values["judge"], concept)
        if values.get("judge") is None or values.get("prompts") is None:
            judge, prompts = default_evaluation(concept, values["model"], Path(values["out"]))
            values["judge"] = values.get("judge") or judge
            values["prompts"] = values.get("prompts") or prompts
            for flag in ("prompts", "judge"):
                if values[flag] is None:
                    raise missing_default(concept, flag)
    for flag in ("model", "prompts", "judge", "out"):
        if values.get(flag) is None:
            raise UserError(f"--{flag} is required (or pass a train run folder as --encoder to take the run's)")
    return AttackSettings(**values).validate()


IMAGENET_CLASSES = {"church": 497, "garbage truck": 569, "parachute": 701, "tench": 0}


def default_evaluation(concept: str, model: str, out: Path) -> tuple[str | None, str | None]:
    """(judge spec, prompt file) for a run's concept, None where there is no default.
    - concept-world concepts: the world judge, prompts from the world's held-out templates;
    - Van Gogh and the objects: the project's prompt sets (evalsets); their judges need
      classifier weights that do not ship, so the judge is left to --judge;
    - nudity: NudeNet; its prompt set (I2P) is third-party and must be passed.
    Prompt files are written to OUT."""
    from advunlearn_fast.evaluation.evalsets import concept_key, prompt_set_csv
    from advunlearn_fast.world import world_folder

    folder = world_folder(model)
    words = concept.lower().split()
    out.mkdir(parents=True, exist_ok=True)
    if folder is not None:
        from advunlearn_fast.world.judge import ATTRIBUTES

        meta = json.loads((folder / "world.json").read_text(encoding="utf-8"))
        for attribute, values in ATTRIBUTES.items():
            value = next((w for w in words if w in values), None)
            if value is not None:
                shapes = ATTRIBUTES["shape"]
                objects = [concept] if any(w in shapes for w in words) else [f"{concept} {s}" for s in shapes]
                prompts = [t.format(obj=o) for t in meta["heldout_templates"] for o in objects]
                (out / "prompts.txt").write_text("\n".join(prompts) + "\n", encoding="utf-8")
                return f"world:{attribute}={value}", str(out / "prompts.txt")
        return None, None
    if concept_key(concept) is not None:
        (out / "prompts.csv").write_text(prompt_set_csv(concept), encoding="utf-8")
        return None, str(out / "prompts.csv")
    if "nud" in concept.lower():
        return "nudenet", None
    return None, None


def missing_default(concept: str, flag: str) -> UserError:
    """What to pass when the run's concept has no default judge or prompt set."""
    key = " ".join(concept.lower().split())
    if flag == "judge" and key in IMAGENET_CLASSES:
        return UserError(f"the judge for {concept!r} is an ImageNet classifier, whose weights are not on disk: "
                         f"pass --judge imagenet:<local ResNet-50 weights>:{IMAGENET_CLASSES[key]} or --judge module:function")
    if flag == "judge" and "gogh" in key:
        return UserError("the judge for Van Gogh is an artist-style classifier, whose weights are not on disk: "
                         "pass --judge clip:<local CLIP folder> (zero-shot) or --judge module:function with your classifier")
    if flag == "prompts" and "nud" in key:
        return UserError("no nudity prompt set ships with advunlearn (the I2P prompts are third-party): pass --prompts FILE "
                         "(.csv with prompt, evaluation_seed, evaluation_guidance)")
    return UserError(f"no default {flag} for the run's concept {concept!r}: pass --{flag}")
