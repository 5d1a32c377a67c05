"""Utility metrics as pure functions: CLIP score and the Fréchet distance of FID.

CLIP score (Hessel et al. 2021, as torchmetrics reports it): per image
100 * max(cos(image embedding, prompt embedding), 0), averaged over images. EVALUATION.md's
table gives the same quantity as a plain cosine (0.30 there is 30 here).

Fréchet distance between Gaussians N(mu1, S1) and N(mu2, S2):
    ||mu1 - mu2||^2 + tr(S1) + tr(S2) - 2 tr((S1^1/2 S2 S1^1/2)^1/2)
The last trace equals the usual tr((S1 S2)^1/2) (the matrices are similar) but is the square
root of a symmetric positive semi-definite matrix, taken by eigendecomposition: real by
construction, where scipy's sqrtm of the non-symmetric S1 S2 returns complex values when the
covariances are singular (fewer images than the 2048 features), and is slower (a general
matrix square root against symmetric eigendecompositions; benchmarks/README.md).

From features, with centred feature matrices A [n1, D] and B [n2, D], S1 = A'A / (n1 - 1) and
S2 = B'B / (n2 - 1), the non-zero eigenvalues of S1 S2 are the squared singular values of
A B' / sqrt((n1 - 1)(n2 - 1)); so when n1 * n2 < D * D the cross term is a nuclear norm of an
n1 x n2 matrix, exact and far cheaper than two D x D eigendecompositions.
"""

from __future__ import annotations

import numpy as np
import torch


def clip_scores(image_embeds: torch.Tensor, text_embeds: torch.Tensor) -> torch.Tensor:
    """100 * max(cos, 0) of each image with its own prompt; rows are pairs."""
    cos = torch.nn.functional.cosine_similarity(image_embeds.double(), text_embeds.double(), dim=-1)
    return 100 * cos.clamp(min=0)


def gaussian_statistics(features: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Mean and unbiased covariance of features [N, D] (N >= 2), in float64."""
    features = np.asarray(features, dtype=np.float64)
    return features.mean(axis=0), np.cov(features, rowvar=False)


def _psd_sqrt(matrix: np.ndarray) -> np.ndarray:
    values, vectors = np.linalg.eigh((matrix + matrix.T) / 2)
    return (vectors * np.sqrt(values.clip(min=0))) @ vectors.T


def frechet_distance(mu1: np.ndarray, sigma1: np.ndarray, mu2: np.ndarray, sigma2: np.ndarray) -> float:
    root1 = _psd_sqrt(sigma1)
    middle = np.linalg.eigvalsh(root1 @ sigma2 @ root1)
    cross = np.sqrt(middle.clip(min=0)).sum()
    diff = mu1 - mu2
    return float(diff @ diff + np.trace(sigma1) + np.trace(sigma2) - 2 * cross)


def fid(features1: np.ndarray, features2: np.ndarray) -> float:
    """FID of two feature sets [N1, D] and [N2, D], N1 and N2 at least 2."""
    a = np.asarray(features1, dtype=np.float64)
    b = np.asarray(features2, dtype=np.float64)
    (n1, dim), n2 = a.shape, b.shape[0]
    if n1 * n2 >= dim * dim:
        return frechet_distance(*gaussian_statistics(a), *gaussian_statistics(b))
    diff = a.mean(axis=0) - b.mean(axis=0)
    a, b = a - a.mean(axis=0), b - b.mean(axis=0)
    cross = np.linalg.svd(a @ b.T, compute_uv=False).sum() / np.sqrt((n1 - 1) * (n2 - 1))
    return float(diff @ diff + (a * a).sum() / (n1 - 1) + (b * b).sum() / (n2 - 1) - 2 * cross)
