"""Training of the judge's CNN on augmented renders.

Augmentations stand in for what generated images get wrong (noise, blur,
contrast) and permute colour channels so that shape and texture are read
independently of colour.
"""

from __future__ import annotations

import time
from pathlib import Path

import torch
import torch.nn.functional as F
from safetensors.torch import save_file
from tqdm import tqdm

from advunlearn_fast.world.judge_net import JudgeNet
from advunlearn_fast.world.render import random_scenes, render


def augment(images: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    n = images.shape[0]
    perm = torch.stack([torch.randperm(3, generator=generator) for _ in range(n)])
    images = images.gather(1, perm[:, :, None, None].expand_as(images))
    blur_kernel = torch.tensor([1.0, 2.0, 1.0])
    blur_kernel = (blur_kernel[:, None] * blur_kernel[None, :] / 16.0).expand(3, 1, 3, 3)
    blurred = F.conv2d(F.pad(images, (1, 1, 1, 1), mode="replicate"), blur_kernel, groups=3)
    amount = 0.6 * torch.rand(n, 1, 1, 1, generator=generator) * (torch.rand(n, 1, 1, 1, generator=generator) < 0.5)
    images = images + amount * (blurred - images)
    contrast = 0.8 + 0.4 * torch.rand(n, 1, 1, 1, generator=generator)
    sigma = 0.15 * torch.rand(n, 1, 1, 1, generator=generator)
    images = images * contrast + sigma * torch.randn(images.shape, generator=generator)
    return images.clamp(-1.0, 1.0)


def train_judge(out: Path, steps: int = 1500, batch_size: int = 256, seed: int = 0) -> JudgeNet:
    torch.manual_seed(seed)
    generator = torch.Generator().manual_seed(seed)
    net = JudgeNet()
    optimizer = torch.optim.AdamW(net.parameters(), lr=3e-3, weight_decay=1e-4)
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=3e-3, total_steps=steps)
    start = time.time()
    bar = tqdm(range(steps), desc="judge")
    for _ in bar:
        scene = random_scenes(batch_size, generator)
        images = augment(render(scene, generator), generator)
        shape_logits, texture_logits = net(images)
        loss = F.cross_entropy(shape_logits, scene.shape) + F.cross_entropy(texture_logits, scene.texture)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        schedule.step()
        bar.set_postfix(loss=f"{loss.item():.4f}")
    out.parent.mkdir(parents=True, exist_ok=True)
    save_file({k: v.contiguous() for k, v in net.state_dict().items()}, str(out))
    print(f"judge trained in {time.time() - start:.0f} s -> {out}")
    return net
