"""The Inception-v3 network of FID, loading the standard FID weights from a local file.

FID is defined over the 2048-d pool features of the TensorFlow Inception graph of
2015-12-05. Its PyTorch conversion, `pt_inception-2015-12-05-6726825d.pth` (the file that
pytorch-fid and torch-fidelity fetch and cache), is a plain state dict; this module defines
the network it belongs to, so that FID needs neither a download nor torchvision (whose PyPI
wheels do not import beside a CPU-only torch). Where the TF graph differs from the Inception-v3
of the paper, this follows the graph:
- pooling branches average without counting padding, and the last block (Mixed_7c) max-pools;
- BatchNorm epsilon 1e-3;
- images are resized to 299x299 by TensorFlow 1's bilinear resize (source coordinate
  = target coordinate * in / out, no half-pixel offset), not by torch's `interpolate`.
Inputs in [0, 255] are scaled to [-1, 1] as T2IBenchmark scales them (`to_inception_range`):
AdvUnlearn's FIDs come from it. The TF graph itself, and torch-fidelity, scale (x - 128) / 128.
"""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from advunlearn_fast.models.statedicts import load_weights, read_state_dict

INPUT_SIZE = 299
FEATURES = 2048
WEIGHTS_FILE = "pt_inception-2015-12-05-6726825d.pth"


