"""ResNet-50 for the `imagenet:` judge, loading torchvision's ResNet-50 state dicts.

Defined here rather than imported from torchvision: PyPI's torchvision wheels are built
against CUDA torch and do not import beside a CPU-only torch, which is what tests and CPU
users run. The layout is torchvision's (the stride of each stage sits on the bottleneck's
3x3 convolution, "ResNet v1.5"), with its parameter names, so `resnet50-*.pth` files from
torchvision load key for key.
"""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from advunlearn_fast.models.statedicts import load_weights, read_state_dict

STAGES = ((64, 3, 1), (128, 4, 2), (256, 6, 2), (512, 3, 2))  # (width, blocks, stride)
EXPANSION = 4
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


class Bottleneck(nn.Module):
    def __init__(self, in_channels: int, width: int, stride: int):
        super().__init__()
        out_channels = width * EXPANSION
        self.conv1 = nn.Conv2d(in_channels, width, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        self.conv2 = nn.Conv2d(width, width, 3, stride=stride, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(width)
        self.conv3 = nn.Conv2d(width, out_channels, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(out_channels)
        self.downsample = None
        if stride != 1 or in_channels != out_channels:
            self.downsample = nn.Sequential(
                nn.Conv2d(in_channels, out_channels, 1, stride=stride, bias=False), nn.BatchNorm2d(out_channels)
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = F.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        return F.relu(out + (x if self.downsample is None else self.downsample(x)))


class ResNet50(nn.Module):
    def __init__(self, classes: int = 1000):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 64, 7, stride=2, padding=3, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        channels = 64
        for index, (width, blocks, stride) in enumerate(STAGES, start=1):
            layers = []
            for block in range(blocks):
                layers.append(Bottleneck(channels, width, stride if block == 0 else 1))
                channels = width * EXPANSION
            setattr(self, f"layer{index}", nn.Sequential(*layers))
        self.fc = nn.Linear(channels, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.max_pool2d(F.relu(self.bn1(self.conv1(x))), 3, stride=2, padding=1)
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        return self.fc(x.mean(dim=(2, 3)))


def imagenet_preprocess(images: torch.Tensor) -> torch.Tensor:
    """Images [N, 3, H, W] in [-1, 1] -> the standard ImageNet evaluation input: shorter side
    resized to 256 (bilinear, antialiased), centre crop 224, normalised by ImageNet statistics."""
    x = (images.float() + 1) / 2
    height, width = x.shape[-2:]
    # torchvision's Resize(256) and CenterCrop(224) arithmetic: the longer side is truncated,
    # the crop offset rounded.
    size = (256, int(256 * width / height)) if height <= width else (int(256 * height / width), 256)
    x = F.interpolate(x, size=size, mode="bilinear", align_corners=False, antialias=True)
    top, left = int(round((size[0] - 224) / 2)), int(round((size[1] - 224) / 2))
    x = x[..., top : top + 224, left : left + 224]
    mean = torch.tensor(IMAGENET_MEAN, device=x.device)[:, None, None]
    std = torch.tensor(IMAGENET_STD, device=x.device)[:, None, None]
    return (x - mean) / std


def load_resnet50(path: str | Path, what: str) -> ResNet50:
    """A ResNet-50 in eval mode from a torchvision state-dict file (.pth or .safetensors)."""
    model = ResNet50()
    load_weights(model, read_state_dict(path, what), what, "a torchvision ResNet-50 state dict")
    return model.eval().requires_grad_(False)
