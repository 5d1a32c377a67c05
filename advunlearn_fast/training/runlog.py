"""The per-iteration log (log.jsonl) and its loss plot."""

from __future__ import annotations

import json
from pathlib import Path


class IterationLog:
    """Appends one JSON line per iteration; on resume, drops lines past the checkpoint."""

    def __init__(self, path: Path, keep_until_step: int | None = None):
        self.path = Path(path)
        kept = []
        if keep_until_step is not None and self.path.exists():
            for line in self.path.read_text(encoding="utf-8").splitlines():
                try:
                    record = json.loads(line)
                except ValueError:
                    continue  # a line cut off by the interruption
                if record.get("step", 0) <= keep_until_step:
                    kept.append(line)
        self.path.write_text("".join(line + "\n" for line in kept), encoding="utf-8")

    def append(self, record: dict) -> None:
        with self.path.open("a", encoding="utf-8") as f:
            f.write(json.dumps(record) + "\n")

    def records(self) -> list[dict]:
        return [json.loads(line) for line in self.path.read_text(encoding="utf-8").splitlines() if line]


def plot_losses(records: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4))
    steps = [r["step"] for r in records]
    for key, label in (("loss", "total"), ("unlearn_loss", "unlearn"), ("retain_loss", "retain")):
        ax.plot(steps, [r[key] for r in records], label=label, linewidth=1)
    attacked = [(r["step"], r["attack_loss_end"]) for r in records if r.get("attack_loss_end") is not None]
    if attacked:
        ax.plot(*zip(*attacked), label="attack (end of round)", linewidth=1, alpha=0.7)
    ax.set_xlabel("iteration")
    ax.set_ylabel("MSE")
    ax.set_yscale("log")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
