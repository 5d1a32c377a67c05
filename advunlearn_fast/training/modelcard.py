"""The model card (README.md, Hugging Face format) of a `train` run folder.

It is built from run.json and from the `attack` and `eval` reports made for the run, read as
plain JSON (training does not import the evaluation code). The reports a run has are listed in
its evaluations.json, which `attack --encoder RUN` and `eval --encoder RUN` add to, wherever
their --out is; the card is rewritten from scratch each time, so it never goes stale.
"""

from __future__ import annotations

import json
from pathlib import Path

from advunlearn_fast.errors import UserError
from advunlearn_fast.models.loading import BUILT_IN_MODELS, NO_VAE_MODELS
from advunlearn_fast.outputs import write_json_atomic, write_text_atomic
from advunlearn_fast.prompts import concept_name

CARD = "README.md"
EVALUATIONS = "evaluations.json"
TAGS = ("concept-erasure", "machine-unlearning", "advunlearn", "stable-diffusion", "stable-diffusion-v1")
# Settings that say where files went, not how the encoder was trained.
NOT_SETTINGS = ("model", "model_config", "concepts", "out", "resume", "bank_dir")
SHA_SHOWN = 16  # leading hex digits of a hash in tables; the full hash is in the protocol line


# ---------------------------------------------------------------- entry points


def write_model_card(run: Path) -> Path:
    """Write RUN/README.md from RUN/run.json and the run's reports."""
    run = Path(run)
    summary = _read_json(run / "run.json")
    if summary is None:
        raise UserError(f"{run / 'run.json'} cannot be read: no model card written")
    reports = [(name, data) for name in registered(run) if (data := _read_json(_locate(run, name)))]
    write_text_atomic(run / CARD, card_text(run.name, summary, reports))
    return run / CARD


def record_evaluation(encoder: str | None, report: Path) -> None:
    """After `attack`/`eval`: when --encoder was a train run folder, list the report among the
    run's evaluations and rewrite its card. Any other encoder has no card to refresh."""
    if encoder is None or not (Path(encoder).expanduser() / "run.json").is_file():
        return
    run = Path(encoder).expanduser()
    name = _name_in(run, Path(report))
    names = registered(run)
    if name not in names:
        write_json_atomic(run / EVALUATIONS, {"reports": names + [name]})
    write_model_card(run)


def registered(run: Path) -> list[str]:
    data = _read_json(Path(run) / EVALUATIONS) or {}
    return [str(n) for n in data.get("reports", [])]


def _name_in(run: Path, report: Path) -> str:
    """The report's path relative to the run folder when inside it (the folder may move), else absolute."""
    report = report.expanduser().resolve()
    try:
        return report.relative_to(run.resolve()).as_posix()
    except ValueError:
        return str(report)


def _locate(run: Path, name: str) -> Path:
    path = Path(name)
    return path if path.is_absolute() else run / path


