"""Accuracy figures computed from predictions: Top-k, confusion matrix, per-class accuracy and the
agreement of two models. Plain numpy on integer arrays, so sharded counts add up exactly."""

from __future__ import annotations

import numpy as np


def top_k_correct(top_k: np.ndarray, labels: np.ndarray) -> int:
    """`top_k`: (images, k) class ids, best first. Counts images whose label is among them."""
    return int(np.sum(np.any(top_k == labels[:, None], axis=1)))


def confusion_matrix(predicted: np.ndarray, labels: np.ndarray, class_count: int) -> np.ndarray:
    """Rows are the true classes, columns the predicted ones."""
    matrix = np.zeros((class_count, class_count), np.int64)
    np.add.at(matrix, (labels, predicted), 1)
    return matrix


def per_class_accuracy(matrix: np.ndarray, class_names: list[str]) -> dict[str, float | None]:
    """Share of each class's images predicted right; None for a class with no image."""
    totals = matrix.sum(axis=1)
    return {name: (float(matrix[i, i] / totals[i]) if totals[i] else None) for i, name in enumerate(class_names)}


def agreement(predicted: np.ndarray | list[int], reference: np.ndarray | list[int]) -> float:
    """Share of images on which two models predict the same class."""
    return float(np.mean(np.asarray(predicted) == np.asarray(reference))) if len(reference) else 1.0
