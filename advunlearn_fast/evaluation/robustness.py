"""`advunlearn attack`: pre-ASR and ASR of a (victim) text encoder under an attack (EVALUATION.md).

Per prompt: generate with the victim at the prompt's seed and guidance and judge it (pre);
unless that already succeeds, attack with the unerased model's image of the prompt as target
(--target-model, default --model, with its own text encoder), judging a generation after every
timestep block and stopping at the first success. As in the authors' protocol, a prompt longer
than `--max-prompt-tokens` (60) is not attacked: it keeps its unattacked verdict and stays in n,
and its row says why. UnlearnDiffAtk's judged images are generated from the adversarial prompt
as TEXT (the argmax tokens decoded, then tokenised again), so every success is a prompt a user
can type, and `advunlearn generate --prompt <it> --seed <seed> --guidance <guidance>` makes the
same image (same sampler and steps).

Prompts go `--batch-size` at a time: their generations, judgments and attack steps share calls,
and each prompt's attack is the one it would have alone (unlearndiffatk.py), so the batch size
changes speed, not results (beyond float rounding). On CUDA the attack step is recorded once
per batch shape as a CUDA graph and replayed (training/graphs.py). The report is rewritten
after every batch, so `--resume` continues where a run stopped.

Under torchrun the batches are dealt to the ranks in turn, each batch holding the prompts it
would hold in one process (so each row is the one-process row); rank 0 gathers every round's
rows and rewrites the report, whatever the number of processes that wrote it before.
"""

from __future__ import annotations

import hashlib
import json
import math
import shlex
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from diffusers import DDIMScheduler
from tqdm.auto import tqdm

from advunlearn_fast import distributed
from advunlearn_fast.device import cpu_policy, kernel_backend, resolve_device
from advunlearn_fast.errors import UserError, notice
from advunlearn_fast.evaluation.evalsets import KNOWN_CONCEPTS, concept_key, published_prompt_set
from advunlearn_fast.evaluation.generation import (
    Pipeline,
    build_pipeline,
    check_guidance,
    check_seed,
    encode_images,
    from_pil,
    generate_from_conditions,
    image_grid,
    read_prompt_rows,
    sampler_description,
    to_pil,
    with_default_guidance,
)
from advunlearn_fast.evaluation.inputs import check_folder, check_model_paths, check_out, check_target_model
from advunlearn_fast.evaluation.judges import CLASSIFIER_TARGETS, Judge, make_judge, with_concept
from advunlearn_fast.evaluation.manifest import file_sha256, versions
from advunlearn_fast.evaluation.samplers import check_sampler
from advunlearn_fast.evaluation.unlearndiffatk import (
    attack_timesteps,
    diffusion_classifier_loss,
    max_attack_timesteps,
    nearest_tokens,
    soft_prompt,
    uniform_simplex,
    unlearndiffatk,
)
from advunlearn_fast.models.attention import check_attention
from advunlearn_fast.models.diffusion import draw_noise
from advunlearn_fast.models.insertion import (
    AdversarialLayout,
    SpecialTokens,
    adversarial_token_count,
    build_layout,
    prompt_words,
    stack_layouts,
)
from advunlearn_fast.models.loading import read_world_meta
from advunlearn_fast.models.text_encoding import adversarial_condition, token_table
from advunlearn_fast.outputs import write_json_atomic, write_text_atomic
from advunlearn_fast.prompts import concept_name, read_prompt_file
from advunlearn_fast.training.attack import with_gradient
from advunlearn_fast.training.graphs import CudaRecorder, GraphedStep

METHODS = ("unlearndiffatk", "softprompt", "none")
REPORT = "report.json"


# The authors' budgets (Diffusion-MU-Attack configs/*/text_grad_*.json): 5 adversarial tokens
# for nudity (and their other harm concepts), 3 for objects and Van Gogh.
ADV_TOKENS_DEFAULT = 5
ADV_TOKENS_BY_CONCEPT = {"nudity": 5, "van gogh": 3, "church": 3, "garbage truck": 3, "parachute": 3, "tench": 3}
# The authors do not attack prompts of more than 60 tokens (start and end tokens counted).
MAX_PROMPT_TOKENS = 60


def default_adv_tokens(concept: str | None) -> int:
    return ADV_TOKENS_BY_CONCEPT.get(concept_key(concept), ADV_TOKENS_DEFAULT)


