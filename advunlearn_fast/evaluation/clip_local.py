"""A CLIP model (transformers CLIPModel + CLIPProcessor) read from a local folder only.

Used by the CLIP score of `eval` and by the `clip:` judge. The folder is what
`CLIPModel.save_pretrained` and `CLIPProcessor.save_pretrained` write, e.g. a local copy of
openai/clip-vit-base-patch32 (EVALUATION.md's CLIP score model) or clip-vit-large-patch14.
Loading passes local_files_only, so a name that is not a folder is never looked up on a hub.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import torch

from advunlearn_fast.errors import UserError
from advunlearn_fast.models.statedicts import load_error


def _projected(output) -> torch.Tensor:
    # transformers 4.x returns the projected embeddings; 5.x returns a model output that
    # holds them as pooler_output.
    return output if isinstance(output, torch.Tensor) else output.pooler_output


@dataclass
class LocalCLIP:
    model: torch.nn.Module
    processor: object
    path: str

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    def to(self, device: torch.device) -> "LocalCLIP":
        self.model.to(device)
        return self

    @torch.no_grad()
    def image_embeddings(self, pil_images: list) -> torch.Tensor:
        """Unit-length image embeddings [N, D] (float32, CPU)."""
        pixels = self.processor(images=pil_images, return_tensors="pt")["pixel_values"].to(self.device)
        embeds = _projected(self.model.get_image_features(pixel_values=pixels)).float()
        return torch.nn.functional.normalize(embeds, dim=-1).cpu()

    @torch.no_grad()
    def text_embeddings(self, texts: list[str]) -> torch.Tensor:
        """Unit-length text embeddings [N, D]; texts longer than CLIP's context are truncated."""
        length = int(self.model.config.text_config.max_position_embeddings)
        tokens = self.processor(text=list(texts), return_tensors="pt", padding=True, truncation=True, max_length=length)
        embeds = _projected(self.model.get_text_features(
            input_ids=tokens["input_ids"].to(self.device), attention_mask=tokens["attention_mask"].to(self.device),
        )).float()
        return torch.nn.functional.normalize(embeds, dim=-1).cpu()


def load_clip(folder: str | Path, what: str) -> LocalCLIP:
    """The CLIP model and processor in an existing local `folder`; `what` names the option it
    came from in errors."""
    from transformers import CLIPModel, CLIPProcessor

    check_clip_folder(Path(folder), what)
    try:
        model = CLIPModel.from_pretrained(folder, local_files_only=True)
        processor = CLIPProcessor.from_pretrained(folder, local_files_only=True)
    except Exception as err:
        raise load_error(f"a CLIP model and processor ({what})", folder, err) from None
    return LocalCLIP(model.eval().requires_grad_(False), processor, str(folder))


def check_clip_folder(folder: Path, what: str) -> None:
    """Refuse a folder whose config.json is not a whole CLIP model's (a text encoder alone, an SD
    folder): transformers would otherwise fail on it in words about mismatched sizes."""
    config = folder / "config.json"
    if not config.is_file():
        raise UserError(f"{what} {folder} has no config.json: not a CLIP model folder (CLIPModel.save_pretrained "
                        "and CLIPProcessor.save_pretrained write one)")
    try:
        model_type = json.loads(config.read_text(encoding="utf-8")).get("model_type")
    except (OSError, ValueError, AttributeError) as err:
        raise load_error(f"a CLIP model ({what})", config, err) from None
    if model_type != "clip":
        raise UserError(f"{what} {folder} holds a {model_type or 'model of unknown type'} (config.json), not a "
                        "CLIP model with image and text towers: pass a folder CLIPModel.save_pretrained wrote")
