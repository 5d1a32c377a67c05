"""`advunlearn eval`: the utility of a model with an encoder plugged in (EVALUATION.md, Utility).

One image per prompt, with the prompt's seed and guidance as in `generate` (but 100 steps for
SD by default, as AdvUnlearn's utility images), then each metric
whose inputs are given:
- CLIP score (`--clip FOLDER`): `metrics.clip_scores` of each image with its own prompt,
  averaged over images;
- FID (`--real DIR` and `--inception FILE`): Inception pool features of the generated images
  (the uint8 pixels of the PNGs written) against those of every image in DIR and its subfolders,
  each image centre-cropped to a square and resized to 299x299 by PIL's bicubic filter first,
  then scaled to [-1, 1] as x / 255 * 2 - 1: the conventions of T2IBenchmark, which AdvUnlearn's
  FIDs come from;
- world accuracy (concept-world models, always): for each attribute that a prompt names
  exactly one value of, whether the world's judge sees that value in the image.
Paths are checked in the order of the command's options and the metric networks loaded before
the model, and the real images read before any generation, so bad input fails first and leaves
nothing written; an --out that holds an earlier eval's eval.json or images is refused, never mixed
with or overwritten. Images are generated, written and measured a batch at a time: memory does not
grow with the number of prompts.
"""

from __future__ import annotations

import os
import re
from collections import defaultdict
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from advunlearn_fast import distributed
from advunlearn_fast.device import cpu_policy, resolve_device
from advunlearn_fast.errors import UserError
from advunlearn_fast.evaluation.fid_inception import (
    FEATURES,
    INPUT_SIZE,
    WEIGHTS_FILE,
    FIDInception,
    load_fid_inception,
)
from advunlearn_fast.evaluation.generation import (
    build_pipeline,
    check_generation_args,
    generate,
    read_prompt_rows,
    sampler_description,
    to_pil,
    to_uint8,
    with_default_guidance,
)
from advunlearn_fast.evaluation.inputs import check_model_paths, check_no_earlier_run, check_out
from advunlearn_fast.evaluation.manifest import file_sha256, path_sha256, versions
from advunlearn_fast.evaluation.metrics import clip_scores, fid
from advunlearn_fast.models.attention import check_attention
from advunlearn_fast.outputs import write_json_atomic
from advunlearn_fast.world import world_folder
from advunlearn_fast.world.judge import default_judge

EVAL_FILE = "eval.json"
# The real images T2IBenchmark reads (its IMAGE_EXTENSIONS, matched as written: lower case).
REAL_EXTENSIONS = ("bmp", "jpg", "jpeg", "pgm", "png", "ppm", "tif", "tiff", "webp")
CLIP_SCORE_DEFINITION = "mean over images of 100 * max(cos(CLIP image embedding, CLIP prompt embedding), 0)"


@dataclass
class EvalSettings:
    model: str
    prompts: str
    out: str
    encoder: str | None = None
    real: str | None = None
    clip: str | None = None
    inception: str | None = None
    batch_size: int = 8
    seed: int = 0  # for prompts without their own
    guidance: float | None = None  # for prompts without their own; the model's default
    steps: int | None = None  # the model's utility default (100 for SD)
    sampler: str | None = None  # the model's default (lms for SD)
    device: str = "auto"
    model_config: str | None = None
    attention: str = "sdpa"


def real_image_files(folder: str) -> list[Path]:
    """The images in the folder and its subfolders, as T2IBenchmark's FID finds them (os.walk,
    which does not enter linked folders), in a fixed order."""
    path = Path(folder).expanduser()
    if not path.is_dir():
        raise UserError(f"--real {folder} is not a folder")
    files = sorted(Path(root) / name for root, _, names in os.walk(path) for name in names
                   if os.path.splitext(name)[1][1:] in REAL_EXTENSIONS)
    if len(files) < 2:
        raise UserError(f"--real {folder} holds {len(files)} images (.{', .'.join(REAL_EXTENSIONS)}, in it and its "
                        "subfolders); FID needs at least 2")
    return files


def check_inputs(s: EvalSettings, world: bool) -> list[Path]:
    """The metric options, then the numbers, before anything is loaded; returns the real image
    files."""
    if s.clip is not None and not Path(s.clip).expanduser().is_dir():
        raise UserError(f"--clip {s.clip} is not a folder on local disk: pass --clip <a local CLIP model folder, "
                        "e.g. a copy of openai/clip-vit-base-patch32 with its processor files>")
    if s.inception is not None and s.real is None:
        raise UserError("--inception is for FID, which also needs --real DIR (the real images to compare with)")
    if s.real is None:
        if s.clip is None and not world:
            raise UserError("nothing to measure: pass --clip <local CLIP folder> for the CLIP score and/or "
                            f"--real DIR --inception <{WEIGHTS_FILE}> for FID")
        real_files = []
    else:
        real_files = real_image_files(s.real)
        if s.inception is None:
            raise UserError(f"FID needs the Inception weights on local disk: pass --inception <path to {WEIGHTS_FILE}> "
                            "(the FID Inception state dict of pytorch-fid and torch-fidelity)")
        if not Path(s.inception).expanduser().is_file():
            raise UserError(f"--inception {s.inception} is not a file on local disk: pass the FID Inception weights "
                            f"({WEIGHTS_FILE})")
    check_generation_args(s.seed, s.guidance, s.steps, s.batch_size, s.sampler)
    return real_files


