"""The AdvUnlearn training loop (ALGORITHM.md), read top to bottom.

Each iteration: (1) after warm-up, the attacker finds adversarial embeddings for
the concept prompt against the current model; (2) the defender draws a DDIM step
k and timestep t, gets z_t from a guided partial rollout of the frozen model,
and takes one Adam step on the unlearning loss (ESD target, adversarial prompt)
plus the weighted retain loss. z_t, timesteps and frozen predictions come from
`sampling`; losses and the attack are pure functions.
"""

from __future__ import annotations

import copy
import dataclasses
import math
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import torch
from tqdm.auto import tqdm

from advunlearn_fast import distributed
from advunlearn_fast.device import cpu_policy, kernel_backend, resolve_device
from advunlearn_fast.errors import Interrupted, UserError, notice
from advunlearn_fast.models.attention import check_attention, set_unet_attention
from advunlearn_fast.models.diffusion import ddim_scheduler, predict_noise
from advunlearn_fast.models.insertion import SpecialTokens, build_layout, prompt_words
from advunlearn_fast.models.loading import ModelParts, load_model
from advunlearn_fast.models.text_encoding import adversarial_condition, encode_ids, token_table, tokenize
from advunlearn_fast.outputs import write_json_atomic
from advunlearn_fast.prompts import retain_prompts
from advunlearn_fast.training.acceleration import (
    compile_models,
    enable_activation_checkpointing,
    resolve_layout_and_precision,
    tf32_matmuls,
    use_channels_last,
    uses_cuda_graphs,
)
from advunlearn_fast.training.attack import best_candidate, random_token_embeddings, soft_prompt_attack, with_gradient
from advunlearn_fast.training.bank import TrajectoryBank
from advunlearn_fast.training.config import TrainConfig
from advunlearn_fast.training.costs import (
    BACKWARD_COST,
    CONDITIONING_BACKWARD,
    CostMeter,
    bank_build_cost,
    fresh_rollout_cost,
)
from advunlearn_fast.training.graphs import CudaRecorder, GraphedStep
from advunlearn_fast.training.layers import (
    freeze_all_but,
    parse_layer_spec,
    text_encoder_depth,
    text_encoder_parameters,
    unet_parameters,
)
from advunlearn_fast.training.losses import attack_loss, esd_target, retain_loss, total_loss, unlearn_loss
from advunlearn_fast.training.modelcard import write_model_card
from advunlearn_fast.training.optim import build_optimizer, check_optim
from advunlearn_fast.training.runfolder import (
    restore_checkpoint,
    resume_hint,
    resume_point,
    run_summary,
    save_checkpoint,
    trained_folder_name,
    write_final_outputs,
)
from advunlearn_fast.training.runlog import IterationLog, plot_losses
from advunlearn_fast.training.sampling import FreshRollouts, FrozenModel, rank_seed, retain_indices, retain_prompts_used
from advunlearn_fast.transfer import to_device


@dataclass
class Setup:
    """Everything the loop reads: models, fixed conditionings, prompts, trainable parameters."""

    cfg: TrainConfig
    parts: ModelParts
    device: torch.device
    te: torch.nn.Module  # TE_theta (the trained encoder, or the frozen one in UNet ablations)
    unet: torch.nn.Module  # UNet_theta: the frozen UNet itself unless the UNet is trained
    trained: torch.nn.Module  # the module whose parameters the optimiser updates
    trainable: dict
    frozen: FrozenModel  # the original model's UNet, schedule and conditionings
    source: object  # FreshRollouts or TrajectoryBank: where z_t and targets come from
    meter: CostMeter
    concept_ids: torch.Tensor  # [C, L]
    layouts: list  # AdversarialLayout per concept
    retain_texts: list
    retain_ids: torch.Tensor  # [N, L]
    layer_indices: list = field(default_factory=list)
    trajectories: dict = field(default_factory=dict)  # choose_trajectories: the bank or fresh rollouts, and why
    bank_built: int = 0
    bank_seconds: float = 0.0
    attack_step_by_concept: dict = field(default_factory=dict)  # eager step or GraphedStep
    graph_recorder: object = None  # one CUDA graph memory pool for every concept's attack step