def adv_tokens_fallback_notice(concept: str | None) -> str | None:
    """The line that says --adv-tokens fell back to the default for a named concept the authors'
    configs do not cover; None for theirs, and without a concept (the flag's documented default)."""
    if not concept or concept_key(concept) in ADV_TOKENS_BY_CONCEPT:
        return None
    return (f"concept {concept!r} is not one of the authors' ({', '.join(KNOWN_CONCEPTS)}): "
            f"{ADV_TOKENS_DEFAULT} adversarial tokens, their nudity budget; pass --adv-tokens to choose")


@dataclass
class AttackSettings:
    model: str
    encoder: str | None
    prompts: str
    judge: str
    out: str
    method: str = "unlearndiffatk"
    adv_tokens: int | None = None  # None: by the concept (default_adv_tokens)
    concept: str | None = None
    timesteps: int = 50
    steps_per_timestep: int = 40
    attack_lr: float = 0.01
    insert: str = "prefix"
    max_prompt_tokens: int = MAX_PROMPT_TOKENS
    targets: str | None = None
    target_model: str | None = None  # the model whose images are the targets; None: --model
    target_steps: int = 25
    gen_steps: int | None = None  # the model's default (50 for SD, the world's own)
    sampler: str | None = None  # the model's default (lms for SD, the world's own)
    guidance: float | None = None  # for prompts without their own; the model's default
    seed: int = 0  # for prompts without their own
    device: str = "auto"
    resume: bool = False
    model_config: str | None = None
    # Prompts attacked together: they share every UNet call, which the CPU and the GPU run
    # faster per prompt in larger batches, up to a point past which little is gained while the
    # attack's memory keeps growing (benchmarks/README.md, `attack --batch-size`).
    batch_size: int = 8
    cuda_graphs: bool = True
    # The text of a prompt set that ships with advunlearn, written to `prompts` only once the run
    # writes its report, so that a refused run leaves no file behind.
    prompt_set: str | None = None
    attention: str = "sdpa"
    # Set where --adv-tokens fell back to the default for an unknown concept: said once the run's
    # input is checked, so that a refusal stays one line.
    adv_tokens_notice: str | None = None

    def validate(self) -> "AttackSettings":
        if self.method not in METHODS:
            raise UserError(f"--method must be one of {', '.join(METHODS)}, got {self.method!r}")
        if self.adv_tokens is None:
            self.adv_tokens = default_adv_tokens(self.concept)
            self.adv_tokens_notice = adv_tokens_fallback_notice(self.concept)
        for flag, value in (("--adv-tokens", self.adv_tokens), ("--timesteps", self.timesteps),
                            ("--steps-per-timestep", self.steps_per_timestep), ("--target-steps", self.target_steps),
                            ("--batch-size", self.batch_size), ("--max-prompt-tokens", self.max_prompt_tokens)):
            if value < 1:
                raise UserError(f"{flag} must be at least 1, got {value}")
        if self.gen_steps is not None and self.gen_steps < 1:
            raise UserError(f"--gen-steps must be at least 1, got {self.gen_steps}")
        if not (math.isfinite(self.attack_lr) and self.attack_lr > 0):
            raise UserError(f"--attack-lr must be a finite number > 0, got {self.attack_lr}")
        check_guidance(self.guidance)
        check_seed(self.seed)
        if self.sampler is not None:
            check_sampler(self.sampler)
        return self

    def comparable(self) -> dict:
        """The settings a resumed run must share with the report it continues (not those that
        change only speed)."""
        return {k: v for k, v in asdict(self).items()
                if k not in ("out", "resume", "device", "batch_size", "cuda_graphs", "prompt_set", "attention",
                             "adv_tokens_notice")}


def check_same_image_kind(target: Pipeline, pipe: Pipeline, spec: str) -> None:
    """The target model makes images the attack can take as the attacked model's: of its size, from
    the same kind of latent space."""
    def kind(p: Pipeline) -> tuple[int, int, int]:
        return p.parts.native_image_size, p.parts.latent_channels, p.parts.vae_scale

    def described(p: Pipeline) -> str:
        size, channels, scale = kind(p)
        space = f"a {channels}-channel latent space ({scale}x down-sampled)" if scale > 1 else "pixel space"
        return f"{size}x{size} images in {space}"

    if kind(target) != kind(pipe):
        raise UserError(f"--target-model {spec} makes {described(target)}, but --model {pipe.parts.source} makes "
                        f"{described(pipe)}: its images cannot be the attacked model's targets")


def target_name(index: int) -> str:
    """A prompt's target image in --targets and in OUT/targets: its index in the prompt file."""
    return f"{index:04d}.png"


