"""--checkpointing, --compile, --channels-last and --tf32 change how the models run, not what they
compute (beyond rounding)."""

import functools
import json
import os

import pytest
import torch
from helpers import FAST_ARGS, run_cli
from safetensors.torch import load_file
from test_train_cli import GOLDEN_LOSSES

import advunlearn_fast.training.trainer as trainer
from advunlearn_fast.models.diffusion import predict_noise
from advunlearn_fast.models.text_encoding import encode_ids, text_transformer
from advunlearn_fast.training.acceleration import resolve_layout_and_precision
from advunlearn_fast.training.config import TrainConfig
from advunlearn_fast.training.losses import attack_loss, retain_loss

# The golden run of test_train_cli.py.
GOLDEN_ARGS = ["--concept", "Van Gogh", "--layers", "1", "--iterations", 3, "--warmup", 1, "--save-every", 2, "--bank",
               *FAST_ARGS]


def _losses(out):
    return [json.loads(line)["loss"] for line in (out / "log.jsonl").read_text().splitlines()]


def _gradients(checkpointing: bool):
    """Gradients of an attack loss (w.r.t. the adversarial embeddings) and of a retain loss
    (w.r.t. every encoder layer), and how often a UNet resnet and an encoder MLP ran."""
    cfg = TrainConfig(model="tiny", concepts=["church"], out="unused", ddim_steps=4, adv_tokens=2, bank=False,
                      checkpointing=checkpointing, device="cpu").validate()
    s = trainer.build_setup(cfg)
    s.trained.train()
    generator = torch.Generator().manual_seed(0)
    t, z, e_p = s.source.attack_draw(0, generator)  # frozen passes without gradients: not counted
    runs = {"unet": 0, "encoder": 0}
    # Pre-hooks: a recompute stops as soon as it has what the backward pass needs. And a block
    # after the first cross-attention: earlier ones need no backward pass, hence no recompute.
    resnet = s.unet.up_blocks[-1].resnets[0]
    resnet.register_forward_pre_hook(lambda *_: runs.__setitem__("unet", runs["unet"] + 1))
    mlp = text_transformer(s.te).encoder.layers[0].mlp
    mlp.register_forward_pre_hook(lambda *_: runs.__setitem__("encoder", runs["encoder"] + 1))
    adv = torch.randn(2, s.te.config.hidden_size, generator=generator).requires_grad_(True)
    attack = attack_loss(predict_noise(s.unet, z, t, trainer.concept_condition(s, 0, adv)), e_p).sum()
    z2 = z.expand(2, -1, -1, -1)
    retain = retain_loss(predict_noise(s.unet, z2, t, encode_ids(s.te, s.retain_ids[:2])), e_p.expand_as(z2))
    grads = torch.autograd.grad(attack + retain, [adv, *s.trainable.values()])
    return grads, runs


def test_checkpointing_recomputes_and_gives_the_same_gradients():
    plain, plain_runs = _gradients(False)
    checkpointed, checkpointed_runs = _gradients(True)
    for a, b in zip(plain, checkpointed):
        torch.testing.assert_close(b, a, rtol=1e-5, atol=1e-8)
    assert plain[0].abs().sum() > 0  # gradients reach the conditioning through the frozen UNet
    # The backward pass re-ran what the forward pass did not keep.
    assert checkpointed_runs["unet"] == 2 * plain_runs["unet"] > 0
    assert checkpointed_runs["encoder"] == 2 * plain_runs["encoder"] > 0


def test_checkpointing_trains_like_the_golden_run(sd_folder, tmp_path):
    out = tmp_path / "run"
    assert run_cli("train", "--model", sd_folder, "--out", out, *GOLDEN_ARGS, "--checkpointing").exit_code == 0
    assert _losses(out) == pytest.approx(GOLDEN_LOSSES, rel=1e-5)


def test_compile_is_regional_and_outputs_stay_plain(sd_folder, tmp_path, monkeypatch):
    """Through dynamo with its `eager` backend: the real graph capture of every call path, without
    inductor's code generation (minutes on a CPU; see the test below)."""
    compiled = []
    real_compile = trainer.compile_models

    def recording_compile(te, unet):
        compiled.append((te, unet))
        real_compile(te, unet)

    monkeypatch.setattr(torch, "compile", functools.partial(torch.compile, backend="eager"))
    monkeypatch.setattr(trainer, "compile_models", recording_compile)
    out = tmp_path / "run"
    result = run_cli("train", "--model", sd_folder, "--out", out, *GOLDEN_ARGS, "--compile")
    assert result.exit_code == 0, result.output
    (te, unet), = compiled
    # The repeated blocks, each on its own: the UNet's transformer blocks and the encoder's layers,
    # not the models around them.
    regions = {name for name, m in [*unet.named_modules(), *te.named_modules()] if m._compiled_call_impl is not None}
    blocks = {name for name, m in unet.named_modules() if type(m).__name__ == "BasicTransformerBlock"}
    layers = {name for name, m in te.named_modules() if type(m).__name__ == "CLIPEncoderLayer"}
    assert len(blocks) == 4 and len(layers) == 12
    assert regions == blocks | layers
    assert _losses(out) == pytest.approx(GOLDEN_LOSSES, rel=1e-5)
    base = load_file(str(sd_folder / "text_encoder" / "model.safetensors"))
    for folder in ("text_encoder", "checkpoints/step-000002/text_encoder"):
        saved = load_file(str(out / folder / "model.safetensors"))
        assert set(saved) == set(base) - {"text_model.embeddings.position_ids"}, folder