def unet_dtype(cfg: TrainConfig, device: torch.device) -> torch.dtype:
    """The frozen UNet's precision: the reference keeps fp32; the fast engine uses bf16 (fp16
    on GPUs without it) on CUDA. A trained UNet (ablation) keeps fp32 master weights."""
    if cfg.engine == "reference" or device.type != "cuda" or cfg.train != "text-encoder":
        return torch.float32
    return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16


def rollout_unet(cfg: TrainConfig, unet: torch.nn.Module):
    """The UNet that rolls z_t out when it is not the original: in the UNet ablations the authors
    roll out with the UNet being trained, and so does the reference engine. The fast engine rolls
    out with the original (its bank cannot follow a UNet that changes)."""
    return unet if cfg.train != "text-encoder" and cfg.engine == "reference" else None


def choose_trajectories(cfg: TrainConfig, retain_count: int, train_timesteps: int, processes: int = 1) -> dict:
    """Where z_t comes from: the trajectory bank, or fresh rollouts when the run is too short for
    a bank to pay for itself (counted in UNet forward-equivalents for the whole run, all `processes`
    together, whatever is already cached, so that the same command always samples the same way).
    `train_timesteps`: the model's T, which sets the length of the walk to z_t."""
    if cfg.engine == "reference":
        return {"source": "fresh", "why": "fresh rollouts (the reference engine)"}
    if cfg.bank is False:
        return {"source": "fresh", "why": "fresh rollouts (--no-bank)"}
    used = retain_prompts_used(cfg.seed, retain_draws(cfg, processes), retain_count, cfg.retain_batch)
    bank = bank_build_cost(len(cfg.concepts), len(used), cfg.bank_size, cfg.retain_bank_size, cfg.ddim_steps,
                           train_timesteps)
    fresh = processes * round(fresh_rollout_cost(
        iterations=cfg.iterations, warmup=cfg.warmup, attacking=cfg.attack != "none", attack_every=cfg.attack_every,
        attack_steps=cfg.attack_steps, retain_batch=cfg.retain_batch, ddim_steps=cfg.ddim_steps,
        train_timesteps=train_timesteps))
    costs = {"bank_cost": bank, "fresh_cost": fresh}
    if cfg.bank is True:
        return {"source": "bank", "why": "the trajectory bank (--bank)", **costs}
    if bank < fresh:
        return {"source": "bank", "why": f"the trajectory bank (building it costs {bank} UNet passes, fresh rollouts "
                                         f"would cost about {fresh}; finished entries are reused by later runs)", **costs}
    return {"source": "fresh", "why": f"fresh rollouts (this run's rollouts cost about {fresh} UNet passes, a "
                                      f"trajectory bank for it {bank}; --bank builds one anyway)", **costs}


def retain_draws(cfg: TrainConfig, processes: int) -> int:
    """How many retain batches a run draws: one per iteration and process."""
    return cfg.iterations * processes


def retain_draw(iteration: int) -> int:
    """The retain draw of this process at an iteration: with N processes, iteration i of rank r
    takes draw i*N + r, so that N processes for S iterations see the retain prompts one process
    sees in N*S iterations."""
    return iteration * distributed.world_size() + distributed.rank()


