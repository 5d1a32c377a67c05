"""Triton kernels of the attack step, their PyTorch references, and dispatch with fallback.

Importing this package never imports triton; see functional.py for how a backend is chosen.
"""

from .dispatch import BACKENDS, interpreter_enabled, triton_available
from .functional import adversarial_adam_step_, assemble_prompt_embeddings, onehot_embedding, project_simplex
from .reference import PROJECT_SIMPLEX_ITERS

__all__ = [
    "BACKENDS",
    "PROJECT_SIMPLEX_ITERS",
    "adversarial_adam_step_",
    "assemble_prompt_embeddings",
    "interpreter_enabled",
    "onehot_embedding",
    "project_simplex",
    "triton_available",
]