def read_images(files: list[Path]) -> list[torch.Tensor]:
    """uint8 RGB images [3, H, W], each at its own size."""
    from PIL import Image

    images = []
    for file in files:
        try:
            with Image.open(file) as image:
                pixels = np.asarray(image.convert("RGB"))
        except Exception as err:
            raise UserError(f"--real: cannot read {file}: {(str(err).splitlines() or ['?'])[0]}") from None
        images.append(torch.from_numpy(pixels.copy()).permute(2, 0, 1))
    return images


def fid_input(image: torch.Tensor) -> torch.Tensor:
    """A uint8 image [3, H, W] as FID's Inception sees it: its centred square crop (the shorter
    side) resized to 299x299 by PIL's bicubic filter, rounded back to uint8."""
    from PIL import Image

    _, height, width = image.shape
    side = min(height, width)
    top, left = (height - side) // 2, (width - side) // 2
    square = image[:, top : top + side, left : left + side].permute(1, 2, 0).contiguous().numpy()
    resized = Image.fromarray(square).resize((INPUT_SIZE, INPUT_SIZE), resample=Image.BICUBIC)
    return torch.from_numpy(np.asarray(resized).copy()).permute(2, 0, 1)


@torch.no_grad()
def inception_features(net: FIDInception, images: list[torch.Tensor], device: torch.device) -> np.ndarray:
    """Pool features [N, 2048] of uint8 images of any sizes (each made a 299x299 `fid_input`)."""
    if not images:
        return np.empty((0, FEATURES), dtype=np.float64)
    batch = torch.stack([fid_input(image) for image in images]).to(device)
    return net(batch).double().cpu().numpy()


def named_attributes(prompt: str) -> dict[str, str]:
    """The world attributes a prompt names exactly one value of, e.g. {'colour': 'red'}."""
    from advunlearn_fast.world.judge import ATTRIBUTES

    words = set(re.findall(r"[a-z]+", prompt.lower()))
    named = {}
    for attribute, values in ATTRIBUTES.items():
        hits = [v for v in values if v in words]
        if len(hits) == 1:
            named[attribute] = hits[0]
    return named


def world_accuracy(records: list[dict]) -> dict:
    """Per attribute: the fraction of images that show the value their prompt names."""
    totals: dict[str, list[int]] = defaultdict(lambda: [0, 0])
    for record in records:
        for attribute, seen in record["world"].items():
            totals[attribute][0] += seen["named"] == seen["judged"]
            totals[attribute][1] += 1
    return {a: {"accuracy": hits / n, "n": n} for a, (hits, n) in totals.items()}