def build_setup(cfg: TrainConfig, progress: bool = False, trajectories: dict | None = None) -> Setup:
    """Models, conditionings and trainable parameters of a run; `trajectories`: a resumed run's
    earlier choice of where z_t comes from (else chosen here)."""
    device = resolve_device(cfg.device)
    check_attention(cfg.attention, device)
    parts = load_model(cfg.model, cfg.model_config)
    warn_unknown_world_concepts(cfg.concepts, parts)
    tokenizer, te = parts.tokenizer, parts.text_encoder.to(device)
    depth = text_encoder_depth(te)
    layer_indices = parse_layer_spec(cfg.layers, depth) if cfg.train == "text-encoder" else []

    # Conditionings of the ORIGINAL encoder are constants of the run: computed once, so
    # no frozen copy of the encoder is kept.
    special = SpecialTokens.of(tokenizer)
    layouts = [
        build_layout(prompt_words(tokenizer, c), cfg.insert, cfg.adv_tokens, special).to(device) for c in cfg.concepts
    ]
    retain_texts = retain_prompts(cfg.concepts, cfg.retain_prompts or parts.default_retain_file, cfg.retain_filter)
    if cfg.retain_batch > len(retain_texts):
        raise UserError(f"--retain-batch {cfg.retain_batch} exceeds the {len(retain_texts)} retain prompts available")
    concept_ids = tokenize(tokenizer, cfg.concepts).to(device)
    retain_ids = tokenize(tokenizer, retain_texts).to(device)
    te.eval().requires_grad_(False)
    with torch.no_grad():
        uncond = encode_ids(te, tokenize(tokenizer, [""]).to(device))
        concept_conds = encode_ids(te, concept_ids)
        retain_conds = torch.cat([encode_ids(te, chunk) for chunk in retain_ids.split(64)])

    unet_frozen = parts.unet.to(device, unet_dtype(cfg, device)).eval().requires_grad_(False)
    set_unet_attention(unet_frozen, cfg.attention)
    if resolve_layout_and_precision(cfg, device)["channels_last"]:
        use_channels_last(unet_frozen)
    cpu_policy(unet_frozen, device, cfg.device)
    # The reference engine keeps a separate frozen copy for targets, as the authors' code does.
    separate_copy = cfg.train != "text-encoder" or cfg.engine == "reference"
    unet = copy.deepcopy(unet_frozen) if separate_copy else unet_frozen
    if cfg.train == "text-encoder":
        # The authors' text_encoder_full trains the final layer norm with component 'all' only.
        every_part = cfg.layers.strip().lower() == "all" and cfg.component == "all"
        final_norm = cfg.final_norm if cfg.final_norm is not None else every_part
        trainable = text_encoder_parameters(te, layer_indices, cfg.component, final_norm)
        trained = te
    else:
        trainable = unet_parameters(unet, cfg.train)
        trained = unet
    if not trainable:
        raise UserError("the chosen --layers/--component select no parameters to train")
    freeze_all_but(trained, trainable)

    image_size = cfg.image_size or parts.native_image_size
    down = 2 ** (len(unet.config.block_out_channels) - 1)
    if image_size % (parts.vae_scale * down):
        raise UserError(f"--image-size must be a multiple of {parts.vae_scale * down} for this model, got {image_size}")
    latent = image_size // parts.vae_scale
    meter = CostMeter()
    frozen = FrozenModel(
        unet=unet_frozen, scheduler=ddim_scheduler(parts.scheduler_config, cfg.ddim_steps), uncond=uncond,
        concept_conds=concept_conds, retain_conds=retain_conds,
        latent_shape=(parts.latent_channels, latent, latent), guidance=cfg.start_guidance, meter=meter,
    )
    s = Setup(
        cfg=cfg, parts=parts, device=device, te=te, unet=unet, trained=trained, trainable=trainable,
        frozen=frozen, source=FreshRollouts(frozen, rollout_unet=rollout_unet(cfg, unet)), meter=meter,
        concept_ids=concept_ids, layouts=layouts,
        retain_texts=retain_texts, retain_ids=retain_ids, layer_indices=layer_indices,
    )
    s.trajectories = trajectories or choose_trajectories(cfg, len(retain_texts), frozen.train_timesteps,
                                                         distributed.world_size())
    notice(f"trajectories: {s.trajectories['why']}")
    if s.trajectories["source"] == "bank":
        began = time.time()
        # Only the retain prompts this run will draw: a short run does not pay for the whole set.
        used = retain_prompts_used(cfg.seed, retain_draws(cfg, distributed.world_size()), len(retain_texts),
                                   cfg.retain_batch)
        bank_dir = Path(cfg.bank_dir).expanduser()
        distributed.check_shared_folder(bank_dir, "--bank-dir")
        bank = TrajectoryBank(
            frozen, bank_dir, cfg.concepts, retain_texts, cfg.bank_size, cfg.retain_bank_size,
            seed=cfg.bank_seed, retain_used=used,
        )
        s.bank_built = bank.build(progress)
        s.bank_seconds = time.time() - began
        s.source = bank
    # After the bank: its one-off no-grad batches need neither, and would only add compilations.
    if cfg.checkpointing:
        enable_activation_checkpointing(te, unet)
    if cfg.compile:
        compile_models(te, unet)
    return s