def read_target_sizes(folder: Path, indices: list[int]) -> dict[int, tuple[int, int]]:
    """The size of each prompt's target image FOLDER/NNNN.png, each read in full: a missing file,
    or one that is not a readable image, is refused naming it."""
    from PIL import Image

    missing = [index for index in indices if not (folder / target_name(index)).is_file()]
    if missing:
        raise UserError(f"--targets: {folder / target_name(missing[0])} not found ({len(missing)} of the "
                        f"{len(indices)} prompts' target images missing; --targets holds one NNNN.png per prompt, "
                        "numbered by its index in the prompt file from 0000)")
    sizes = {}
    for index in indices:
        file = folder / target_name(index)
        try:
            with Image.open(file) as image:
                image.load()
                sizes[index] = image.size
        except (OSError, ValueError, SyntaxError, EOFError, Image.DecompressionBombError) as err:
            first = (str(err).strip().splitlines() or [err.__class__.__name__])[0]
            raise UserError(f"--targets: {file} is not a readable image ({first})") from None
    return sizes


def check_target_sizes(folder: Path | None, sizes: dict[int, tuple[int, int]], pixels: int) -> None:
    """Every target image is the size of the model's images (the attack encodes it as one)."""
    for index, (width, height) in sizes.items():
        if (width, height) != (pixels, pixels):
            raise UserError(f"--targets: {folder / target_name(index)} is {width}x{height} pixels; "
                            f"the model makes {pixels}x{pixels} images")


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


def uses_cuda_graphs(settings: AttackSettings, device: torch.device) -> bool:
    """Whether the attack step is recorded as a CUDA graph and replayed: on CUDA unless
    --no-cuda-graphs (a replay skips the Python and kernel launches that bound the eager step;
    benchmarks/README.md)."""
    return settings.cuda_graphs and device.type == "cuda" and settings.method != "none"


def prompt_token_count(tokenizer, prompt: str) -> int:
    """Tokens of the prompt untruncated, start and end tokens included: what the authors' 60-token
    rule counts."""
    return len(tokenizer(prompt).input_ids)


def adversarial_text(tokenizer, layout: AdversarialLayout, tokens: torch.Tensor) -> str:
    """The prompt with the adversarial tokens in their slots, decoded to text as the authors do:
    every id after the start token except end and padding tokens, decoded as one string. With
    --insert add the tokens are added to the words' embeddings: the text is the prompt's own."""
    ids = layout.ids.clone()
    if not layout.add:
        ids[layout.positions] = tokens.cpu()
    special = SpecialTokens.of(tokenizer)
    return tokenizer.decode([i for i in ids[1:].tolist() if i not in (special.eos, special.pad)]).strip()


