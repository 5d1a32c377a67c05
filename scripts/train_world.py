"""Train the concept world's base model; optionally ship the best one into the package.

    python scripts/train_world.py --out runs/world --steps 2600
    python scripts/train_world.py --out runs/world --steps 2600 --resume   # after an interruption
    python scripts/train_world.py --out runs/world --ship   # copy runs/world/best into the package

The shipped weights (world v2: every value has aliases) are the best EMA checkpoint of seed 0
with the defaults, the last one of a run made as `--steps 4000 --max-minutes 90`, which stopped at
step 3917; with one thread training is bit for bit, so `--steps 3917` gives the same weights.
"""

import argparse
import dataclasses
import json
import shutil
import sys
from pathlib import Path

import torch

# Runs from a checkout without installing the package.
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from advunlearn_fast.world import WORLD_MODEL_DIR, load_world_model  # noqa: E402
from advunlearn_fast.world.evaluate import measure_heldout  # noqa: E402
from advunlearn_fast.world.io import make_readable  # noqa: E402
from advunlearn_fast.world.train import WorldTrainConfig, train_world  # noqa: E402

SHIPPED = ("tokenizer", "text_encoder", "unet", "scheduler", "model_index.json", "world.json")
# Fresh seeds, none of them the training run's --eval-seed, and every
# colour x shape x texture combination three times per seed.
SHIP_EVAL_SAMPLES = 180
SHIP_EVAL_SEEDS = (0, 1)


def ship(best: Path) -> None:
    """Copy the best checkpoint into the package and measure it on fresh held-out captions."""
    for name in SHIPPED:
        source, target = best / name, WORLD_MODEL_DIR / name
        if target.is_dir():
            shutil.rmtree(target)
        if source.is_dir():
            shutil.copytree(source, target)
        else:
            shutil.copy2(source, target)
    meta_path = WORLD_MODEL_DIR / "world.json"
    meta = json.loads(meta_path.read_text())
    model = load_world_model()
    meta["heldout_accuracy"] = measure_heldout(model, SHIP_EVAL_SAMPLES, SHIP_EVAL_SEEDS)
    # The same captions with every value named by one of its aliases: the routes around an erasure.
    meta["heldout_accuracy_aliased"] = measure_heldout(model, SHIP_EVAL_SAMPLES, SHIP_EVAL_SEEDS, aliased=True)
    meta_path.write_text(json.dumps(meta, indent=2) + "\n")
    make_readable(WORLD_MODEL_DIR)
    print(f"shipped {best} -> {WORLD_MODEL_DIR}: held-out {meta['heldout_accuracy']}, "
          f"aliased {meta['heldout_accuracy_aliased']}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    for field in dataclasses.fields(WorldTrainConfig):
        default = field.default
        kind = Path if field.name == "out" else (float if field.name == "max_minutes" else type(default))
        parser.add_argument(f"--{field.name.replace('_', '-')}", type=kind, default=default)
    parser.add_argument("--resume", action="store_true", help="continue from OUT/checkpoint.pt")
    parser.add_argument("--ship", action="store_true", help="copy OUT/best into the package instead of training")
    # One thread by default: the shipped weights were trained with one (float
    # reductions depend on the thread count), and on a shared, loaded machine a
    # second intra-op thread slows this small model down (benchmarks/README.md).
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    if args.ship:
        ship(args.out / "best")
        return
    values = {f.name: getattr(args, f.name) for f in dataclasses.fields(WorldTrainConfig)}
    try:
        config = WorldTrainConfig(**values)
    except ValueError as error:
        parser.error(str(error))
    summary = train_world(config, resume=args.resume)
    print(f"best: {summary['best']}  ({summary['steps']} steps, {summary['seconds']:.0f} s)")


if __name__ == "__main__":
    main()
