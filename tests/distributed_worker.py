"""What the multi-process tests run under torchrun where the CLI cannot show what they check.

    torchrun ... tests/distributed_worker.py train CONFIG.json WEIGHTS_DIR
        `advunlearn_fast.training.trainer.train` with the TrainConfig fields in CONFIG.json; then
        every rank writes the text encoder it holds to WEIGHTS_DIR/rank-R.safetensors.
    torchrun ... tests/distributed_worker.py shared FOLDER
        check_shared_folder, with rank 0 given FOLDER and the other ranks a folder of their own:
        prints the one line every rank gets, exits 2.
"""

import json
import sys
from pathlib import Path

import torch
from safetensors.torch import save_file

from advunlearn_fast import distributed
from advunlearn_fast.errors import UserError
from advunlearn_fast.outputs import text_encoder_state


def train(config_file: str, weights_dir: str) -> None:
    import advunlearn_fast.training.trainer as trainer
    from advunlearn_fast.training.config import TrainConfig

    setups = []
    real_build_setup = trainer.build_setup

    def keep_setup(*args, **kwargs):
        setups.append(real_build_setup(*args, **kwargs))
        return setups[-1]

    trainer.build_setup = keep_setup
    torch.set_num_threads(1)
    cfg = TrainConfig(**json.loads(Path(config_file).read_text())).validate()
    trainer.train(cfg, progress=False)
    folder = Path(weights_dir)
    folder.mkdir(parents=True, exist_ok=True)
    save_file(text_encoder_state(setups[0].te), str(folder / f"rank-{distributed.rank()}.safetensors"))


def shared(folder: str) -> None:
    distributed.start(torch.device("cpu"))
    mine = Path(folder) if distributed.is_main() else Path(f"{folder}-rank-{distributed.rank()}")
    try:
        distributed.check_shared_folder(mine, "--out")
    except UserError as err:
        # One write, newline included: with PYTHONUNBUFFERED print writes the line and its end
        # separately, and the other rank's line could land between them.
        sys.stdout.write(f"rank {distributed.rank()}: {err}\n")
        sys.stdout.flush()
        sys.exit(2)


if __name__ == "__main__":
    {"train": train, "shared": shared}[sys.argv[1]](*sys.argv[2:])
