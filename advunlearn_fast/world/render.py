"""Seeded renders of the concept world: one coloured, textured shape on a gray background.

Everything is vectorised over the batch so that a pool of tens of thousands of
images takes seconds. Shapes are drawn at twice the resolution and averaged down,
which gives anti-aliased edges a diffusion model can reproduce.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

IMAGE_SIZE = 16
_SUPERSAMPLE = 2

# Hues at least ~50 degrees apart, so that hue alone names the colour even on
# imperfect generated images.
COLOURS: dict[str, tuple[float, float, float]] = {
    "red": (0.90, 0.12, 0.12),
    "yellow": (0.95, 0.85, 0.10),
    "green": (0.12, 0.75, 0.20),
    "blue": (0.15, 0.30, 0.92),
    "purple": (0.62, 0.15, 0.82),
}
SHAPES = ("circle", "square", "triangle", "cross")
TEXTURES = ("solid", "striped", "dotted")

# Pattern pixels are a darker shade of the object colour: the hue (what the
# colour judge reads) is unchanged, only the brightness alternates.
_SHADE = 0.45


@dataclass(frozen=True)
class Scene:
    """Attribute indices of a batch of renders (into COLOURS, SHAPES, TEXTURES)."""

    colour: torch.Tensor
    shape: torch.Tensor
    texture: torch.Tensor

    def __len__(self) -> int:
        return self.colour.shape[0]


def random_scenes(n: int, generator: torch.Generator) -> Scene:
    return Scene(
        colour=torch.randint(len(COLOURS), (n,), generator=generator),
        shape=torch.randint(len(SHAPES), (n,), generator=generator),
        texture=torch.randint(len(TEXTURES), (n,), generator=generator),
    )


def _shape_masks(shape: torch.Tensor, dx: torch.Tensor, dy: torch.Tensor, r: torch.Tensor) -> torch.Tensor:
    # Each shape is scaled so that all four cover a similar area at the same r,
    # leaving size useless as a shape cue.
    circle = dx**2 + dy**2 <= r**2
    half = 0.88 * r
    square = (dx.abs() <= half) & (dy.abs() <= half)
    top, bottom = -1.05 * r, 0.85 * r
    triangle = (dy >= top) & (dy <= bottom) & (dx.abs() <= 1.1 * r * (dy - top) / (bottom - top))
    arm = 0.36 * r
    cross = ((dx.abs() <= arm) & (dy.abs() <= 1.05 * r)) | ((dy.abs() <= arm) & (dx.abs() <= 1.05 * r))
    masks = torch.stack([circle, square, triangle, cross], dim=1)
    return masks[torch.arange(shape.shape[0]), shape]


def _pattern(texture: torch.Tensor, x: torch.Tensor, y: torch.Tensor, phase: torch.Tensor) -> torch.Tensor:
    """Where the darker shade goes, in output-pixel units: bands or a grid of dots."""
    stripes = torch.remainder(y + phase[:, 0], 4.0) < 2.0
    dots = (torch.remainder(x + phase[:, 0], 4.0) - 2.0) ** 2 + (torch.remainder(y + phase[:, 1], 4.0) - 2.0) ** 2 <= 1.1
    solid = torch.zeros_like(stripes)
    patterns = torch.stack([solid, stripes, dots], dim=1)
    return patterns[torch.arange(texture.shape[0]), texture]


def render(scene: Scene, generator: torch.Generator) -> torch.Tensor:
    """Images [N, 3, 16, 16] in [-1, 1]; position, size, background and colour are jittered."""
    n = len(scene)
    hi = IMAGE_SIZE * _SUPERSAMPLE
    centres = (torch.arange(hi, dtype=torch.float32) + 0.5) / _SUPERSAMPLE
    y, x = torch.meshgrid(centres, centres, indexing="ij")
    x, y = x.expand(n, hi, hi), y.expand(n, hi, hi)

    def uniform(low: float, high: float, *shape: int) -> torch.Tensor:
        return low + (high - low) * torch.rand(n, *shape, generator=generator)

    r = uniform(4.2, 6.2)
    margin = r + 1.0
    cx = margin + (IMAGE_SIZE - 2 * margin) * torch.rand(n, generator=generator)
    cy = margin + (IMAGE_SIZE - 2 * margin) * torch.rand(n, generator=generator)
    phase = uniform(0.0, 4.0, 2)
    background = uniform(0.35, 0.65)
    palette = torch.tensor(list(COLOURS.values()))
    colour = (palette[scene.colour] + uniform(-0.05, 0.05, 3)).clamp(0.0, 1.0)

    dx = x - cx[:, None, None]
    dy = y - cy[:, None, None]
    inside = _shape_masks(scene.shape, dx, dy, r[:, None, None])
    dark = _pattern(scene.texture, x, y, phase[:, :, None, None])
    fill = torch.where(dark[:, None], _SHADE * colour[:, :, None, None], colour[:, :, None, None])
    image = torch.where(inside[:, None], fill, background[:, None, None, None].expand(n, 3, hi, hi))
    image = F.avg_pool2d(image, _SUPERSAMPLE)
    return image * 2.0 - 1.0


def render_batch(n: int, seed: int) -> tuple[Scene, torch.Tensor]:
    """`n` random scenes and their renders, fully determined by `seed`."""
    generator = torch.Generator().manual_seed(seed)
    scene = random_scenes(n, generator)
    return scene, render(scene, generator)
