"""Train the concept world's shape/texture CNN and write it into the package."""

import argparse
import sys
from pathlib import Path

import torch

# Runs from a checkout without installing the package.
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from advunlearn_fast.world.io import make_readable  # noqa: E402
from advunlearn_fast.world.judge import JUDGE_WEIGHTS  # noqa: E402
from advunlearn_fast.world.judge_train import train_judge  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--out", type=Path, default=JUDGE_WEIGHTS)
    parser.add_argument("--steps", type=int, default=1500)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    train_judge(args.out, steps=args.steps, seed=args.seed)
    make_readable(args.out.parent)


if __name__ == "__main__":
    main()
