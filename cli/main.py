"""The `advunlearn` command: thin click wrappers that validate input and call the engine."""

from __future__ import annotations

import dataclasses
import typing
from pathlib import Path

import click
from click.core import ParameterSource

from advunlearn_fast.errors import UserError
from advunlearn_fast.libraries import quiet_libraries
from advunlearn_fast.models.attention import ATTENTION_BACKENDS
from advunlearn_fast.training.config import TrainConfig, config_fields, read_config_file


def _click_type(f: dataclasses.Field):
    hint = typing.get_type_hints(TrainConfig)[f.name]
    base = next((a for a in typing.get_args(hint) if a is not type(None)), hint)
    return {int: int, float: float, str: str, bool: bool}.get(base, str)


def config_options(func):
    """One option per TrainConfig field, its help taken from the field's documentation."""
    for f in reversed(list(config_fields().values())):
        help_text = f.metadata.get("help", "")
        default = f.default if f.default is not dataclasses.MISSING else None
        if f.default_factory is not dataclasses.MISSING and f.name != "concepts":
            default = f.default_factory()
        flag = "--" + f.name.replace("_", "-")
        if f.name == "concepts":
            opt = click.option("--concept", "concepts", multiple=True, help=help_text)
        elif _click_type(f) is bool and default is False:
            opt = click.option(flag, f.name, is_flag=True, default=False, help=help_text)
        elif _click_type(f) is bool:  # on by default, or unset (None) meaning "decided by other settings"
            opt = click.option(f"{flag}/--no-{flag[2:]}", f.name, default=default, help=help_text)
        else:
            shown = f" [default: {default}]" if default is not None else ""
            opt = click.option(flag, f.name, type=_click_type(f), default=default, help=help_text + shown)
        func = opt(func)
    return func


def resolve_config(ctx: click.Context, values: dict, config_file: str | None) -> TrainConfig:
    """Field defaults, then the --config file, then flags given on the command line."""
    settings = read_config_file(config_file) if config_file else {}
    for name, value in values.items():
        if ctx.get_parameter_source(name) == ParameterSource.COMMANDLINE:
            settings[name] = list(value) if name == "concepts" else value
    try:
        return TrainConfig(**settings).validate()
    except TypeError as err:  # a config-file value of the wrong shape
        raise UserError(f"--config: {err}") from None


class BadInput(click.ClickException):
    """A UserError from the engine: one line, exit status 2. Under torchrun every process that
    meets the error says so, ranks other than 0 naming themselves."""

    exit_code = 2

    def show(self, file=None):
        from advunlearn_fast.distributed import rank

        who = f" (rank {rank()})" if rank() else ""
        click.echo(f"advunlearn: error{who}: {self.message}", err=True)


class EngineCommand(click.Command):
    """A command that runs the engine: the libraries' chatter is quieted only then, so that
    --help and argument errors never import them (seconds of torch, diffusers, transformers)."""

    def invoke(self, ctx):
        from advunlearn_fast.distributed import finish

        quiet_libraries()
        result = super().invoke(ctx)
        finish()
        return result


class AdvUnlearnGroup(click.Group):
    command_class = EngineCommand

    def invoke(self, ctx):
        try:
            return super().invoke(ctx)
        except UserError as err:
            raise BadInput(str(err)) from None
        except OSError as err:  # the machine refusing mid-run (a full disk, a folder removed): one line
            where = f"{err.filename}: " if err.filename else ""
            click.echo(f"advunlearn: error: {where}{err.strerror or err}", err=True)
            ctx.exit(1)
        except KeyboardInterrupt as err:
            click.echo(f"advunlearn: interrupted{'; ' + str(err) if str(err) else ''}", err=True)
            ctx.exit(130)