def warn_unknown_world_concepts(concepts: list[str], parts: ModelParts) -> None:
    """On a concept-world model (its folder has world.json), say so when a concept names none of
    the world's attribute values or their aliases: the model never saw it, so there is nothing to
    erase (a run that erases an unrelated word on purpose, as a control, still runs)."""
    meta = parts.world
    if meta is None:
        return
    attributes = meta.get("attributes") or {}
    values = [v for vs in attributes.values() for v in vs]
    phrases = values + [a for v in values for a in (meta.get("aliases") or {}).get(v, [])]
    for concept in concepts:
        padded = f" {concept.lower()} "
        if not any(f" {phrase.lower()} " in padded for phrase in phrases):
            known = "; ".join(f"{name}: {', '.join(vs)}" for name, vs in attributes.items())
            notice(f"--concept {concept!r} names nothing in the concept world: its model never saw it, so there is "
                   f"nothing to erase; the world's concepts are its attribute values ({known}) and their aliases "
                   f"(listed in {Path(parts.source) / 'world.json'})")


def concept_condition(s: Setup, concept: int, adv: torch.Tensor) -> torch.Tensor:
    """TE_theta's conditioning for the concept prompt with `adv` [k, D] in its slots ([1, L, D]),
    or for each candidate of `adv` [R, k, D] ([R, L, D])."""
    return adversarial_condition(
        s.te, s.layouts[concept], adv, kernel_backend(s.device), onehot_lookup=s.cfg.engine == "reference"
    )


def attack_start(s: Setup, concept: int, table: torch.Tensor, latest_adv: dict, generator) -> torch.Tensor:
    """The round's --attack-restarts starting points [R, k, D]: with --attack-init latest the previous
    round's result comes first (so restarts can only improve on it), the rest are random tokens."""
    count = s.layouts[concept].k
    previous = latest_adv.get(concept) if s.cfg.attack_init == "latest" else None
    starts = [] if previous is None else [previous]
    fresh = s.cfg.attack_restarts - len(starts)
    if fresh:
        starts += random_token_embeddings(table, fresh * count, generator).split(count)
    return torch.stack(starts)


def attack_step(s: Setup, concept: int):
    """The attack's device work, (adv [R, k, D], t [1], z_t [1, ...], e_p) -> (losses [R], gradient):
    with the fast engine on CUDA recorded once as a CUDA graph and replayed (graphs.py)."""
    if concept not in s.attack_step_by_concept:

        def losses(adv, t, z, e_p):
            cond = concept_condition(s, concept, adv)
            return attack_loss(predict_noise(s.unet, z.expand(len(adv), *z.shape[1:]), t, cond), e_p)

        step = with_gradient(losses)
        if uses_cuda_graphs(s.cfg, s.device):
            s.graph_recorder = s.graph_recorder or CudaRecorder()
            step = GraphedStep(step, s.graph_recorder)
        s.attack_step_by_concept[concept] = step
    return s.attack_step_by_concept[concept]