class Evaluation:
    """One `attack` run: models, judge, prompts and the folder it writes."""

    def __init__(self, settings: AttackSettings, progress: bool = True, label: str | None = None):
        self.s = settings.validate()
        self.label = label  # names the run on its progress bars (the demo runs several)
        self.device = resolve_device(settings.device)
        distributed.start(self.device)
        self.progress = progress and distributed.is_main()
        rows = read_prompt_rows(settings.prompts, settings.seed, settings.guidance, settings.prompt_set)
        self.prompt_hash = (file_sha256(settings.prompts) if settings.prompt_set is None
                            else hashlib.sha256(settings.prompt_set.encode("utf-8")).hexdigest())
        check_attention(settings.attention, self.device)
        self.judge: Judge = make_judge(settings.judge, self.device)  # a bad judge fails before models load
        check_out(settings.out)
        self.out = Path(settings.out)
        # Read by rank 0 alone: under torchrun it may rewrite the report before the others got here.
        self.done = distributed.on_main(lambda: _load_report(self.out, settings, self.prompt_hash))
        # OUT/targets is where a run caches the targets it generates, so it may not exist yet
        # nor hold every prompt's; any other --targets must hold the image of every prompt still
        # to judge, each read now so that a bad one is refused before anything is written.
        self.targets = Path(settings.targets).expanduser() if settings.targets is not None else None
        if self.targets is not None and settings.target_model is not None:
            raise UserError("--targets and --target-model: give one (the target images are read from --targets, "
                            "or generated by --target-model)")
        target_sizes: dict[int, tuple[int, int]] = {}
        if self.targets is not None and self.targets.resolve() != (self.out / "targets").resolve():
            check_folder("--targets", settings.targets)
            if settings.method != "none":
                finished = {row["index"] for row in self.done}
                target_sizes = read_target_sizes(self.targets, [i for i in range(len(rows)) if i not in finished])
        if settings.target_model is not None:
            check_target_model(settings.target_model)
        self.unwritten_prompt_set = settings.prompt_set
        self.backend = kernel_backend(self.device)
        self.pipe: Pipeline = build_pipeline(settings.model, settings.encoder, self.device, settings.model_config,
                                             settings.attention)
        cpu_policy(self.pipe.unet, self.pipe.device, settings.device)
        check_target_sizes(self.targets, target_sizes, self.pipe.latent_shape[-1] * self.pipe.parts.vae_scale)
        self.rows = with_default_guidance(rows, self.pipe.default_guidance)
        self.gen_steps = settings.gen_steps or self.pipe.default_steps
        self.sampler = settings.sampler or self.pipe.default_sampler
        tokenizer = self.pipe.tokenizer
        special = SpecialTokens.of(tokenizer)
        if settings.insert != "add" and settings.adv_tokens + 2 > special.length:
            raise UserError(f"--adv-tokens {settings.adv_tokens} does not fit the tokenizer's {special.length} tokens "
                            "with the start and end tokens")
        self.token_counts = [prompt_token_count(tokenizer, r.prompt) for r in self.rows]
        self.layouts: dict[int, AdversarialLayout] = {}
        self.not_attackable: dict[int, str] = {}
        for index, row in enumerate(self.rows):
            words = prompt_words(tokenizer, row.prompt)
            adversarial = adversarial_token_count(settings.insert, len(words), settings.adv_tokens)
            if self.token_counts[index] > settings.max_prompt_tokens:
                self.not_attackable[index] = (f"{self.token_counts[index]} tokens, more than --max-prompt-tokens "
                                              f"{settings.max_prompt_tokens}: not attacked (the authors' rule)")
            elif len(words) + adversarial + 2 > special.length:
                self.not_attackable[index] = (f"{len(words)} words and {adversarial} adversarial tokens do not fit "
                                              f"the tokenizer's {special.length} tokens: not attacked")
            else:
                self.layouts[index] = build_layout(words, settings.insert, settings.adv_tokens, special)
        self.target_pipe = self.load_target_pipe()
        alphas = DDIMScheduler.from_config(self.pipe.parts.scheduler_config).alphas_cumprod
        self.train_timesteps = len(alphas)
        most = max_attack_timesteps(self.train_timesteps)
        if settings.timesteps > most:
            raise UserError(f"--timesteps must be between 1 and {most} for this model, got {settings.timesteps}: "
                            f"one block per two of its {self.train_timesteps} training timesteps, past which blocks "
                            "repeat timesteps and reach timestep 0")
        self.alphas = alphas.to(self.device)  # read on the device inside a recorded attack step
        self.embedding_core = with_gradient(self._embedding_losses)
        if uses_cuda_graphs(settings, self.device):
            self.embedding_core = GraphedStep(self.embedding_core, CudaRecorder())
        if settings.adv_tokens_notice is not None:
            notice(settings.adv_tokens_notice)

    def load_target_pipe(self) -> Pipeline:
        """What makes the target images: --target-model with its own text encoder, else --model
        with its own (the authors always make them with SD v1.4, the model a text-encoder run
        erases from; a UNet-erased --model needs --target-model for that)."""
        s = self.s
        if s.target_model is None or s.method == "none":
            return self.pipe.with_encoder(self.pipe.parts.text_encoder)
        target = build_pipeline(s.target_model, None, self.device, None, s.attention, flag="--target-model")
        check_same_image_kind(target, self.pipe, s.target_model)
        return target

    # ------------------------------------------------------------ images

    def target_guidance(self, index: int) -> float:
        """The authors' rule for target images: the row's `sd_guidance_scale`, else the target
        model's default guidance (7.5 for SD), not the prompt's `evaluation_guidance`."""
        own = self.rows[index].target_guidance
        return own if own is not None else self.target_pipe.default_guidance

    def target_seed(self, index: int) -> int:
        """The authors' rule for target images: the row's `evaluation_seed`, else its `sd_seed`,
        else --seed."""
        row = self.rows[index]
        return row.target_seed if row.target_seed is not None else row.seed

    def target_images(self, indices: list[int]) -> torch.Tensor:
        """The target model's images of the prompts [B, 3, H, W]: from --targets, cached, or
        generated (the missing ones in one batch) and cached; always as their 8-bit PNGs hold them."""
        from PIL import Image

        images: dict[int, torch.Tensor] = {}
        for index in indices:
            name = target_name(index)
            given = self.targets / name if self.targets is not None else None
            cached = self.out / "targets" / name
            found = given if given is not None and given.is_file() else cached if cached.is_file() else None
            if found is not None:
                images[index] = from_pil([Image.open(found)])[0]
        missing = [index for index in indices if index not in images]
        if missing:
            made = generate_from_conditions(self.target_pipe,
                                            self.target_pipe.encode([self.rows[i].prompt for i in missing]),
                                            [self.target_seed(i) for i in missing],
                                            [self.target_guidance(i) for i in missing], self.s.target_steps,
                                            self.sampler)
            (self.out / "targets").mkdir(parents=True, exist_ok=True)
            for index, picture in zip(missing, to_pil(made)):
                picture.save(self.out / "targets" / target_name(index))
                # As the PNG holds it (and as the authors read their targets): a run that finds
                # it cached (resumed, or with --targets) attacks towards the same pixels.
                images[index] = from_pil([picture])[0]
        return torch.stack([images[index] for index in indices])

    def judged_images(self, indices: list[int], conds: torch.Tensor, tag: str):
        """Images of the victim from one conditioning per prompt (at its seed and guidance), the
        judge's verdicts, and each image's file images/NNNN-TAG.png (relative to the report)."""
        rows = [self.rows[index] for index in indices]
        images = generate_from_conditions(self.pipe, conds, [r.seed for r in rows], [r.guidance for r in rows],
                                          self.gen_steps, self.sampler)
        verdicts = self.judge(images, [r.prompt for r in rows])
        (self.out / "images").mkdir(parents=True, exist_ok=True)
        files = [f"images/{index:04d}-{tag}.png" for index in indices]
        for file, picture in zip(files, to_pil(images)):
            picture.save(self.out / file)
        return images, verdicts, files

    # ------------------------------------------------------------ the attack

    def _embedding_losses(self, adv, t, noise, x_target, ids, positions):
        """Each prompt's diffusion-classifier loss with `adv` [A, k, D] in its slots: the device
        work of one attack step, every input a tensor (so that a CUDA graph can replay it)."""
        table = token_table(self.pipe.text_encoder)
        cond = adversarial_condition(self.pipe.text_encoder, AdversarialLayout(ids, positions, self.s.insert == "add"),
                                     adv.to(table.dtype), self.backend)
        return diffusion_classifier_loss(self.pipe.unet, self.alphas, x_target, t, noise, cond)

    def attack_batch(self, indices: list[int], x_target: torch.Tensor, bar) -> list[dict]:
        """Attack the prompts together, each towards its own target latents (`x_target` [B, ...])
        through its own layout, with its own generator seeded by its seed and drawn from in the
        order its attack alone would draw; after each block the prompts still attacked are
        generated and judged as one batch."""
        s = self.s
        tokenizer = self.pipe.tokenizer
        table = token_table(self.pipe.text_encoder).detach()
        layouts = stack_layouts([self.layouts[index] for index in indices]).to(self.device)
        generators = [torch.Generator().manual_seed(self.rows[index].seed) for index in indices]
        # UnlearnDiffAtk's tokens are judged as the text they decode to; the soft prompt (and
        # embeddings added to words) have no text, so their embeddings are judged.
        as_text = s.method == "unlearndiffatk" and not layouts.add
        kept = [{"image": None, "file": None, "tokens": None, "text": None, "scores": []} for _ in indices]

        def embedding_step(adv, t, active):
            noise = torch.cat([draw_noise(generators[b], 1, self.pipe.latent_shape, self.device, x_target.dtype)
                               for b in active])
            chosen = layouts.select(active)
            timestep = torch.full((1,), t, device=self.device, dtype=torch.long)
            return self.embedding_core(adv, timestep, noise, x_target[active], chosen.ids, chosen.positions)

        def after_block(variables, t, active):
            if s.method == "unlearndiffatk":
                tokens = variables.argmax(-1)
                adv = table[tokens]
            else:
                tokens, adv = nearest_tokens(variables, table), variables.to(table.dtype)
            texts = [adversarial_text(tokenizer, self.layouts[indices[b]], row_tokens)
                     for b, row_tokens in zip(active, tokens)]
            with torch.no_grad():
                cond = (self.pipe.encode(texts) if as_text
                        else adversarial_condition(self.pipe.text_encoder, layouts.select(active), adv, self.backend))
            images, verdicts, files = self.judged_images([indices[b] for b in active], cond, f"t{t:04d}")
            for b, image, file, verdict, row_tokens, text in zip(active, images, files, verdicts, tokens, texts):
                kept[b].update(image=image, file=file, tokens=row_tokens, text=text)
                kept[b]["scores"].append({"t": t, "success": verdict.success, "score": verdict.score})
            bar.update(1)
            return [verdict.success for verdict in verdicts]

        timesteps = attack_timesteps(s.timesteps, self.train_timesteps)
        if s.method == "unlearndiffatk":
            start = uniform_simplex(layouts.k, table.shape[0], self.device).repeat(len(indices), 1, 1)
            results = unlearndiffatk(start, embedding_step, table, timesteps, s.steps_per_timestep, s.attack_lr,
                                     generators, self.backend, after_block=after_block)
        else:
            start = torch.stack([table[torch.randint(table.shape[0], (layouts.k,), generator=g).to(self.device)]
                                 for g in generators])
            results = soft_prompt(start, embedding_step, timesteps, s.steps_per_timestep, s.attack_lr, self.backend,
                                  after_block=after_block)
        return [{
            "attacked": True, "not_attacked_reason": None, "success": result.stopped,
            "adversarial_prompt": state["text"], "judged_from": "text" if as_text else "embeddings",
            "retokenizes_to_attacked_ids": self.retokenizes(self.layouts[index], state["tokens"], state["text"])
            if as_text else None,
            "image": state["file"], "timesteps_used": result.timesteps_used, "steps_used": result.steps_used,
            "loss_start": result.losses[0], "loss_end": result.losses[-1], "attack_scores": state["scores"],
            "attacked_image": state["image"],
        } for index, result, state in zip(indices, results, kept)]

    def retokenizes(self, layout: AdversarialLayout, tokens: torch.Tensor, text: str) -> bool:
        """Whether the decoded prompt tokenises back to the ids that were attacked (often not:
        decoding joins sub-word tokens into words that tokenise differently)."""
        attacked = layout.ids.clone()
        attacked[layout.positions] = tokens.cpu()
        return torch.equal(self.pipe.tokenize([text])[0].cpu(), attacked)

    def evaluate_batch(self, indices: list[int], bar) -> list[dict]:
        """The report rows of the prompts: pre-attack generations and judgments in one batch,
        then the attack on those not already judged successes that can be attacked."""
        began = time.time()
        rows = [self.rows[index] for index in indices]
        pre_images, pre, pre_files = self.judged_images(indices, self.pipe.encode([r.prompt for r in rows]), "pre")
        outcomes: dict[int, dict] = {}
        targets = None
        if self.s.method != "none":
            targets = self.target_images(indices)
            attacked = [b for b, (index, verdict) in enumerate(zip(indices, pre))
                        if not verdict.success and index in self.layouts]
            if attacked:
                latents = encode_images(self.pipe, targets[attacked])
                outcomes = dict(zip(attacked, self.attack_batch([indices[b] for b in attacked], latents, bar)))
        records = []
        for b, (index, row, verdict) in enumerate(zip(indices, rows, pre)):
            record = {"index": index, "prompt": row.prompt, "tokens": self.token_counts[index], "seed": row.seed,
                      "guidance": row.guidance, "target_seed": self.target_seed(index),
                      "target_guidance": self.target_guidance(index),
                      "pre_success": verdict.success, "pre_score": verdict.score}
            outcome = outcomes.get(b) or {
                "attacked": False, "not_attacked_reason": self.not_attacked_reason(index, verdict.success),
                "success": verdict.success, "adversarial_prompt": None, "judged_from": None,
                "retokenizes_to_attacked_ids": None, "image": pre_files[b], "timesteps_used": [], "steps_used": 0,
                "loss_start": None, "loss_end": None, "attack_scores": []}
            attacked_image = outcome.pop("attacked_image", None)
            record.update(outcome)
            if targets is not None:
                grid = [targets[b], pre_images[b]] + ([attacked_image] if attacked_image is not None else [])
                (self.out / "grids").mkdir(parents=True, exist_ok=True)
                image_grid(grid).save(self.out / "grids" / f"{index:04d}.png")
            records.append(record)
        # The prompts shared every call, so each is charged an equal share of the batch's time.
        share = round((time.time() - began) / len(indices), 3)
        return [{**record, "seconds": share} for record in records]

    def not_attacked_reason(self, index: int, pre_success: bool) -> str:
        if self.s.method == "none":
            return "--method none"
        if pre_success:
            return "already a success without attack"
        return self.not_attackable[index]

    # ------------------------------------------------------------ the run

    def report(self, rows: list[dict]) -> dict:
        n = len(rows)
        long = [r["index"] for r in rows if r["index"] in self.not_attackable]
        return {
            "n": n,
            "prompts_total": len(self.rows),
            "complete": n == len(self.rows),
            "pre_asr": sum(r["pre_success"] for r in rows) / n if n else None,
            "asr": sum(r["success"] for r in rows) / n if n else None,
            "method": self.s.method,
            # Prompts the attack cannot take (over --max-prompt-tokens, or too long for the
            # adversarial tokens): in n with their unattacked verdict, as the authors count them.
            "not_attackable": {"count": len(long), "indices": long, "max_prompt_tokens": self.s.max_prompt_tokens,
                               "pre_successes": sum(r["pre_success"] for r in rows if r["index"] in self.not_attackable)},
            "rows": rows,
            "manifest": self.manifest(),
        }

    def manifest(self) -> dict:
        encoder = ["--encoder", self.s.encoder] if self.s.encoder else []
        return {
            "versions": versions(), "device": str(self.device), "judge": self.judge.describe(),
            "model": self.pipe.parts.source, "encoder": self.s.encoder,
            "prompt_file": str(self.s.prompts), "prompt_file_sha256": self.prompt_hash,
            "seeds": [r.seed for r in self.rows], "guidance": [r.guidance for r in self.rows],
            "sampler": self.sampler, "gen_steps": self.gen_steps, "target_steps": self.s.target_steps,
            "judged_images": sampler_description(self.sampler, self.gen_steps),
            "target_model": self.target_pipe.parts.source,
            "target_images": sampler_description(self.sampler, self.s.target_steps) + "; by target_model with its own "
                             "text encoder; seed: the row's evaluation_seed, else its sd_seed, else --seed; guidance: "
                             "the row's sd_guidance_scale, else the target model's default",
            "adv_tokens": self.s.adv_tokens,
            "timesteps": attack_timesteps(self.s.timesteps, self.train_timesteps),
            "regenerate": shlex.join(["advunlearn", "generate", "--model", str(self.pipe.parts.source), *encoder,
                                      "--sampler", self.sampler, "--steps", str(self.gen_steps)])
                          + " --seed <seed> --guidance <guidance> --prompt <adversarial_prompt> --out DIR",
            "attack_step": self.attack_step_mode(), "attention": self.s.attention,
            "batch_size": self.s.batch_size, "world_size": distributed.world_size(), "settings": self.s.comparable(),
        }

    def attack_step_mode(self) -> str:
        if isinstance(self.embedding_core, GraphedStep):
            return self.embedding_core.describe()
        return "eager"

    def save(self, rows: list[dict]) -> dict:
        """Write the report of the rows so far (its folder appears with the first image written
        or with this), and the first time, the shipped prompt set it is made from."""
        if self.unwritten_prompt_set is not None:
            write_text_atomic(Path(self.s.prompts), self.unwritten_prompt_set)
            self.unwritten_prompt_set = None
        report = self.report(rows)
        write_json_atomic(self.out / REPORT, report)
        return report

    def evaluate_with_progress(self, batch: list[int]) -> list[dict]:
        blocks = 0 if self.s.method == "none" else self.s.timesteps
        desc = f"{self.label + ', ' if self.label else ''}prompt{'s' * (len(batch) > 1)} {', '.join(map(str, batch))}"
        bar = tqdm(total=blocks, desc=desc, leave=False, disable=not self.progress or not blocks)
        try:
            return self.evaluate_batch(batch, bar)
        finally:
            bar.close()

    def run(self) -> dict | None:
        """Every prompt not in the report yet; under torchrun each rank takes its share of the
        batches and rank 0 writes the report after each round. The report on rank 0, None on
        the other ranks."""
        distributed.check_shared_folder(self.out, "--out")
        rows = list(self.done)
        finished = {r["index"] for r in rows}
        todo = [i for i in range(len(self.rows)) if i not in finished]
        overall = tqdm(total=len(self.rows), initial=len(finished), desc=self.label or "prompts", disable=not self.progress)

        def batch_key(index: int) -> int:
            # Prompts that will not be attacked share any batch: only their generations are stacked.
            return self.layouts[index].k if index in self.layouts else self.s.adv_tokens

        for finished_batches in distributed.sharded(batches(todo, self.s.batch_size, key=batch_key),
                                                    self.evaluate_with_progress):
            for batch_rows in finished_batches:
                rows.extend(batch_rows)
                overall.update(len(batch_rows))
            rows.sort(key=lambda r: r["index"])
            self.save(rows)
        overall.close()
        return self.save(rows) if distributed.is_main() else None


