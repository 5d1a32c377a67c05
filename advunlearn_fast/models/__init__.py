"""The Stable Diffusion v1.x model: loading it (folders, single files, the hub, the tiny and
world models), its CLIP text passes (also from word embeddings with adversarial rows), and
its diffusion steps (DDIM schedulers, noise predictions, guided rollouts)."""