def _read_json(path: Path) -> dict | None:
    """A report's contents, or None when it is gone or unreadable (the card leaves it out)."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


# ---------------------------------------------------------------- the card


def hub_id(model: str) -> str | None:
    """The model as a Hugging Face hub id, when it is one (not a local path or a built-in model)."""
    if model in BUILT_IN_MODELS or Path(model).expanduser().exists() or model.startswith((".", "/", "~")):
        return None
    return model if model.count("/") == 1 else None


def card_text(folder: str, summary: dict, reports: list[tuple[str, dict]]) -> str:
    cfg = summary.get("config", {})
    text_encoder = cfg.get("train", "text-encoder") == "text-encoder"
    sections = [
        _header(cfg, text_encoder),
        _title(cfg, summary, text_encoder),
        _what_was_erased(cfg, summary),
        _settings(cfg, summary),
        _parameters(cfg, summary, text_encoder),
        _usage(folder, cfg, text_encoder),
        _evaluation(reports, text_encoder),
    ]
    return "\n\n".join(s.strip("\n") for s in sections) + "\n"


def _header(cfg: dict, text_encoder: bool) -> str:
    lines = ["---"]
    base = hub_id(cfg.get("model", ""))
    if base:
        lines.append(f"base_model: {base}")
    lines.append("tags:")
    lines += [f"- {t}" for t in TAGS + (("text-encoder",) if text_encoder else ("unet",))]
    lines.append("# license: not set. Choose one that the base model's license allows (Stable Diffusion v1.x: "
                 "creativeml-openrail-m) before sharing.")
    lines.append("---")
    return "\n".join(lines)


def _adversarial(cfg: dict) -> bool:
    """Whether an attack step ran: not with --attack none, nor when the warm-up lasts the whole run."""
    return cfg.get("attack") != "none" and cfg.get("warmup", 0) < cfg.get("iterations", 1)


def _method(cfg: dict) -> str:
    return "AdvUnlearn" if _adversarial(cfg) else "ESD"


def _title(cfg: dict, summary: dict, text_encoder: bool) -> str:
    concept = concept_name(cfg.get("concepts") or ["?"])
    part = "text encoder" if text_encoder else f"UNet ({cfg.get('train')})"
    lines = [
        f"# {concept} erased: {_method(cfg)} {part} for {cfg.get('model', '?')}",
        "",
        f"A Stable Diffusion v1.x {part} trained with {_method_long(cfg)} so that prompts naming "
        f"**{concept}** no longer produce it, while other prompts keep working. Written by advunlearn "
        f"{summary.get('versions', {}).get('advunlearn', '')}".rstrip() + ".",
    ]
    if summary.get("status") != "complete":
        lines += ["", "**Training has not finished**: run.json says "
                  f"`{summary.get('status')}`; the weights here are not the final ones."]
    return "\n".join(lines)


def _method_long(cfg: dict) -> str:
    if cfg.get("attack") == "none":
        return "ESD (erased stable diffusion, no adversarial training)"
    if not _adversarial(cfg):
        return (f"ESD (erased stable diffusion: --warmup {cfg.get('warmup')} >= --iterations {cfg.get('iterations')}, "
                "so no attack step ran)")
    return "AdvUnlearn (adversarial unlearning against a soft-prompt attacker, Zhang et al., NeurIPS 2024)"


# What each --retain-filter left out of the retain prompts.
RETAIN_FILTER_WORDS = {
    "phrase": "every prompt holding a concept phrase as whole words left out",
    "related": "every prompt sharing a word with the concept or its related terms left out",
    "none": "none left out",
}


def _what_was_erased(cfg: dict, summary: dict) -> str:
    concepts = cfg.get("concepts") or []
    source = summary.get("retain_source") or cfg.get("retain_prompts") or "built-in"
    retain = ("the authors' retain set (their coco_object_retain.csv, built in)" if source == "built-in"
              else f"`{source}`")
    lines = [
        "## What was erased",
        "",
        f"- concept: {', '.join(f'`{c}`' for c in concepts)}"
        + (" (one phrase sampled per iteration)" if len(concepts) > 1 else ""),
        f"- base model: `{cfg.get('model')}`" + (f" (configs: `{cfg['model_config']}`)" if cfg.get("model_config") else ""),
        f"- utility kept on {summary.get('retain_prompt_count', '?')} retain prompts from {retain}, "
        + RETAIN_FILTER_WORDS[cfg.get("retain_filter", "related")],  # runs before the setting used `related`
    ]
    return "\n".join(lines)


def _settings(cfg: dict, summary: dict) -> str:
    rows = [f"| `--{k.replace('_', '-')}` | {_value(v)} |" for k, v in cfg.items() if k not in NOT_SETTINGS]
    lines = ["## Training settings", "", "| flag | value |", "|---|---|", *rows]
    final = summary.get("final") or {}
    facts = [f"device {summary.get('device', '?')}"]
    processes = summary.get("world_size", 1)
    if processes > 1:
        facts.append(f"data-parallel over {processes} processes (torchrun): each defender step averaged the gradients "
                     f"of {processes} adversarial samples, one per process")
    if summary.get("seconds") is not None:
        facts.append(f"{summary['seconds']:.0f} s of training")
    if final:
        facts.append("final losses: " + ", ".join(f"{k.replace('_', ' ')} {v:.4g}" for k, v in final.items()))
    versions = summary.get("versions") or {}
    if versions:
        facts.append("versions: " + ", ".join(f"{k} {v}" for k, v in versions.items()))
    return "\n".join(lines + ["", "; ".join(facts) + "."])


def _value(value) -> str:
    if value is None:
        return "default"
    if isinstance(value, bool):
        return "yes" if value else "no"
    return f"`{value}`"


def _parameters(cfg: dict, summary: dict, text_encoder: bool) -> str:
    names = summary.get("trained_parameters") or []
    count = summary.get("trained_parameter_count")
    amount = f"{count:,} parameters in {len(names)} tensors" if count is not None else f"{len(names)} tensors"
    if text_encoder:
        layers = summary.get("layers") or []
        final_norm = any(n.startswith("final_layer_norm.") for n in names)
        what = (f"text-encoder layers {_ranges(layers)} (component: {cfg.get('component', 'all')}), final layer norm "
                f"{'trained' if final_norm else 'frozen'}; the embeddings and the UNet are the base model's")
    else:
        kind = "cross-attention (ESD-x)" if cfg.get("train") == "unet-xattn" else "non-cross-attention (ESD-u)"
        what = f"the UNet's {kind} parameters; the text encoder is the base model's"
    listing = "\n".join(f"- `{n}`" for n in names)
    return "\n".join([
        "## Parameters trained", "", f"{what}: {amount}.", "",
        "<details><summary>tensor names</summary>", "", listing, "", "</details>",
    ])


def _ranges(indices: list[int]) -> str:
    """[0, 1, 2, 5] -> '0-2, 5'."""
    spans: list[list[int]] = []
    for i in sorted(indices):
        if spans and i == spans[-1][1] + 1:
            spans[-1][1] = i
        else:
            spans.append([i, i])
    return ", ".join(f"{a}-{b}" if b > a else f"{a}" for a, b in spans) or "none"


def _usage(folder: str, cfg: dict, text_encoder: bool) -> str:
    model = cfg.get("model", "MODEL")
    single_file = Path(model).suffix.lower() in (".safetensors", ".ckpt")
    if single_file:
        load_base = (f'StableDiffusionPipeline.from_single_file("{model}", config="{cfg.get("model_config") or "CONFIG_FOLDER"}", '
                     f"{'text_encoder' if text_encoder else 'unet'}=erased)")
    else:
        load_base = f'StableDiffusionPipeline.from_pretrained("{model}", {"text_encoder" if text_encoder else "unet"}=erased)'
    if text_encoder:
        imports, load = "from transformers import CLIPTextModel", f'CLIPTextModel.from_pretrained("{folder}", subfolder="text_encoder")'
    else:
        imports = "from diffusers import UNet2DConditionModel"
        load = f'UNet2DConditionModel.from_pretrained("{folder}", subfolder="unet")'
    built_in = model in BUILT_IN_MODELS
    held = ("`text_encoder/` (the trained CLIP text encoder) and `tokenizer/`" if text_encoder else
            "`unet/` (the trained UNet, diffusers layout; the text encoder is the base model's) and `tokenizer/`")
    lines = [
        "## How to use",
        "",
        f"`{folder}` is this folder (on the Hugging Face Hub, its repo id). It holds {held}, with `run.json`, "
        "`log.jsonl` and `checkpoints/` from training.",
        "",
        "```python",
        *([] if built_in else ["from diffusers import StableDiffusionPipeline"]),
        imports,
        "",
        f"erased = {load}",
        *([] if built_in else [f"pipe = {load_base}"]),
        "```",
    ]
    if built_in:
        lines += ["", f"`{model}` is a model built into advunlearn (`advunlearn_fast.models.loading.load_model(\"{model}\")` "
                      "returns its parts), not a folder or hub id that diffusers loads by name."]
        if text_encoder:
            lines += [f"Plug the encoder in with advunlearn: `advunlearn generate --model {model} --encoder {folder} "
                      "--prompt \"...\" --out images` (and `attack`, `eval`)."]
    if not text_encoder:
        lines += ["", "`advunlearn generate`, `eval`, `attack` and `export` plug in text encoders (`--encoder`) and refuse "
                      "this folder."]
        if not built_in:
            lines[-1] += (" To use them on this UNet, save the pipeline above as a diffusers folder "
                          "(`pipe.save_pretrained(DIR)`) and pass `--model DIR`; `attack` then makes its UnlearnDiffAtk "
                          "targets with this erased UNet, so pass targets made with the base model (`--targets`, e.g. "
                          "the `targets/` of an `attack` on the base model).")
    if text_encoder:
        config = f" --model-config {cfg['model_config']}" if cfg.get("model_config") else ""
        formats = (("diffusers", f"{folder}-pipeline"), ("single-file", f"{folder}.safetensors"),
                   ("authors-pt", f"{folder}.pt"))
        if model in NO_VAE_MODELS:  # export refuses the pipeline formats: nothing could decode them
            formats = formats[2:]
            intro = (f"As a file other tools load (`advunlearn export`; `{model}` has no VAE, so only the AdvUnlearn "
                     "authors' .pt):")
        else:
            intro = ("As files other tools load (`advunlearn export`): a whole diffusers pipeline folder, a single-file "
                     "checkpoint for web UIs (AUTOMATIC1111, ComfyUI), or the AdvUnlearn authors' .pt:")
        lines += [
            "", intro, "", "```bash",
            *(f"advunlearn export --model {model}{config} --encoder {folder} --format {fmt} --out {out}"
              for fmt, out in formats),
            "```",
        ]
    return "\n".join(lines)


# ---------------------------------------------------------------- evaluation


def _evaluation(reports: list[tuple[str, dict]], text_encoder: bool) -> str:
    attacks = [(n, r) for n, r in reports if "asr" in r]
    evals = [(n, r) for n, r in reports if "metrics" in r]
    lines = ["## Evaluation", ""]
    if not attacks and not evals and not text_encoder:
        lines.append("No evaluation is recorded here: `advunlearn attack` and `advunlearn eval` rewrite the card of a "
                     "text-encoder run only.")
        return "\n".join(lines)
    if not attacks and not evals:
        lines.append("No `advunlearn attack` or `advunlearn eval` report for this run yet. Run them with "
                     "`--encoder` set to this folder and this card is rewritten with their figures.")
        return "\n".join(lines)
    if attacks:
        lines += [
            "Robustness (`advunlearn attack`): pre-ASR is the share of prompts whose unattacked image the judge "
            "calls the concept, ASR the share after the attack (lower is better).",
            "",
            "| method | judge | prompts | pre-ASR | ASR | prompt set sha256 | report |",
            "|---|---|---|---|---|---|---|",
        ]
        for name, r in attacks:
            m = r.get("manifest") or {}
            n = r.get("n")
            prompts = f"{n}" if r.get("complete", True) else f"{n} of {r.get('prompts_total')} (unfinished)"
            lines.append(f"| {r.get('method', '?')} | `{_judge(m)}` | {prompts} | {_rate(r.get('pre_asr'))} | "
                         f"{_rate(r.get('asr'))} | `{_short(m.get('prompt_file_sha256'))}` | `{name}` |")
        lines += ["", "Protocols:", ""] + [f"- `{name}`: {_attack_protocol(r)}" for name, r in attacks]
    if evals:
        lines += [
            *([""] if attacks else []),
            "Utility (`advunlearn eval`):",
            "",
            "| metric | value | images | prompt set sha256 | report |",
            "|---|---|---|---|---|",
        ]
        for name, r in evals:
            m = r.get("manifest") or {}
            for metric, value in _metrics(r.get("metrics") or {}):
                lines.append(f"| {metric} | {value} | {r.get('n')} | `{_short(m.get('prompt_file_sha256'))}` | `{name}` |")
        lines += ["", "Protocols:", ""] + [f"- `{name}`: {_eval_protocol(r)}" for name, r in evals]
    return "\n".join(lines)


def _rate(value) -> str:
    return "?" if value is None else f"{value:.3f}"


def _short(sha) -> str:
    return (sha or "?")[:SHA_SHOWN]


def _judge(manifest: dict) -> str:
    """The judge's --judge spec (reports record it with its threshold and details)."""
    judge = manifest.get("judge")
    return str(judge.get("spec", "?")) if isinstance(judge, dict) else str(judge or "?")