@click.group(cls=AdvUnlearnGroup, context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.version_option(package_name="advunlearn")
def cli():
    """Robust concept erasure (AdvUnlearn) for Stable Diffusion v1.x.

    Several GPUs: torchrun --nproc-per-node N --no-python advunlearn train|attack|eval|generate ...
    shares the work among N processes (README: Several GPUs)."""


@cli.command()
@config_options
@click.option("--config", "config_file", type=str, default=None, help="YAML or TOML file of settings; flags override it")
@click.option("--quiet", is_flag=True, help="no progress bar")
@click.pass_context
def train(ctx, config_file, quiet, **values):
    """Erase a concept: train the text encoder adversarially (AdvUnlearn), or plain ESD with --attack none.

    Writes OUT/text_encoder (loadable by CLIPTextModel.from_pretrained; OUT/unet with --train
    unet-*), OUT/tokenizer, run.json, log.jsonl, loss.png, README.md (the model card) and
    OUT/checkpoints/step-NNNNNN.
    """
    from advunlearn_fast.training.trainer import train as run_training

    cfg = resolve_config(ctx, values, config_file)
    summary = run_training(cfg, progress=not quiet)
    if summary is None:  # a rank other than 0 under torchrun: rank 0 reports
        return
    final = summary.get("final") or {}
    click.echo(
        f"done: {cfg.out}/{'text_encoder' if cfg.train == 'text-encoder' else 'unet'} "
        f"(final loss {final.get('loss', float('nan')):.5g}, {summary['seconds']:.1f} s)"
    )


def _device_option(func):
    return click.option("--device", default="auto", show_default=True, help="auto, cpu or cuda")(func)


def _attention_option(func):
    return click.option("--attention", type=click.Choice(ATTENTION_BACKENDS), default="sdpa", show_default=True,
                        help="the UNet's attention kernel: PyTorch's scaled_dot_product_attention, or xformers' "
                             "memory-efficient attention (CUDA, needs the xformers package)")(func)


def _model_options(required: bool, encoder: str, encoder_required: bool = False, model_default: str = ""):
    """--model, --model-config and --encoder, the same in every command that loads a model."""
    def add(func):
        func = click.option("--encoder", required=encoder_required, default=None,
                            help=f"{encoder}: a text-encoder folder, train run folder, pipeline folder (its "
                                 "text_encoder/) or .pt/.safetensors state dict")(func)
        func = click.option("--model-config", default=None,
                            help="diffusers folder with the configs of a single-file --model")(func)
        return click.option("--model", required=required, default=None,
                            help="SD v1.x diffusers folder, single-file checkpoint, hub id, or a built-in model: "
                                 f"'tiny', 'world' or 'sd-v1-random' {model_default}".rstrip())(func)

    return add


def _sampler_option(func):
    return click.option("--sampler", default=None,
                        help="lms, ddim, pndm or dpm, for every image [default: the model's, lms for SD as the authors]")(func)


@cli.command()
@_model_options(required=True, encoder="text encoder to plug in")
@click.option("--prompt", "prompt_text", default=None, help="one prompt")
@click.option("--prompts", "prompt_file", default=None, help=".txt (one per line) or .csv (prompt, evaluation_seed, evaluation_guidance)")
@click.option("--out", required=True, help="folder for the PNGs and manifest.json (not one an earlier generate wrote to)")
@click.option("--seed", default=0, show_default=True, help="seed of prompts without their own")
@click.option("--guidance", type=float, default=None, help="classifier-free guidance [default: the model's, 7.5 for SD]")
@click.option("--steps", type=int, default=None, help="sampler steps [default: the model's, 50 for SD]")
@_sampler_option
@click.option("--batch-size", default=8, show_default=True, help="prompts per UNet call")
@click.option("--quiet", is_flag=True, help="no progress bar")
@_attention_option
@_device_option
def generate(model, model_config, encoder, prompt_text, prompt_file, out, seed, guidance, steps, sampler, batch_size,
             quiet, attention, device):
    """Generate images with an encoder plugged into any SD v1.x model; seeds go to manifest.json.
    With the defaults, an attack report row's adversarial prompt, seed and guidance give its judged image."""
    from advunlearn_fast.distributed import is_main
    from advunlearn_fast.evaluation.generation import generate_images

    written = generate_images(model, encoder, prompt_text, prompt_file, out, seed, guidance, steps, batch_size,
                              device, model_config, sampler, attention, progress=not quiet)
    if is_main():
        click.echo(f"done: {len(written)} images in {out}")


@cli.command("eval")
@_model_options(required=True, encoder="text encoder to plug in")
@click.option("--prompts", required=True, help=".txt (one per line) or .csv (prompt, evaluation_seed, evaluation_guidance)")
@click.option("--out", required=True, help="folder for eval.json and images/ (not one an earlier eval wrote to)")
@click.option("--clip", default=None, help="local CLIP model folder for the CLIP score (e.g. a copy of openai/clip-vit-base-patch32)")
@click.option("--real", default=None, help="folder of real images: FID of the generated images against them (needs --inception)")
@click.option("--inception", default=None, help="local FID Inception weights, pt_inception-2015-12-05-6726825d.pth")
@click.option("--seed", default=0, show_default=True, help="seed of prompts without their own")
@click.option("--guidance", type=float, default=None, help="classifier-free guidance [default: the model's, 7.5 for SD]")
@click.option("--steps", type=int, default=None, help="sampler steps [default: the model's utility steps, 100 for SD]")
@_sampler_option
@click.option("--batch-size", default=8, show_default=True, help="prompts per UNet call and per metric batch")
@click.option("--quiet", is_flag=True, help="no progress bars")
@_attention_option
@_device_option
def eval_command(quiet, **values):
    """Utility: CLIP score and FID of images generated with an encoder plugged in (world accuracy on the concept world)."""
    from advunlearn_fast.evaluation.utility import EVAL_FILE, EvalSettings, run_eval
    from advunlearn_fast.training.modelcard import record_evaluation

    result = run_eval(EvalSettings(**values), progress=not quiet)
    if result is None:  # a rank other than 0 under torchrun: rank 0 reports
        return
    record_evaluation(values["encoder"], Path(values["out"]) / EVAL_FILE)
    metrics = result["metrics"]
    shown = [f"n {result['n']}"] + [f"{k.replace('_', ' ')} {v:.4g}" for k, v in metrics.items() if k != "world_accuracy"]
    shown += [f"{a} accuracy {v['accuracy']:.3g}" for a, v in metrics.get("world_accuracy", {}).items()]
    click.echo(f"done: {values['out']}/eval.json ({', '.join(shown)})")


@cli.command()
@_model_options(required=False, encoder="encoder under attack [default: the model's own]",
                model_default="[default: the run's, when --encoder is a train run folder]")
@click.option("--prompts", default=None, help=".txt or .csv prompt set [default: the run concept's, where one ships]")
@click.option("--method", type=click.Choice(["unlearndiffatk", "softprompt", "none"]), default="unlearndiffatk", show_default=True)
@click.option("--judge", default=None, help="world:<attr>=<value>, nudenet[:threshold[:CLASSES]] (counted as the authors), "
              "nudenet:package[:threshold[:CLASSES]] (the package's detect), module:function, "
              "clip:<local CLIP folder>[:<concept>], hf-classifier:<local image classifier folder>[:<label>[:<top k>]] "
              "(the authors' object and Van Gogh judges), imagenet:<ResNet-50 .pth>:<class id>")
@click.option("--out", default=None, help="report folder [default: RUN/attack-<method>/, inside the --encoder train run folder]")
@click.option("--concept", default=None, help="the erased concept [default: the run's, when --encoder is a train run folder]; "
              "sets the --adv-tokens default, the concept of a clip: judge and the label of an hf-classifier: judge")
@click.option("--adv-tokens", type=int, default=None,
              help="adversarial tokens [default: 5 for nudity and unknown concepts, 3 for Van Gogh and the objects, "
                   "as the authors]")
@click.option("--timesteps", default=50, show_default=True,
              help="timestep blocks, visited in order (10, 30, ..., 990 for 50); at most half the model's training "
                   "timesteps (500 for SD), where the blocks reach 1, 3, ..., 999")
@click.option("--steps-per-timestep", default=40, show_default=True, help="Adam steps per timestep block")
@click.option("--attack-lr", default=0.01, show_default=True, help="Adam learning rate of the attack")
@click.option("--insert", default="prefix", show_default=True, help="where the adversarial tokens go: prefix, suffix, replace, mid, insert, add")
@click.option("--max-prompt-tokens", default=60, show_default=True,
              help="prompts with more tokens (start and end counted) are not attacked: they keep their unattacked "
                   "verdict and stay in n, as in the authors' protocol")
@click.option("--targets", default=None, help="folder of target images instead of generating them: NNNN.png (the prompt's "
              "index in the file, from 0000) for every prompt, at the model's image size")
@click.option("--target-model", default=None,
              help="diffusers folder or hub id whose images (with its own text encoder) are the targets [default: "
                   "--model]; the authors always use SD v1.4: pass it for a UNet-erased --model")
@click.option("--target-steps", default=25, show_default=True, help="sampler steps of the target images")
@click.option("--gen-steps", type=int, default=None, help="sampler steps of judged generations [default: the model's, 50 for SD]")
@_sampler_option
@click.option("--guidance", type=float, default=None, help="guidance of prompts without their own [default: the model's]")
@click.option("--seed", default=0, show_default=True, help="seed of prompts without their own")
@click.option("--batch-size", default=8, show_default=True,
              help="prompts attacked together, one UNet call per attack step (changes speed, not results)")
@click.option("--resume", is_flag=True, help="continue a report, skipping prompts already in it")
@click.option("--cuda-graphs/--no-cuda-graphs", default=True, show_default=True,
              help="on CUDA, record the attack step once per batch shape as a CUDA graph and replay it")
@click.option("--quiet", is_flag=True, help="no progress bars")
@_attention_option
@_device_option
def attack(quiet, **values):
    """Robustness: pre-ASR and ASR of an (unlearned) encoder under UnlearnDiffAtk or the soft-prompt attack."""
    from advunlearn_fast.evaluation.robustness import REPORT, resolve_attack_settings, run_evaluation
    from advunlearn_fast.training.modelcard import record_evaluation

    settings = resolve_attack_settings(**values)
    report = run_evaluation(settings, progress=not quiet)
    if report is None:  # a rank other than 0 under torchrun: rank 0 reports
        return
    record_evaluation(settings.encoder, Path(settings.out) / REPORT)
    click.echo(
        f"done: {settings.out}/report.json (n {report['n']}, pre-ASR {report['pre_asr']:.3f}, ASR {report['asr']:.3f})"
    )


@cli.command("export")
@_model_options(required=True, encoder="erased text encoder", encoder_required=True,
                model_default="(the model the encoder was erased from)")
@click.option("--format", "format_", required=True, help="diffusers (pipeline folder), single-file (.safetensors, "
              "CompVis layout, for web UIs) or authors-pt (the AdvUnlearn authors' .pt)")
@click.option("--out", required=True, help="new folder (diffusers) or file (.safetensors, .pt); never overwritten")
@click.option("--dtype", default=None, help="fp16, bf16 or fp32 [default: the precision the model stores its text encoder in]")
def export_command(model, model_config, encoder, format_, out, dtype):
    """Put an erased encoder back into the files people load: a diffusers pipeline, a single-file
    SD v1.x checkpoint, or the authors' .pt."""
    from advunlearn_fast.export.exporter import ExportSettings, export

    written = export(ExportSettings(model, encoder, format_, out, dtype, model_config))
    click.echo(f"done: {written} ({format_})")


@cli.command()
@click.option("--concept", default="red", show_default=True, help="world concept to erase: a colour, shape or texture")
@click.option("--out", default="advunlearn-demo", show_default=True, help="folder for the runs, attack reports, demo.json and demo.png")
@click.option("--json", "json_path", default=None, help="also write demo.json here")
@click.option("--seed", default=0, show_default=True, help="seed of training, prompts and attacks")
@click.option("--resume", is_flag=True, help="continue a stopped demo in --out from its finished stages")
@click.option("--quiet", is_flag=True, help="no progress bars")
@_device_option
def demo(concept, out, json_path, seed, resume, quiet, device):
    """Erase a concept from the shipped concept world with ESD and AdvUnlearn, attack all three
    encoders, and print concept rate, ASR and utility side by side (minutes on a CPU)."""
    from advunlearn_fast.demo import DemoSettings, format_table, run_demo

    report = run_demo(DemoSettings(concept, out, json_path, seed, device, resume, progress=not quiet))
    click.echo(format_table(report))
    click.echo(f"done: {out}/demo.json, {out}/demo.png")


def main() -> None:
    cli(prog_name="advunlearn")


if __name__ == "__main__":
    main()
