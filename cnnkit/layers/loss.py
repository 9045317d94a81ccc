"""Losses on class scores (N, classes) with integer labels (N,): mean over the batch."""

from __future__ import annotations

import numpy as np

from ..errors import ShapeError


def _check(name: str, scores, y):
    if not isinstance(scores, np.ndarray) or scores.ndim != 2 or scores.shape[0] < 1:
        raise ShapeError(f"{name}: expected scores of shape (N, classes) with N >= 1, got "
                         f"{getattr(scores, 'shape', type(scores).__name__)}")
    if not np.issubdtype(scores.dtype, np.floating):
        raise ShapeError(f"{name}: expected floating-point scores, got dtype {scores.dtype}")
    y = np.asarray(y)
    if y.shape != (scores.shape[0],) or not np.issubdtype(y.dtype, np.integer):
        raise ShapeError(f"{name}: expected integer labels of shape ({scores.shape[0]},), got "
                         f"{y.dtype} array of shape {y.shape}")
    if y.size and (y.min() < 0 or y.max() >= scores.shape[1]):
        raise ShapeError(f"{name}: labels must lie in [0, {scores.shape[1] - 1}], got range "
                         f"[{y.min()}, {y.max()}]")
    return y


def softmax_loss(scores: np.ndarray, y: np.ndarray) -> tuple[float, np.ndarray]:
    """Softmax cross-entropy: L = mean_i -log(e^{s_{y_i}} / sum_j e^{s_j}). Returns (loss, dscores)."""
    y = _check("softmax_loss", scores, y)
    N = scores.shape[0]
    shifted = scores - scores.max(axis=1, keepdims=True)  # exp can't overflow
    log_probs = shifted - np.log(np.exp(shifted).sum(axis=1, keepdims=True))
    loss = -log_probs[np.arange(N), y].mean()
    dscores = np.exp(log_probs)
    dscores[np.arange(N), y] -= 1
    return float(loss), dscores / N


def svm_loss(scores: np.ndarray, y: np.ndarray, delta: float = 1.0) -> tuple[float, np.ndarray]:
    """Multiclass SVM: L = mean_i sum_{j != y_i} max(0, s_j - s_{y_i} + delta). Returns (loss, dscores)."""
    y = _check("svm_loss", scores, y)
    N = scores.shape[0]
    margins = np.maximum(0, scores - scores[np.arange(N), y][:, None] + delta)
    margins[np.arange(N), y] = 0
    loss = margins.sum() / N
    dscores = (margins > 0).astype(scores.dtype)
    dscores[np.arange(N), y] = -dscores.sum(axis=1)
    return float(loss), dscores / N
