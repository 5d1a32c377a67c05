"""Stand-ins for the weights that metrics and judges read from disk, built in code and saved
in the formats the real files have (nothing downloaded)."""

from __future__ import annotations

from pathlib import Path

import torch
from transformers import CLIPConfig, CLIPImageProcessor, CLIPModel, CLIPProcessor

from advunlearn_fast.evaluation.fid_inception import FIDInception
from advunlearn_fast.evaluation.resnet50 import ResNet50
from advunlearn_fast.models.vocab import build_clip_tokenizer

CLIP_WORDS = ["a", "an", "image", "of", "photo", "red", "blue", "circle", "square", "church", "cat"]


def save_tiny_clip(folder: Path, seed: int = 0) -> Path:
    """A random CLIPModel with 32x32 inputs and its processor, as `save_pretrained` writes them."""
    tokenizer = build_clip_tokenizer(CLIP_WORDS, model_max_length=77)
    config = CLIPConfig(
        text_config=dict(vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=4, max_position_embeddings=77, bos_token_id=0, eos_token_id=2,
                         pad_token_id=1),
        vision_config=dict(image_size=32, patch_size=8, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                           num_attention_heads=4),
        projection_dim=16,
    )
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = CLIPModel(config).eval()
    processor = CLIPProcessor(
        image_processor=CLIPImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32}),
        tokenizer=tokenizer,
    )
    model.save_pretrained(folder)
    processor.save_pretrained(folder)
    return folder


def save_random_inception(path: Path, seed: int = 0) -> Path:
    """Random FID-Inception weights in the layout of pt_inception-2015-12-05-6726825d.pth,
    classifier head (1008 classes) included."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        state = FIDInception().state_dict()
        state["fc.weight"] = torch.randn(1008, 2048) * 0.01
        state["fc.bias"] = torch.zeros(1008)
    torch.save(state, path)
    return path


def save_constant_resnet50(path: Path, class_id: int, seed: int = 0) -> Path:
    """A torchvision-layout ResNet-50 state dict whose top-1 class is `class_id` for every image
    (zero classifier weights, the bias picks the class)."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = ResNet50()
    with torch.no_grad():
        model.fc.weight.zero_()
        model.fc.bias.zero_()
        model.fc.bias[class_id] = 5.0
    torch.save(model.state_dict(), path)
    return path


def save_tiny_image_classifier(folder: Path, kind: str, labels: dict[int, str], seed: int = 0) -> Path:
    """A random transformers image classifier naming `labels` (config id2label) and its image
    processor, as `save_pretrained` writes them: `resnet`, a ResNetForImageClassification with
    microsoft/resnet-50's processor settings (ConvNext: shorter side to size / 0.875, centre crop,
    bicubic, ImageNet mean/std) at 32 px; `vit`, a ViTForImageClassification with ViT's at 16 px."""
    from transformers import (
        ConvNextImageProcessor,
        ResNetConfig,
        ResNetForImageClassification,
        ViTConfig,
        ViTForImageClassification,
        ViTImageProcessor,
    )

    names = {"id2label": dict(labels), "label2id": {name: i for i, name in labels.items()}}
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        if kind == "resnet":
            model = ResNetForImageClassification(ResNetConfig(embedding_size=8, hidden_sizes=[8, 16], depths=[1, 1], **names))
            processor = ConvNextImageProcessor(size={"shortest_edge": 32}, crop_pct=0.875, resample=3,
                                               image_mean=[0.485, 0.456, 0.406], image_std=[0.229, 0.224, 0.225])
        else:
            model = ViTForImageClassification(ViTConfig(image_size=16, patch_size=8, hidden_size=16, num_hidden_layers=1,
                                                        num_attention_heads=2, intermediate_size=32, **names))
            processor = ViTImageProcessor(size={"height": 16, "width": 16})
    model.eval().save_pretrained(folder)
    processor.save_pretrained(folder)
    return folder
