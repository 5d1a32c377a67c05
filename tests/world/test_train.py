import torch

from advunlearn_fast.world.train import WorldTrainConfig, train_world


def _tiny(out, steps):
    return WorldTrainConfig(
        out=out, steps=steps, batch_size=4, eval_every=100, eval_samples=2, checkpoint_every=2, warmup=2, seed=3
    )


def test_training_resumes_bit_for_bit(tmp_path):
    straight = train_world(_tiny(tmp_path / "straight", 4))
    train_world(_tiny(tmp_path / "resumed", 2))
    resumed = train_world(_tiny(tmp_path / "resumed", 4), resume=True)
    assert straight["steps"] == resumed["steps"] == 4
    a = torch.load(tmp_path / "straight" / "checkpoint.pt", weights_only=False)
    b = torch.load(tmp_path / "resumed" / "checkpoint.pt", weights_only=False)
    for part in ("unet", "text_encoder", "ema_unet"):
        for key in a[part]:
            assert torch.equal(a[part][key], b[part][key]), f"{part}.{key}"
    assert (tmp_path / "resumed" / "best" / "world.json").is_file()