def run_attack(s: Setup, concept: int, adv_init: torch.Tensor, generator: torch.Generator):
    """One attack round on the candidates `adv_init` [R, k, D]: the current model is frozen while
    they move. Returns the candidate with the lowest final loss [k, D], its loss at every step,
    and every candidate's final loss."""
    step = attack_step(s, concept)

    def loss_and_grad(adv):
        # One draw of (t, z_t) for all candidates, so that their final losses compare like for like,
        # and one UNet call for all of them.
        t, z, e_p = s.source.attack_draw(concept, generator)
        s.meter.add("attack", len(adv), backward=CONDITIONING_BACKWARD)
        return step(adv, to_device(t, s.device), z, e_p)

    was_training = s.trained.training
    s.trained.eval()
    for p in s.trainable.values():
        p.requires_grad_(False)
    try:
        candidates, losses = soft_prompt_attack(
            adv_init, loss_and_grad, s.cfg.attack_steps, s.cfg.attack_lr, s.cfg.attack == "fast-at",
            kernel_backend(s.device),
        )
    finally:
        for p in s.trainable.values():
            p.requires_grad_(True)
        s.trained.train(was_training)
    best = best_candidate(losses[-1])
    # JSON has no NaN: a candidate that blew up is logged as null.
    return candidates[best], losses[:, best].tolist(), [x if math.isfinite(x) else None for x in losses[-1].tolist()]


def defender_step(s: Setup, step: int, concept: int, adv, optimizer, generator: torch.Generator) -> dict:
    """One Adam step on L_u (ESD target, adversarial or clean prompt) + gamma * L_r; under torchrun
    on the gradient averaged over the processes, each with its own draws and adversarial prompt."""
    cfg = s.cfg
    # On the host: the bank reads one entry per chosen prompt, and reading GPU indices back would
    # wait for the GPU once per prompt.
    chosen = retain_indices(cfg.seed, retain_draw(step), len(s.retain_texts), cfg.retain_batch)
    d = s.source.defender_draw(concept, chosen, generator)
    target = esd_target(d.e_uncond, d.e_concept, cfg.negative_guidance)

    if adv is not None:
        cond = concept_condition(s, concept, adv)
    else:
        cond = encode_ids(s.te, s.concept_ids[concept : concept + 1])
    retain_cond = encode_ids(s.te, s.retain_ids[to_device(chosen, s.device)])
    s.meter.add("train", 1, backward=BACKWARD_COST[cfg.train])
    s.meter.add("retain", len(chosen), backward=BACKWARD_COST[cfg.train])
    if cfg.engine == "fast":  # one UNet call for the concept and the retain prompts
        pred = predict_noise(s.unet, d.z, d.t, torch.cat([cond, retain_cond]))
        concept_pred, retain_pred = pred[:1], pred[1:]
    else:  # the authors' two calls
        concept_pred = predict_noise(s.unet, d.z[:1], d.t[:1], cond)
        retain_pred = predict_noise(s.unet, d.z[1:], d.t[1:], retain_cond)
    loss_u = unlearn_loss(concept_pred, target)
    loss_r = retain_loss(retain_pred, d.e_retain)
    loss = total_loss(loss_u, loss_r, cfg.retain_weight)
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    distributed.average_gradients(s.trainable.values())
    # Checked before the step, so that the weights stay the last finite ones. Under torchrun the
    # averaged gradient is the same on every rank: every rank stops at the same iteration. One
    # read-back for the losses and the gradient's norm: each .item() waits for the GPU.
    grad_norm = torch.nn.utils.get_total_norm([p.grad for p in s.trainable.values() if p.grad is not None])
    value, value_u, value_r, grad_norm = torch.stack(
        [loss.detach(), loss_u.detach(), loss_r.detach(), grad_norm.to(loss)]).tolist()
    if not (math.isfinite(value) and math.isfinite(grad_norm)):
        raise Diverged(step + 1, value)
    optimizer.step()
    return {"loss": value, "unlearn_loss": value_u, "retain_loss": value_r, "k": d.k, "t": int(d.t[0])}