@pytest.mark.skipif(
    os.environ.get("ADVUNLEARN_SLOW_TESTS") != "1",
    reason="torch.compile's inductor backend spends about 3 minutes compiling the tiny model's run on a "
    "2-core CPU; set ADVUNLEARN_SLOW_TESTS=1 to run it (GPU_CHECK_STEPS=compile benchmarks/gpu_check.sh measures the compiled engine on a GPU)",
)
def test_compile_with_inductor_trains(sd_folder, tmp_path):
    out = tmp_path / "run"
    assert run_cli("train", "--model", sd_folder, "--out", out, *GOLDEN_ARGS, "--compile", "--iterations", 2).exit_code == 0
    # inductor fuses and reorders arithmetic: measured 4.5e-4 relative off the golden losses
    assert _losses(out) == pytest.approx(GOLDEN_LOSSES[:2], rel=1e-3)


def test_compile_is_refused_on_the_reference_engine(sd_folder, tmp_path):
    result = run_cli("train", "--model", sd_folder, "--out", tmp_path / "run", *GOLDEN_ARGS, "--compile",
                     "--engine", "reference")
    assert result.exit_code == 2 and "--compile applies to the fast engine" in result.output


def _recording_setups(monkeypatch, record):
    """Calls `record(setup)` on every Setup train() builds."""
    real = trainer.build_setup

    def recording(*args, **kwargs):
        s = real(*args, **kwargs)
        record(s)
        return s

    monkeypatch.setattr(trainer, "build_setup", recording)


def test_channels_last_trains_like_the_golden_run(sd_folder, tmp_path, monkeypatch):
    layouts = []
    _recording_setups(monkeypatch, lambda s: layouts.append(
        [m.weight.is_contiguous(memory_format=torch.channels_last) for m in s.unet.modules()
         if isinstance(m, torch.nn.Conv2d) and m.kernel_size != (1, 1)]))  # a 1x1 kernel is both layouts at once
    for flags, channels_last in (([], False), (["--channels-last"], True)):
        out = tmp_path / str(channels_last)
        result = run_cli("train", "--model", sd_folder, "--out", out, *GOLDEN_ARGS, *flags)
        assert result.exit_code == 0, result.output
        assert set(layouts.pop()) == {channels_last}  # every convolution of the UNet, or none (CPU default)
        assert json.loads((out / "run.json").read_text())["config"]["channels_last"] is channels_last
        # Other convolution kernels for the other layout: the same losses up to float rounding.
        assert _losses(out) == pytest.approx(GOLDEN_LOSSES, rel=1e-4)


def test_tf32_covers_the_encoders_passes_and_is_restored(sd_folder, tmp_path, monkeypatch):
    """TF32 is a CUDA setting: on a CPU it changes nothing, but whether it is on while the trained
    encoder's matrix products run, forward and backward, is observable."""
    seen = {"forward": set(), "backward": set()}

    def watch_encoder(s):
        def forward_hook(module, args, output):
            seen["forward"].add(torch.backends.cuda.matmul.allow_tf32)
            if output.requires_grad:
                output.register_hook(lambda grad: seen["backward"].add(torch.backends.cuda.matmul.allow_tf32))

        text_transformer(s.te).encoder.layers[-1].mlp.fc1.register_forward_hook(forward_hook)

    _recording_setups(monkeypatch, watch_encoder)
    assert torch.backends.cuda.matmul.allow_tf32 is False
    for flags, tf32 in (([], False), (["--tf32"], True)):
        out = tmp_path / str(tf32)
        result = run_cli("train", "--model", sd_folder, "--out", out, *GOLDEN_ARGS, *flags)
        assert result.exit_code == 0, result.output
        assert seen == {"forward": {tf32}, "backward": {tf32}}, flags
        assert torch.backends.cuda.matmul.allow_tf32 is False  # not left on for the rest of the process
        assert json.loads((out / "run.json").read_text())["config"]["tf32"] is tf32
        assert _losses(out) == pytest.approx(GOLDEN_LOSSES, rel=1e-6)
        seen = {"forward": set(), "backward": set()}


def test_layout_and_precision_default_to_on_for_the_fast_engine_on_cuda():
    cuda, cpu = torch.device("cuda"), torch.device("cpu")  # a device object needs no GPU
    fast = TrainConfig(concepts=["x"]).validate()
    assert resolve_layout_and_precision(fast, cuda) == {"channels_last": True, "tf32": True}
    assert resolve_layout_and_precision(fast, cpu) == {"channels_last": False, "tf32": False}
    reference = TrainConfig(concepts=["x"], engine="reference").validate()
    assert resolve_layout_and_precision(reference, cuda) == {"channels_last": False, "tf32": False}
    chosen = TrainConfig(concepts=["x"], channels_last=False, tf32=True).validate()
    assert resolve_layout_and_precision(chosen, cuda) == {"channels_last": False, "tf32": True}
    assert resolve_layout_and_precision(chosen, cpu) == {"channels_last": False, "tf32": True}


@pytest.mark.parametrize("flag", ["--channels-last", "--tf32"])
def test_layout_and_precision_are_refused_on_the_reference_engine(sd_folder, tmp_path, flag):
    result = run_cli("train", "--model", sd_folder, "--out", tmp_path / "run", *GOLDEN_ARGS, flag, "--engine", "reference")
    assert result.exit_code == 2 and f"{flag} applies to the fast engine" in result.output
    assert not (tmp_path / "run").exists()