def _sampler(manifest: dict) -> str:
    """The sampler a report's images were made with, as its manifest names it: `attack` records
    its name ("lms"), `eval` a description that starts with it ("lms, 100 steps, ...")."""
    name = str(manifest.get("sampler") or "").split(",")[0].strip()
    return name.upper() if name else "?"


def _attack_protocol(r: dict) -> str:
    m = r.get("manifest") or {}
    s = m.get("settings") or {}
    method = r.get("method")
    judge = m.get("judge") if isinstance(m.get("judge"), dict) else {}
    facts = ", ".join(f"{k} {v}" for k, v in judge.items() if k != "spec" and v is not None)
    parts = [f"prompts `{m.get('prompt_file', '?')}` (sha256 {m.get('prompt_file_sha256', '?')})",
             f"judge `{_judge(m)}`" + (f" ({facts})" if facts else "")]
    if method != "none":
        name = {"unlearndiffatk": "UnlearnDiffAtk", "softprompt": "soft-prompt attack"}.get(method, method)
        parts.append(f"{name} with {s.get('adv_tokens', '?')} adversarial tokens ({s.get('insert', '?')}), "
                     f"{len(m.get('timesteps') or []) or s.get('timesteps', '?')} timestep blocks x "
                     f"{s.get('steps_per_timestep', '?')} Adam steps at lr {s.get('attack_lr', '?')}")
        if method == "unlearndiffatk":
            parts.append(f"targets from the original model at {s.get('target_steps', '?')} {_sampler(m)} steps")
    parts.append(f"judged images at {m.get('gen_steps', '?')} {_sampler(m)} steps, the seed and guidance of each prompt")
    parts.append(f"model `{m.get('model', '?')}`")
    return "; ".join(parts)


