"""Trajectory bank: the frozen model's rollouts and predictions, computed once.

With the text encoder trained and the UNet frozen, z_t and the targets e_0, e_p and
the retain targets do not depend on the training state (DESIGN.md). The bank holds,
for each prompt, a few guided DDIM trajectories: for every DDIM index k the latent z_t that
the authors' sampler ends at for k (`diffusion.walk_steps`), a training timestep t drawn in
k's bucket, and the frozen predictions at (z_t, t). Training then samples (trajectory, k)
pairs instead of re-running rollouts.

Difference from fresh sampling, by construction: t is drawn once per (trajectory, k)
when the bank is built, and each retain sample has its own trajectory and t.

Entries are stored one folder per prompt (memory-mapped .npy files) under a key that
hashes the bank's format, the UNet's weights, the prompt's conditioning, guidance, steps,
latent shape, bank size and bank seed, so the retain entries are reused by any later run on
the same model, whatever the concept. An entry's noise and timesteps are seeded by the bank
seed and the prompt's text, not by the key: a machine that rounds the conditioning
differently builds the same trajectories. Each entry is written atomically: an interrupted
build keeps what it finished and resumes from there.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from advunlearn_fast import distributed
from advunlearn_fast.errors import notice
from advunlearn_fast.models.diffusion import predict_noise, rollout_steps, walk_steps
from advunlearn_fast.outputs import atomic_dir
from advunlearn_fast.training.sampling import DefenderDraw, FrozenModel, draw_timestep
from advunlearn_fast.transfer import to_device

# What an entry holds: z_t for index k is where the authors' walk from noise ends for k (over
# ldm's timesteps less the top one), paired with a t in k's bucket. The format is part of every
# entry's key: an entry of another format (1 when its meta.json names none) is never read.
BANK_FORMAT = 3

# UNet samples per call while building. At SD v1's 64x64 latents a bf16 forward without gradients
# holds about 65 MB of activations per sample at its peak (benchmarks/README.md), so 64 samples
# (4.2 GB, next to 2.2 GB of weights) stay under the peak of the training steps that follow; a
# smaller latent fits proportionally more per call.
SAMPLES_PER_CALL_AT_64X64 = 64


def samples_per_call(latent_shape: tuple) -> int:
    return max(2, SAMPLES_PER_CALL_AT_64X64 * 64 * 64 // (latent_shape[-2] * latent_shape[-1]))


def build_groups(entries: list[dict], trajectories_per_call: int) -> list[list[dict]]:
    """`entries` in order, packed into groups of at most `trajectories_per_call` trajectories in all,
    each group one guided rollout per DDIM step: many small retain entries share a call, and an
    entry larger than a call is a group of its own (rolled out in several calls)."""
    groups: list[list[dict]] = []
    filled = trajectories_per_call
    for entry in entries:
        if filled + entry["size"] > trajectories_per_call:
            groups.append([])
            filled = 0
        groups[-1].append(entry)
        filled += entry["size"]
    return groups


def unet_fingerprint(unet) -> str:
    """A hash of the UNet's shapes and a strided sample of every weight (fast on 860M parameters)."""
    h = hashlib.sha256()
    for name, p in unet.state_dict().items():
        flat = p.detach().reshape(-1)
        sample = flat[:: max(1, flat.numel() // 64)][:64].float().cpu().numpy()
        h.update(name.encode())
        h.update(str(tuple(p.shape)).encode())
        h.update(sample.tobytes())
    return h.hexdigest()[:16]


def _tensor_hash(t: torch.Tensor) -> str:
    return hashlib.sha256(t.detach().float().cpu().numpy().tobytes()).hexdigest()[:16]


def _seed(*parts) -> int:
    return int(hashlib.sha256(json.dumps(parts).encode()).hexdigest()[:15], 16)


def older_entries(root: Path) -> int:
    """How many entries under `root` an earlier format wrote (they are never read)."""
    count = 0
    for meta in root.glob("*/meta.json"):
        try:
            count += json.loads(meta.read_text()).get("format", 1) < BANK_FORMAT
        except (OSError, ValueError):
            continue
    return count


class TrajectoryBank:
    """Entries for every concept prompt and for the retain prompts `retain_used` (indices into
    `retain_prompts`; all of them when None): a run builds only what it can draw."""

    def __init__(self, frozen: FrozenModel, root: Path, concept_prompts: list[str], retain_prompts: list[str],
                 concept_size: int, retain_size: int, seed: int = 0, retain_used: list[int] | None = None):
        self.frozen = frozen
        self.root = Path(root)
        # Read once: diffusers' `unet.dtype` walks every module, and the attack reads twice a step.
        self.unet_dtype = frozen.unet.dtype
        self.storage_dtype = np.float32 if self.unet_dtype == torch.float32 else np.float16
        self.samples_per_call = samples_per_call(frozen.latent_shape)
        self.seed = seed
        base = {
            "format": BANK_FORMAT, "unet": unet_fingerprint(frozen.unet), "uncond": _tensor_hash(frozen.uncond),
            "guidance": frozen.guidance, "steps": frozen.ddim_steps, "latent": list(frozen.latent_shape),
            "schedule": _tensor_hash(frozen.scheduler.alphas_cumprod), "dtype": np.dtype(self.storage_dtype).name,
            "seed": seed,
        }
        self.concepts = [
            self._entry(base, cond, text, concept_size, 2) for cond, text in zip(frozen.concept_conds.split(1), concept_prompts)
        ]
        used = range(len(retain_prompts)) if retain_used is None else retain_used
        self.retain = {i: self._entry(base, frozen.retain_conds[i : i + 1], retain_prompts[i], retain_size, 1) for i in used}

    def _entry(self, base: dict, cond: torch.Tensor, text: str, size: int, preds: int) -> dict:
        key = hashlib.sha256(json.dumps({**base, "cond": _tensor_hash(cond), "size": size}).encode()).hexdigest()[:24]
        return {"key": key, "cond": cond, "text": text, "size": size, "preds": preds, "folder": self.root / key}

    def entries(self) -> list[dict]:
        return self.concepts + list(self.retain.values())

    def missing(self) -> list[dict]:
        return [e for e in self.entries() if not (e["folder"] / "meta.json").is_file()]

    def build(self, progress: bool = True) -> int:
        """Compute every missing entry, as many prompts per UNet call as `samples_per_call` holds;
        returns how many were built. Under torchrun the ranks build the groups in turn (each group
        as one process would), and all wait until the bank is complete."""
        # Listed by rank 0 alone: the others would see the entries it has just written.
        missing = set(distributed.on_main(lambda: [e["key"] for e in self.missing()]))
        todo = [e for e in self.entries() if e["key"] in missing]
        if todo and self.root.is_dir() and (old := older_entries(self.root)):
            notice(
                f"trajectory bank: {old} entries in {self.root} are from an earlier advunlearn whose z_t did not end "
                "where the authors' sampler ends; they are not used (delete them to free the space) and new ones are built"
            )
        # Guided: each trajectory is two samples per UNet call.
        groups = [group for kind in (self.concepts, list(self.retain.values()))
                  for group in build_groups([e for e in todo if e in kind], self.samples_per_call // 2)]

        def build_group(entries: list[dict]) -> int:
            self._build_entries(entries)
            return len(entries)

        with tqdm(total=len(todo), desc="trajectory bank", unit="prompt", disable=not progress or not todo) as bar:
            for built in distributed.sharded(groups, build_group):
                bar.update(sum(built))
        distributed.barrier()
        self._open()
        return len(todo)

    def entry_noise_and_timesteps(self, entry: dict) -> tuple[torch.Tensor, torch.Tensor]:
        """The entry's starting noise [size, *latent] and its timestep for every (trajectory, k)."""
        f = self.frozen
        K, T = f.ddim_steps, f.train_timesteps
        generator = torch.Generator().manual_seed(_seed("bank", self.seed, entry["text"], entry["size"]))
        noise = torch.randn((entry["size"], *f.latent_shape), generator=generator)
        steps = torch.tensor([[draw_timestep(generator, k, K, T) for k in range(K)] for _ in range(entry["size"])])
        return noise, steps

    @torch.no_grad()
    def _build_entries(self, entries: list[dict]) -> None:
        """Entries of one kind (same size and predictions) in batched rollouts."""
        f = self.frozen
        K, walk = f.ddim_steps, f.walk
        size, preds = entries[0]["size"], entries[0]["preds"]
        drawn = [self.entry_noise_and_timesteps(e) for e in entries]  # each entry's own: independent of the batching
        n = len(entries) * size
        noise = torch.cat([d[0] for d in drawn]).to(f.uncond.device, f.unet.dtype)
        cond = torch.cat([e["cond"].expand(size, -1, -1) for e in entries])
        f.meter.add("bank", 2 * n * len(walk))
        calls = self.samples_per_call
        walked = []
        for noise_part, cond_part in zip(noise.split(calls // 2), cond.split(calls // 2)):
            path = list(rollout_steps(f.unet, f.scheduler, cond_part, f.uncond, noise_part, walk, f.guidance))
            walked.append(torch.stack([path[walk_steps(k, len(walk))] for k in range(K)], 1))  # [part, K, *latent]
        latents = torch.cat(walked)
        z = latents.reshape(n * K, *f.latent_shape)
        t = torch.cat([d[1] for d in drawn]).reshape(-1).to(z.device)
        per_latent = cond.repeat_interleave(K, 0)
        targets = [f.uncond.expand(n * K, -1, -1), per_latent] if preds == 2 else [per_latent]
        predictions = []
        for c in targets:
            f.meter.add("bank", n * K)
            chunks = [predict_noise(f.unet, zc, tc, cc)
                      for zc, tc, cc in zip(z.split(calls), t.split(calls), c.split(calls))]
            predictions.append(torch.cat(chunks).reshape(len(entries), size, K, *f.latent_shape))
        latents = latents.reshape(len(entries), size, K, *f.latent_shape)
        stacked = torch.stack(predictions, 3)
        for j, entry in enumerate(entries):
            with atomic_dir(entry["folder"]) as tmp:
                np.save(tmp / "z.npy", latents[j].cpu().float().numpy().astype(self.storage_dtype))
                np.save(tmp / "t.npy", drawn[j][1].numpy())
                np.save(tmp / "e.npy", stacked[j].cpu().float().numpy().astype(self.storage_dtype))
                (tmp / "meta.json").write_text(json.dumps({"format": BANK_FORMAT, "size": size, "steps": K, "preds": preds}))

    def _open(self) -> None:
        for e in self.entries():
            e["z"] = np.load(e["folder"] / "z.npy", mmap_mode="r")
            e["t"] = np.load(e["folder"] / "t.npy")
            e["e"] = np.load(e["folder"] / "e.npy", mmap_mode="r")

    def _read(self, array, index) -> torch.Tensor:
        return to_device(torch.from_numpy(np.array(array[index])), self.frozen.uncond.device, self.unet_dtype)

    def _pick(self, entry: dict, k: int, generator):
        i = int(torch.randint(entry["size"], (1,), generator=generator))
        return int(entry["t"][i, k]), self._read(entry["z"], (i, k)), self._read(entry["e"], (i, k))

    def attack_draw(self, concept: int, generator):
        k = int(torch.randint(self.frozen.ddim_steps, (1,), generator=generator))
        t, z, e = self._pick(self.concepts[concept], k, generator)
        return torch.tensor([t]), z[None], e[1:2]

    def defender_draw(self, concept: int, retain: torch.Tensor, generator) -> DefenderDraw:
        k = int(torch.randint(self.frozen.ddim_steps, (1,), generator=generator))
        t_p, z_p, e_p = self._pick(self.concepts[concept], k, generator)
        picks = [self._pick(self.retain[int(r)], k, generator) for r in retain]
        t = torch.tensor([t_p] + [p[0] for p in picks])
        z = torch.stack([z_p] + [p[1] for p in picks])
        e_r = torch.stack([p[2][0] for p in picks])
        return DefenderDraw(k, t, z, e_p[0:1], e_p[1:2], e_r)