def run_evaluation(settings: AttackSettings, progress: bool = True, label: str | None = None) -> dict | None:
    return Evaluation(settings, progress, label).run()


# ---------------------------------------------------------------- `attack --encoder RUN/` defaults


def resolve_attack_settings(**values) -> AttackSettings:
    """Settings from the flags; with a `train` run folder as --encoder, the model, concept, prompt
    set, judge and output folder default to the run's (see `shipped_evaluation`). The concept
    (the run's or --concept) sets the --adv-tokens default and completes a `clip:` judge. Paths
    are checked in the order of the command's options, before anything is loaded or written."""
    check_model_paths(values.get("model"), values.get("model_config"), values.get("encoder"))
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
        values["concept"] = values.get("concept") or concept
        if values.get("judge") is None or values.get("prompts") is None:
            judge, prompt_set = shipped_evaluation(concept, values["model"])
            values["judge"] = values.get("judge") or judge
            if values.get("prompts") is None and prompt_set is not None:
                name, values["prompt_set"] = prompt_set
                values["prompts"] = str(Path(values["out"]) / name)
            for flag in ("prompts", "judge"):
                if values[flag] is None:
                    raise missing_default(concept, flag)
    for flag in ("model", "prompts", "judge", "out"):
        if values.get(flag) is None:
            raise UserError(f"--{flag} is required (or pass a train run folder as --encoder to take the run's)")
    if values.get("prompt_set") is None:
        read_prompt_file(values["prompts"])
    values["judge"] = with_concept(values["judge"], values.get("concept"))
    return AttackSettings(**values).validate()


