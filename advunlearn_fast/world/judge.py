"""The world's judge: which colour, shape and texture an image shows.

Colour is read analytically from hue, which needs no training and cannot be
fooled by shape; shape and texture come from a tiny shipped CNN. Specs such as
`world:colour=red` name one attribute value; `judge` answers it per image.
"""

from __future__ import annotations

import functools
import math
from pathlib import Path

import torch
from safetensors.torch import load_file

from advunlearn_fast.errors import UserError
from advunlearn_fast.world.judge_net import JudgeNet
from advunlearn_fast.world.render import COLOURS, SHAPES, TEXTURES

ATTRIBUTES: dict[str, tuple[str, ...]] = {"colour": tuple(COLOURS), "shape": SHAPES, "texture": TEXTURES}
_ALIASES = {"color": "colour"}
NO_COLOUR = "none"

JUDGE_WEIGHTS = Path(__file__).parent / "weights" / "judge" / "model.safetensors"

# Gray background and pattern shading have little chroma; the object has plenty.
_MIN_CHROMA = 0.2
_MIN_COLOURED_PIXELS = 3


class JudgeSpecError(UserError, ValueError):
    """A `--judge world:<attribute>=<value>` spec that names no attribute value of the world."""


def parse_judge_spec(spec: str) -> tuple[str, str]:
    """`"world:colour=red"` -> `("colour", "red")`; `color` is accepted for `colour`."""
    prefix, sep, rest = spec.partition(":")
    if not sep or prefix.strip().lower() != "world":
        raise JudgeSpecError(f"judge spec {spec!r}: expected 'world:<attribute>=<value>', e.g. 'world:colour=red'")
    attribute, sep, value = rest.partition("=")
    attribute = attribute.strip().lower()
    attribute = _ALIASES.get(attribute, attribute)
    value = value.strip().lower()
    if attribute not in ATTRIBUTES:
        raise JudgeSpecError(
            f"judge spec {spec!r}: unknown attribute {attribute!r}; choose from {', '.join(ATTRIBUTES)}"
        )
    if not sep or value not in ATTRIBUTES[attribute]:
        raise JudgeSpecError(
            f"judge spec {spec!r}: unknown {attribute} {value!r}; choose from {', '.join(ATTRIBUTES[attribute])}"
        )
    return attribute, value


def _hue(rgb: torch.Tensor) -> torch.Tensor:
    """Hue angle (radians) of RGB in [0, 1] with channels on dim 1."""
    r, g, b = rgb.unbind(dim=1)
    return torch.atan2(math.sqrt(3.0) * (g - b), 2.0 * r - g - b)


def colour_labels(images: torch.Tensor) -> list[str]:
    """Colour whose hue most chroma-weighted object pixels are nearest to; 'none' if no object."""
    rgb = ((images.float() + 1.0) / 2.0).clamp(0.0, 1.0)
    chroma = rgb.amax(dim=1) - rgb.amin(dim=1)
    palette = torch.tensor(list(COLOURS.values()))[:, :, None, None]
    palette_hue = _hue(palette).flatten()
    distance = torch.remainder(_hue(rgb)[:, None] - palette_hue[None, :, None, None] + math.pi, 2 * math.pi) - math.pi
    nearest = distance.abs().argmin(dim=1)
    coloured = chroma > _MIN_CHROMA
    votes = torch.stack([((nearest == k) & coloured).float().mul(chroma).sum(dim=(1, 2)) for k in range(len(COLOURS))], 1)
    names = list(COLOURS)
    return [
        names[int(v.argmax())] if int(n) >= _MIN_COLOURED_PIXELS else NO_COLOUR
        for v, n in zip(votes, coloured.sum(dim=(1, 2)))
    ]


class WorldJudge:
    """Per-attribute labels for images [N, 3, 16, 16] in [-1, 1]."""

    def __init__(self, weights: str | Path = JUDGE_WEIGHTS) -> None:
        self.net = JudgeNet()
        self.net.load_state_dict(load_file(str(weights)))
        self.net.eval()

    @torch.no_grad()
    def predict(self, images: torch.Tensor) -> dict[str, list[str]]:
        images = images.detach().float().cpu()
        shape_logits, texture_logits = self.net(images.clamp(-1.0, 1.0))
        return {
            "colour": colour_labels(images),
            "shape": [SHAPES[i] for i in shape_logits.argmax(dim=1).tolist()],
            "texture": [TEXTURES[i] for i in texture_logits.argmax(dim=1).tolist()],
        }

    def __call__(self, images: torch.Tensor, attribute: str, value: str) -> list[bool]:
        return [label == value for label in self.predict(images)[attribute]]


@functools.lru_cache(maxsize=1)
def default_judge() -> WorldJudge:
    return WorldJudge()


def judge(images: torch.Tensor, attribute: str, value: str) -> list[bool]:
    """Whether each image shows `value` for `attribute` (as parsed by `parse_judge_spec`)."""
    if attribute not in ATTRIBUTES or value not in ATTRIBUTES[attribute]:
        raise JudgeSpecError(f"judge: unknown attribute value {attribute}={value}")
    return default_judge()(images, attribute, value)