def run_eval(s: EvalSettings, progress: bool = True) -> dict | None:
    """eval.json from the images of every prompt. Under torchrun each rank generates and measures
    its share of the batches (and reads its share of the real images); rank 0 gathers the rows and
    features, computes the metrics and writes eval.json. The result on rank 0, None elsewhere."""
    check_model_paths(s.model, s.model_config, s.encoder)
    rows = read_prompt_rows(s.prompts, s.seed, s.guidance)
    check_out(s.out)
    check_no_earlier_run(s.out, "eval", (EVAL_FILE,), "images")
    world = world_folder(s.model) is not None
    real_files = check_inputs(s, world)
    if real_files and len(rows) < 2:
        raise UserError(f"FID needs at least 2 generated images; {s.prompts} holds {len(rows)} prompt")
    device = resolve_device(s.device)
    check_attention(s.attention, device)  # before the metric networks load
    distributed.start(device)
    progress = progress and distributed.is_main()
    clip, inception = load_metric_networks(s, device)
    pipe = build_pipeline(s.model, s.encoder, device, s.model_config, s.attention)
    real_features = None
    if real_files:
        chunks = [real_files[i : i + s.batch_size] for i in range(0, len(real_files), s.batch_size)]
        bar = tqdm(total=len(real_files), desc="real images", disable=not progress)
        parts = []
        for finished in distributed.sharded(chunks, lambda files: inception_features(inception, read_images(files), device)):
            parts += finished
            bar.update(sum(len(p) for p in finished))
        bar.close()
        real_features = np.concatenate(parts) if distributed.is_main() else None
    cpu_policy(pipe.unet, pipe.device, s.device)
    rows = with_default_guidance(rows, pipe.default_guidance)
    steps = s.steps or pipe.utility_steps
    sampler = s.sampler or pipe.default_sampler
    out = Path(s.out)
    (out / "images").mkdir(parents=True, exist_ok=True)
    distributed.check_shared_folder(out, "--out")
    world_judge = default_judge() if world else None

    def measure(start: int) -> dict:
        """The images of rows start.. (one batch): written, and their records and features."""
        part = rows[start : start + s.batch_size]
        images = generate(pipe, [r.prompt for r in part], [r.seed for r in part], [r.guidance for r in part], steps,
                          s.batch_size, sampler)
        pils = to_pil(images)
        batch = []
        for index, (row, image) in enumerate(zip(part, pils), start=start):
            name = f"images/{index:04d}.png"
            image.save(out / name)
            batch.append({"index": index, "file": name, "prompt": row.prompt, "seed": row.seed, "guidance": row.guidance})
        scores = []
        if clip is not None:
            scores = clip_scores(clip.image_embeddings(pils), clip.text_embeddings([r.prompt for r in part])).tolist()
            for record, score in zip(batch, scores):
                record["clip_score"] = round(score, 4)
        features = inception_features(inception, list(to_uint8(images)), device) if inception is not None else None
        if world_judge is not None:
            labels = world_judge.predict(images)
            for i, (record, row) in enumerate(zip(batch, part)):
                record["world"] = {a: {"named": v, "judged": labels[a][i]} for a, v in named_attributes(row.prompt).items()}
        return {"records": batch, "clip_scores": scores, "features": features}

    records: list[dict] = []
    all_clip_scores: list[float] = []
    generated_features = []
    bar = tqdm(total=len(rows), desc="images", disable=not progress)
    for finished in distributed.sharded(range(0, len(rows), s.batch_size), measure):
        for batch in finished:
            records.extend(batch["records"])
            all_clip_scores.extend(batch["clip_scores"])
            if batch["features"] is not None:
                generated_features.append(batch["features"])
            bar.update(len(batch["records"]))
    bar.close()
    if not distributed.is_main():
        return None

    metrics, notes = {}, []
    if clip is not None:
        metrics["clip_score"] = float(np.mean(all_clip_scores))
    if inception is not None:
        generated = np.concatenate(generated_features)
        metrics["fid"] = fid(generated, real_features)
        if min(len(generated), len(real_features)) < FEATURES:
            notes.append(f"FID from fewer than {FEATURES} images per set is biased upward and noisy: compare FIDs "
                         "only at equal n (the papers use 10k COCO images)")
    if world:
        metrics["world_accuracy"] = world_accuracy(records)
    result = {"n": len(records), "metrics": metrics, "notes": notes, "rows": records,
              "manifest": manifest(s, device, pipe.parts.source, rows, steps, sampler, clip, len(real_files))}
    write_json_atomic(out / EVAL_FILE, result)
    return result


def load_metric_networks(s: EvalSettings, device: torch.device):
    """(CLIP or None, FID Inception or None), from paths `check_inputs` has seen on disk."""
    clip = None
    if s.clip is not None:
        from advunlearn_fast.evaluation.clip_local import load_clip

        clip = load_clip(Path(s.clip).expanduser(), "--clip").to(device)
    inception = None
    if s.real is not None:
        inception = load_fid_inception(Path(s.inception).expanduser(), f"--inception {s.inception}").to(device)
    return clip, inception


def manifest(s: EvalSettings, device, model_source: str, rows, steps: int, sampler: str, clip, real_count: int) -> dict:
    return {
        "versions": versions(), "device": str(device), "model": model_source, "encoder": s.encoder,
        "prompt_file": str(s.prompts), "prompt_file_sha256": file_sha256(s.prompts),
        "seeds": [r.seed for r in rows], "guidance": [r.guidance for r in rows], "steps": steps,
        "sampler": sampler_description(sampler, steps),
        "clip": None if clip is None else {"path": clip.path, "sha256": path_sha256(clip.path),
                                            "score": CLIP_SCORE_DEFINITION},
        "inception": None if s.real is None else {
            "path": str(s.inception), "sha256": path_sha256(Path(s.inception).expanduser()),
            "features": f"pool3, {FEATURES}-d; images centre-cropped to a square, resized to 299x299 by PIL bicubic, "
                        "scaled as x / 255 * 2 - 1 (T2IBenchmark)"},
        "real": None if s.real is None else {"dir": str(s.real), "n": real_count},
        "world_size": distributed.world_size(), "settings": asdict(s),
    }