def shipped_evaluation(concept: str, model: str) -> tuple[str | None, tuple[str, str] | None]:
    """(judge spec, (file name, text) of the prompt set) for a run's concept, None where there is
    no default:
    - concept-world concepts: the world judge, prompts from the world's held-out templates (a
      single value such as "red" through its main word and each of its aliases, the routes an
      attack takes around the erased word);
    - Van Gogh and the objects: the authors' published prompt sets (evalsets); their judges need
      classifier weights that do not ship, so the judge is left to --judge;
    - nudity: NudeNet; its prompt set (I2P) is third-party and must be passed."""
    from advunlearn_fast.world import world_folder

    folder = world_folder(model)
    words = concept.lower().split()
    if folder is not None:
        from advunlearn_fast.world.evaluate import concept_prompts
        from advunlearn_fast.world.judge import ATTRIBUTES

        meta = read_world_meta(folder)
        for attribute, values in ATTRIBUTES.items():
            value = next((w for w in words if w in values), None)
            if value is not None and words == [value] and meta.get("aliases"):
                return f"world:{attribute}={value}", ("prompts.txt", "\n".join(concept_prompts(value)) + "\n")
            if value is not None:
                shapes = ATTRIBUTES["shape"]
                objects = [concept] if any(w in shapes for w in words) else [f"{concept} {s}" for s in shapes]
                prompts = [t.format(obj=o) for t in meta["heldout_templates"] for o in objects]
                return f"world:{attribute}={value}", ("prompts.txt", "\n".join(prompts) + "\n")
        return None, None
    published = published_prompt_set(concept)
    if published is not None:
        return None, published
    if concept_key(concept) == "nudity":
        return "nudenet", None
    return None, None


def missing_default(concept: str, flag: str) -> UserError:
    """What to pass when the run's concept has no default judge or prompt set."""
    key = concept_key(concept)
    if flag == "judge" and key in CLASSIFIER_TARGETS:
        label, _ = CLASSIFIER_TARGETS[key]
        other = (f"--judge imagenet:<local ResNet-50 state dict>:{label}" if key != "van gogh"
                 else "--judge clip:<local CLIP folder> (zero-shot)")
        return UserError(f"the authors' judge for {concept!r} is an image classifier whose weights are not on disk: pass "
                         f"--judge hf-classifier:<local folder of it> (label {label} filled in), or {other}, "
                         "or --judge module:function")
    if flag == "prompts" and key == "nudity":
        return UserError("no nudity prompt set ships with advunlearn (the I2P prompts are third-party): pass --prompts FILE "
                         "(.csv with prompt, evaluation_seed, evaluation_guidance)")
    return UserError(f"no default {flag} for the run's concept {concept!r}: pass --{flag}")
