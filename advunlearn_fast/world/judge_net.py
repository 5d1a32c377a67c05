"""The judge's tiny CNN: shape and texture from a 16x16 render (~20k parameters).

Global average pooling after a receptive field wider than any shape keeps the
prediction independent of where the shape sits.
"""

from __future__ import annotations

import torch
from torch import nn

from advunlearn_fast.world.render import SHAPES, TEXTURES


class JudgeNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(3, 16, 3, padding=1),
            nn.ReLU(),
            nn.Conv2d(16, 24, 3, padding=1),
            nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Conv2d(24, 32, 3, padding=1),
            nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Conv2d(32, 32, 3, padding=1),
            nn.ReLU(),
            nn.AdaptiveAvgPool2d(1),
            nn.Flatten(),
        )
        self.shape_head = nn.Linear(32, len(SHAPES))
        self.texture_head = nn.Linear(32, len(TEXTURES))

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Logits (shape, texture) for images [N, 3, 16, 16] in [-1, 1]."""
        h = self.features(images)
        return self.shape_head(h), self.texture_head(h)