class Diverged(Exception):
    """A defender step whose loss or gradient is not finite (a learning rate too high, mostly)."""

    def __init__(self, iteration: int, loss: float):
        super().__init__(iteration, loss)
        self.iteration, self.loss = iteration, loss


def divergence_message(err: Diverged, out: Path, s: Setup, attacked: bool) -> str:
    """What stopped the run, what is kept and what to try."""
    cfg = s.cfg
    loss = f"loss {err.loss:.4g}" + ("" if not math.isfinite(err.loss) else " with a gradient that is not finite")
    kept = sorted(c.name for c in (out / "checkpoints").glob("step-*"))
    lower = f"a lower --lr (it was {cfg.lr:g})" + (f" or --attack-lr (it was {cfg.attack_lr:g})" if attacked else "")
    return (f"training diverged at iteration {err.iteration}: {loss}; no final {trained_folder_name(s)}/ was written"
            + (f"; the checkpoints up to {kept[-1]} are kept: start a new run in another --out with {lower}" if kept
               else f"; run it again with {lower}"))


def train(cfg: TrainConfig, progress: bool = True,
          after_iteration: Callable[[dict], None] | None = None) -> dict | None:
    """Run AdvUnlearn as configured; returns the run summary also written to run.json.
    `after_iteration` gets each iteration's log record (benchmarks step their profiler with it).

    Under torchrun the run is data-parallel: every rank attacks and draws on its own (its
    generator seeded by the seed and its rank), the defender gradients are averaged before each
    step, so every rank holds the same weights, and rank 0 writes every output and returns the
    summary (the other ranks return None)."""
    cfg.validate()
    device = resolve_device(cfg.device)
    distributed.start(device)
    check_optim(cfg.optim)
    # Layout and precision are decided for run.json to say what ran (a resumed run may change them).
    cfg = dataclasses.replace(cfg, **resolve_layout_and_precision(cfg, device))
    with tf32_matmuls(cfg.tf32):
        return _train(cfg, progress and distributed.is_main(), after_iteration)


