"""A transformers image classifier (a `...ForImageClassification` model and its image processor)
read from a local folder only.

Used by the `hf-classifier:` judge. Both of the authors' trained judges are such folders: their
object judge is microsoft/resnet-50 (ResNetForImageClassification with its ConvNext image
processor) and their Van Gogh judge is their released artist classifier, which they run through
transformers' image-classification pipeline. The folder is what `save_pretrained` of the model
and of its image processor write. Loading passes local_files_only, so nothing is looked up on a
hub. The processor runs on transformers' PIL backend: the authors' transformers (4.33) had no
other, and the torchvision backend, picked by default where torchvision imports, resizes
differently.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import torch

from advunlearn_fast.errors import UserError
from advunlearn_fast.models.statedicts import load_error


@dataclass
class LocalImageClassifier:
    model: torch.nn.Module
    processor: object
    path: str

    @property
    def labels(self) -> dict[int, str]:
        return {int(i): str(name) for i, name in self.model.config.id2label.items()}

    def to(self, device: torch.device) -> "LocalImageClassifier":
        self.model.to(device)
        return self

    @torch.no_grad()
    def probabilities(self, pil_images: list) -> torch.Tensor:
        """Class probabilities [N, classes] (float32, CPU): the softmax of the logits, as the
        authors' transformers (4.33) image-classification pipeline scored them."""
        device = next(self.model.parameters()).device
        pixels = self.processor(images=pil_images, return_tensors="pt")["pixel_values"].to(device)
        return self.model(pixel_values=pixels).logits.float().softmax(-1).cpu()


def load_image_classifier(folder: str | Path, what: str) -> LocalImageClassifier:
    """The image classifier and its image processor in an existing local `folder`; `what` names
    the option it came from in errors."""
    from transformers import AutoImageProcessor, AutoModelForImageClassification

    folder = Path(folder)
    check_classifier_folder(folder, what)
    if not (folder / "preprocessor_config.json").is_file():
        raise UserError(f"{what} {folder} has no preprocessor_config.json: the classifier's image processor is needed "
                        "(save_pretrained of its image processor writes it)")
    try:
        model, info = AutoModelForImageClassification.from_pretrained(folder, local_files_only=True,
                                                                      output_loading_info=True)
        processor = AutoImageProcessor.from_pretrained(folder, local_files_only=True, backend="pil")
    except Exception as err:
        raise load_error(f"an image classifier and its image processor ({what})", folder, err) from None
    missing = list(info.get("missing_keys") or [])
    if missing:
        # transformers would fill them with random values: the verdicts would be noise.
        raise UserError(f"{what} {folder}: its weights lack {len(missing)} of the model's tensors (e.g. {missing[0]}): "
                        "not a trained image classifier")
    return LocalImageClassifier(model.eval().requires_grad_(False), processor, str(folder))


def check_classifier_folder(folder: Path, what: str) -> None:
    """Refuse a folder whose config.json is not an image classifier's (a CLIP model, a backbone
    without its classification head, an SD folder) before transformers loads anything into it."""
    from transformers.models.auto.modeling_auto import MODEL_FOR_IMAGE_CLASSIFICATION_MAPPING_NAMES

    config = folder / "config.json"
    if not config.is_file():
        raise UserError(f"{what} {folder} has no config.json: not a transformers model folder (save_pretrained "
                        "writes one)")
    try:
        fields = json.loads(config.read_text(encoding="utf-8"))
        architectures = list(fields.get("architectures") or [])
    except (OSError, ValueError, AttributeError, TypeError) as err:
        raise load_error(f"an image classifier ({what})", config, err) from None
    classifiers = set()
    for names in MODEL_FOR_IMAGE_CLASSIFICATION_MAPPING_NAMES.values():
        classifiers.update([names] if isinstance(names, str) else names)
    if not any(name in classifiers for name in architectures):
        held = ", ".join(architectures) or fields.get("model_type") or "model of unknown type"
        raise UserError(f"{what} {folder} holds a {held} (config.json), not an image classifier: pass a folder "
                        "that a ...ForImageClassification model's save_pretrained wrote")