def _metrics(metrics: dict) -> list[tuple[str, str]]:
    rows = []
    if "clip_score" in metrics:
        rows.append(("CLIP score", f"{metrics['clip_score']:.2f}"))
    if "fid" in metrics:
        rows.append(("FID", f"{metrics['fid']:.2f}"))
    for attribute, v in (metrics.get("world_accuracy") or {}).items():
        rows.append((f"world {attribute} accuracy", f"{v.get('accuracy', float('nan')):.3f}"))
    return rows


def _eval_protocol(r: dict) -> str:
    m = r.get("manifest") or {}
    parts = [f"prompts `{m.get('prompt_file', '?')}` (sha256 {m.get('prompt_file_sha256', '?')})",
             f"{m.get('steps', '?')} {_sampler(m)} steps, the seed and guidance of each prompt"]
    clip = m.get("clip")
    if clip:
        parts.append(f"CLIP `{clip.get('path')}` (sha256 {clip.get('sha256')}): {clip.get('score')}")
    if m.get("inception"):
        real = m.get("real") or {}
        parts.append(f"FID against {real.get('n', '?')} images of `{real.get('dir', '?')}`, Inception sha256 "
                     f"{m['inception'].get('sha256')}")
    parts += list(r.get("notes") or [])
    parts.append(f"model `{m.get('model', '?')}`")
    return "; ".join(parts)