def _train(cfg: TrainConfig, progress: bool, after_iteration: Callable[[dict], None] | None) -> dict | None:
    main = distributed.is_main()
    out = Path(cfg.out)
    # Decided by rank 0 alone: it writes the run.json and checkpoints the others would read.
    start_checkpoint, earlier = distributed.on_main(lambda: resume_point(out, cfg))
    try:
        s = build_setup(cfg, progress, earlier)
    except KeyboardInterrupt:
        kept = "" if cfg.bank is False or cfg.engine == "reference" else ", finished trajectory-bank entries are kept"
        raise Interrupted(f"nothing was written to {out}{kept}: run the same command again to continue") from None
    if main:
        out.mkdir(parents=True, exist_ok=True)  # only now: bad input leaves no empty folder behind
    distributed.check_shared_folder(out, "--out")
    if cfg.attack != "none" and cfg.warmup >= cfg.iterations:
        notice(f"--warmup {cfg.warmup} >= --iterations {cfg.iterations}: no attack step will run, this is plain ESD; "
               "lower --warmup to train adversarially")
    optimizer = build_optimizer(cfg.optim, list(s.trainable.values()), cfg.lr)
    generator = torch.Generator().manual_seed(rank_seed(cfg.seed, distributed.rank()))
    latest_adv: dict[int, torch.Tensor] = {}
    start, concept = 0, None
    if start_checkpoint is not None:
        start, concept = restore_checkpoint(start_checkpoint, s, optimizer, generator, latest_adv)
    log = IterationLog(out / "log.jsonl", keep_until_step=start) if main else None
    if main:
        write_json_atomic(out / "run.json", run_summary(cfg, s, status="running"))

    s.trained.train()
    table = token_table(s.te)
    began = time.time()
    bar = tqdm(total=cfg.iterations, initial=start, disable=not progress, desc="advunlearn", unit="it")
    s.meter.take_window()  # the bank's build cost is the run's, not the first iteration's
    try:
        for step in range(start, cfg.iterations):
            tick = time.time()
            attacking = cfg.attack != "none" and step >= cfg.warmup
            attack_losses = candidates_end = None
            # As the authors: every --attack-every iterations (counted from 0, the warm-up too) a
            # concept is drawn, attacked once the warm-up is over, and kept with its adversarial
            # embeddings until the next draw. A warm-up that ends between two draws (the authors'
            # script fails there) runs on, clean, until the next.
            if step % cfg.attack_every == 0:
                concept = int(torch.randint(len(cfg.concepts), (1,), generator=generator))
                if attacking:
                    adv_init = attack_start(s, concept, table, latest_adv, generator)
                    latest_adv[concept], attack_losses, candidates_end = run_attack(s, concept, adv_init, generator)
            adv = latest_adv.get(concept) if attacking else None

            try:
                record = defender_step(s, step, concept, adv, optimizer, generator)
            except Diverged as err:
                if main:
                    summary = run_summary(cfg, s, status="diverged")
                    summary["diverged"] = {"iteration": err.iteration, "loss": str(err.loss)}
                    write_json_atomic(out / "run.json", summary)
                raise UserError(divergence_message(err, out, s, attacking)) from None
            record.update(
                step=step + 1, concept=cfg.concepts[concept], adversarial=adv is not None,
                attack_loss_start=attack_losses[0] if attack_losses else None,
                attack_loss_end=attack_losses[-1] if attack_losses else None,
                seconds=round(time.time() - tick, 4), unet_fwd_equiv=s.meter.take_window(),
            )
            if cfg.attack_restarts > 1 and candidates_end:
                record["attack_loss_end_candidates"] = candidates_end
            if after_iteration is not None:
                after_iteration(record)
            every_rank = distributed.gather_to_main(record)
            if every_rank is not None:
                logged = iteration_record(every_rank)
                log.append(logged)
                bar.set_postfix(loss=f"{logged['loss']:.4g}", attack=f"{logged['attack_loss_end'] or 0:.4g}")
            bar.update(1)
            if (step + 1) % cfg.save_every == 0 or step + 1 == cfg.iterations:
                save_checkpoint(out, step + 1, s, optimizer, generator, latest_adv, concept)
    except KeyboardInterrupt:
        raise Interrupted(resume_hint(out)) from None
    bar.close()

    costs = distributed.gather_to_main(dict(s.meter.total))
    if not main:
        return None
    write_final_outputs(out, s)
    records = log.records()
    if records:
        plot_losses(records, out / "loss.png")
    summary = run_summary(cfg, s, status="complete")
    summary["unet_fwd_equiv_total"] = dict(sum((Counter(c) for c in costs), Counter()))
    summary["seconds"] = round(time.time() - began, 3)
    summary["final"] = {k: records[-1][k] for k in ("loss", "unlearn_loss", "retain_loss")} if records else None
    write_json_atomic(out / "run.json", summary)
    write_model_card(out)
    return summary


def iteration_record(every_rank: list[dict]) -> dict:
    """One iteration's log.jsonl line from every rank's record: with one process its record; with
    several, the losses of the step taken (their mean over the ranks, as the gradient was averaged),
    the slowest rank's seconds, the ranks' UNet costs summed, and each rank's own record."""
    if len(every_rank) == 1:
        return every_rank[0]

    def mean(key):
        values = [r[key] for r in every_rank if r.get(key) is not None]
        return sum(values) / len(values) if values else None

    return {
        "step": every_rank[0]["step"],
        **{key: mean(key) for key in ("loss", "unlearn_loss", "retain_loss", "attack_loss_start", "attack_loss_end")},
        "seconds": max(r["seconds"] for r in every_rank),
        "unet_fwd_equiv": dict(sum((Counter(r["unet_fwd_equiv"]) for r in every_rank), Counter())),
        "ranks": every_rank,
    }