class Conv(nn.Module):
    """Convolution without bias, BatchNorm, ReLU (the graph's conv unit)."""

    def __init__(self, in_channels: int, out_channels: int, kernel, stride=1, padding=0):
        super().__init__()
        self.conv = nn.Conv2d(in_channels, out_channels, kernel, stride=stride, padding=padding, bias=False)
        self.bn = nn.BatchNorm2d(out_channels, eps=1e-3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(self.bn(self.conv(x)))


def _avg_pool(x: torch.Tensor) -> torch.Tensor:
    return F.avg_pool2d(x, 3, stride=1, padding=1, count_include_pad=False)


class BlockA(nn.Module):  # Mixed_5b..5d: 35x35
    def __init__(self, in_channels: int, pool_features: int):
        super().__init__()
        self.branch1x1 = Conv(in_channels, 64, 1)
        self.branch5x5_1 = Conv(in_channels, 48, 1)
        self.branch5x5_2 = Conv(48, 64, 5, padding=2)
        self.branch3x3dbl_1 = Conv(in_channels, 64, 1)
        self.branch3x3dbl_2 = Conv(64, 96, 3, padding=1)
        self.branch3x3dbl_3 = Conv(96, 96, 3, padding=1)
        self.branch_pool = Conv(in_channels, pool_features, 1)

    def forward(self, x):
        return torch.cat([
            self.branch1x1(x),
            self.branch5x5_2(self.branch5x5_1(x)),
            self.branch3x3dbl_3(self.branch3x3dbl_2(self.branch3x3dbl_1(x))),
            self.branch_pool(_avg_pool(x)),
        ], 1)


class BlockB(nn.Module):  # Mixed_6a: 35x35 -> 17x17
    def __init__(self, in_channels: int):
        super().__init__()
        self.branch3x3 = Conv(in_channels, 384, 3, stride=2)
        self.branch3x3dbl_1 = Conv(in_channels, 64, 1)
        self.branch3x3dbl_2 = Conv(64, 96, 3, padding=1)
        self.branch3x3dbl_3 = Conv(96, 96, 3, stride=2)

    def forward(self, x):
        return torch.cat([
            self.branch3x3(x),
            self.branch3x3dbl_3(self.branch3x3dbl_2(self.branch3x3dbl_1(x))),
            F.max_pool2d(x, 3, stride=2),
        ], 1)


class BlockC(nn.Module):  # Mixed_6b..6e: 17x17, factorised 7x7
    def __init__(self, in_channels: int, channels_7x7: int):
        super().__init__()
        c = channels_7x7
        self.branch1x1 = Conv(in_channels, 192, 1)
        self.branch7x7_1 = Conv(in_channels, c, 1)
        self.branch7x7_2 = Conv(c, c, (1, 7), padding=(0, 3))
        self.branch7x7_3 = Conv(c, 192, (7, 1), padding=(3, 0))
        self.branch7x7dbl_1 = Conv(in_channels, c, 1)
        self.branch7x7dbl_2 = Conv(c, c, (7, 1), padding=(3, 0))
        self.branch7x7dbl_3 = Conv(c, c, (1, 7), padding=(0, 3))
        self.branch7x7dbl_4 = Conv(c, c, (7, 1), padding=(3, 0))
        self.branch7x7dbl_5 = Conv(c, 192, (1, 7), padding=(0, 3))
        self.branch_pool = Conv(in_channels, 192, 1)

    def forward(self, x):
        double = x
        for i in range(1, 6):
            double = getattr(self, f"branch7x7dbl_{i}")(double)
        return torch.cat([
            self.branch1x1(x),
            self.branch7x7_3(self.branch7x7_2(self.branch7x7_1(x))),
            double,
            self.branch_pool(_avg_pool(x)),
        ], 1)


class BlockD(nn.Module):  # Mixed_7a: 17x17 -> 8x8
    def __init__(self, in_channels: int):
        super().__init__()
        self.branch3x3_1 = Conv(in_channels, 192, 1)
        self.branch3x3_2 = Conv(192, 320, 3, stride=2)
        self.branch7x7x3_1 = Conv(in_channels, 192, 1)
        self.branch7x7x3_2 = Conv(192, 192, (1, 7), padding=(0, 3))
        self.branch7x7x3_3 = Conv(192, 192, (7, 1), padding=(3, 0))
        self.branch7x7x3_4 = Conv(192, 192, 3, stride=2)

    def forward(self, x):
        seven = self.branch7x7x3_4(self.branch7x7x3_3(self.branch7x7x3_2(self.branch7x7x3_1(x))))
        return torch.cat([self.branch3x3_2(self.branch3x3_1(x)), seven, F.max_pool2d(x, 3, stride=2)], 1)


class BlockE(nn.Module):  # Mixed_7b, 7c: 8x8, split 3x3
    def __init__(self, in_channels: int, max_pool: bool):
        super().__init__()
        self.max_pool = max_pool
        self.branch1x1 = Conv(in_channels, 320, 1)
        self.branch3x3_1 = Conv(in_channels, 384, 1)
        self.branch3x3_2a = Conv(384, 384, (1, 3), padding=(0, 1))
        self.branch3x3_2b = Conv(384, 384, (3, 1), padding=(1, 0))
        self.branch3x3dbl_1 = Conv(in_channels, 448, 1)
        self.branch3x3dbl_2 = Conv(448, 384, 3, padding=1)
        self.branch3x3dbl_3a = Conv(384, 384, (1, 3), padding=(0, 1))
        self.branch3x3dbl_3b = Conv(384, 384, (3, 1), padding=(1, 0))
        self.branch_pool = Conv(in_channels, 192, 1)

    def forward(self, x):
        single = self.branch3x3_1(x)
        double = self.branch3x3dbl_2(self.branch3x3dbl_1(x))
        pooled = F.max_pool2d(x, 3, stride=1, padding=1) if self.max_pool else _avg_pool(x)
        return torch.cat([
            self.branch1x1(x),
            self.branch3x3_2a(single), self.branch3x3_2b(single),
            self.branch3x3dbl_3a(double), self.branch3x3dbl_3b(double),
            self.branch_pool(pooled),
        ], 1)


class FIDInception(nn.Module):
    """uint8-range images [N, 3, H, W] of any size -> pool features [N, 2048]."""

    def __init__(self):
        super().__init__()
        self.Conv2d_1a_3x3 = Conv(3, 32, 3, stride=2)
        self.Conv2d_2a_3x3 = Conv(32, 32, 3)
        self.Conv2d_2b_3x3 = Conv(32, 64, 3, padding=1)
        self.Conv2d_3b_1x1 = Conv(64, 80, 1)
        self.Conv2d_4a_3x3 = Conv(80, 192, 3)
        self.Mixed_5b = BlockA(192, 32)
        self.Mixed_5c = BlockA(256, 64)
        self.Mixed_5d = BlockA(288, 64)
        self.Mixed_6a = BlockB(288)
        self.Mixed_6b = BlockC(768, 128)
        self.Mixed_6c = BlockC(768, 160)
        self.Mixed_6d = BlockC(768, 160)
        self.Mixed_6e = BlockC(768, 192)
        self.Mixed_7a = BlockD(768)
        self.Mixed_7b = BlockE(1280, max_pool=False)
        self.Mixed_7c = BlockE(2048, max_pool=True)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.features(to_inception_range(resize_bilinear_tf1(images.float(), INPUT_SIZE)))

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """Pool features [N, 2048] of images [N, 3, 299, 299] in [-1, 1]."""
        x = self.Conv2d_2b_3x3(self.Conv2d_2a_3x3(self.Conv2d_1a_3x3(x)))
        x = F.max_pool2d(x, 3, stride=2)
        x = self.Conv2d_4a_3x3(self.Conv2d_3b_1x1(x))
        x = F.max_pool2d(x, 3, stride=2)
        for name in ("5b", "5c", "5d", "6a", "6b", "6c", "6d", "6e", "7a", "7b", "7c"):
            x = getattr(self, f"Mixed_{name}")(x)
        return x.mean(dim=(2, 3))


def to_inception_range(x: torch.Tensor) -> torch.Tensor:
    """Pixels in [0, 255] -> [-1, 1] as T2IBenchmark's feature extractor: torchvision's ToTensor
    (x / 255 in float32), then 2x - 1."""
    return 2 * (x.float() / 255) - 1


def resize_bilinear_tf1(x: torch.Tensor, size: int) -> torch.Tensor:
    """TensorFlow 1's `resize_bilinear` (align_corners=False) of [N, C, H, W] to size x size.
    Coordinates are computed in float32 and interpolated as a + (b - a) * w, as TF does."""
    for dim in (2, 3):
        length = x.shape[dim]
        scale = torch.tensor(length / size, dtype=torch.float32)
        source = torch.arange(size, dtype=torch.float32, device=x.device) * scale.to(x.device)
        low = source.floor().long().clamp(max=length - 1)
        high = (low + 1).clamp(max=length - 1)
        weight = (source - low).to(x.dtype).view([size if d == dim else 1 for d in range(4)])
        a, b = x.index_select(dim, low), x.index_select(dim, high)
        x = a + (b - a) * weight
    return x


def load_fid_inception(path: str | Path, what: str) -> FIDInception:
    """The FID network in eval mode from a state-dict file; the classifier head (`fc.`) that
    the standard file also holds is not needed for the features and is left out."""
    state = {k: v for k, v in read_state_dict(path, what).items() if not k.startswith("fc.")}
    model = FIDInception()
    load_weights(model, state, what, f"the FID Inception weights ({WEIGHTS_FILE})")
    return model.eval().requires_grad_(False)
