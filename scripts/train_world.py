"""Train the concept world's base model; optionally ship the best one into the package.

    python scripts/train_world.py --out runs/world --steps 3000
    python scripts/train_world.py --out runs/world --steps 3000 --resume
    python scripts/train_world.py --out runs/world --ship   # copy runs/world/best into the package
"""

import argparse
import dataclasses
import shutil
import sys
from pathlib import Path

import torch

# Runs from a checkout without installing the package.
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from advunlearn_fast.world import WORLD_MODEL_DIR  # noqa: E402
from advunlearn_fast.world.train import WorldTrainConfig, train_world  # noqa: E402

SHIPPED = ("tokenizer", "text_encoder", "unet", "scheduler", "model_index.json", "world.json")


def ship(best: Path) -> None:
    for name in SHIPPED:
        source, target = best / name, WORLD_MODEL_DIR / name
        if target.is_dir():
            shutil.rmtree(target)
        if source.is_dir():
            shutil.copytree(source, target)
        else:
            shutil.copy2(source, target)
    print(f"shipped {best} -> {WORLD_MODEL_DIR}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    for field in dataclasses.fields(WorldTrainConfig):
        default = field.default
        kind = Path if field.name == "out" else (float if field.name == "max_minutes" else type(default))
        parser.add_argument(f"--{field.name.replace('_', '-')}", type=kind, default=default)
    parser.add_argument("--resume", action="store_true", help="continue from OUT/checkpoint.pt")
    parser.add_argument("--ship", action="store_true", help="copy OUT/best into the package instead of training")
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    if args.ship:
        ship(args.out / "best")
        return
    torch.set_num_threads(args.threads)
    values = {f.name: getattr(args, f.name) for f in dataclasses.fields(WorldTrainConfig)}
    try:
        config = WorldTrainConfig(**values)
    except ValueError as error:
        parser.error(str(error))
    summary = train_world(config, resume=args.resume)
    print(f"best: {summary['best']}  ({summary['steps']} steps, {summary['seconds']:.0f} s)")


if __name__ == "__main__":
    main()
