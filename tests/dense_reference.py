"""Plain dense float64 numpy implementation of the NC metrics, written straight from
the formulas over the full feature matrix; the tests and the benchmark compare the
streaming engine in pipeline.metrics against it.
"""

from __future__ import annotations

import numpy as np

PINV_RCOND = 1e-10
"""Relative eigenvalue cutoff of the pseudo-inverse of Sigma_B (eigenvalues are s_i^2 / K)."""


def etf_gram(num_classes: int) -> np.ndarray:
    """Return M* = (I - J / K) / sqrt(K - 1)."""
    return (np.eye(num_classes) - np.ones((num_classes, num_classes)) / num_classes) / np.sqrt(num_classes - 1)


def class_means(features: np.ndarray, labels: np.ndarray, num_classes: int) -> np.ndarray:
    """Return the (K, p) class means, one boolean mask per class."""
    return np.stack([features[labels == k].mean(axis=0) for k in range(num_classes)])


def within_covariance(features: np.ndarray, labels: np.ndarray, means: np.ndarray) -> np.ndarray:
    """Return Sigma_W = (1/N) sum_n (h_n - mu_{y_n})(h_n - mu_{y_n})^T."""
    centred = features - means[labels]
    return centred.T @ centred / features.shape[0]


def between_pinv(between: np.ndarray, num_classes: int) -> np.ndarray:
    """Return the pseudo-inverse of the symmetric Sigma_B through its eigen-decomposition.

    Eigenvalues below PINV_RCOND times the largest are dropped, and at most the
    K - 1 largest are kept.
    """
    eigenvalues, eigenvectors = np.linalg.eigh(between)
    order = np.argsort(eigenvalues)[::-1][: num_classes - 1]
    eigenvalues, eigenvectors = eigenvalues[order], eigenvectors[:, order]
    keep = eigenvalues > PINV_RCOND * eigenvalues[0]
    eigenvalues, eigenvectors = eigenvalues[keep], eigenvectors[:, keep]
    return eigenvectors @ np.diag(1.0 / eigenvalues) @ eigenvectors.T


def distance_to_etf(gram: np.ndarray) -> float:
    return float(np.linalg.norm(gram / np.linalg.norm(gram) - etf_gram(gram.shape[0])))


def equinorm(vectors: np.ndarray) -> float:
    norms = np.linalg.norm(vectors, axis=1)
    return float(np.std(norms) / np.mean(norms))


def equiangular(vectors: np.ndarray) -> float:
    num_rows = vectors.shape[0]
    total = 0.0
    for k in range(num_rows):
        for other in range(num_rows):
            if k == other:
                continue
            cosine = vectors[k] @ vectors[other] / (np.linalg.norm(vectors[k]) * np.linalg.norm(vectors[other]))
            total += abs(cosine + 1.0 / (num_rows - 1))
    return total / (num_rows * (num_rows - 1))


def nc4(weight: np.ndarray, means: np.ndarray, test_features: np.ndarray, chunk_rows: int = 1000) -> float:
    """Return the fraction of test features whose argmax_k <w_k, h> equals argmin_k ||h - mu_k||."""
    agreeing = 0
    for start in range(0, test_features.shape[0], chunk_rows):
        chunk = test_features[start : start + chunk_rows]
        classifier = np.argmax(chunk @ weight.T, axis=1)
        distances = np.linalg.norm(chunk[:, None, :] - means[None, :, :], axis=2)
        agreeing += int(np.sum(classifier == np.argmin(distances, axis=1)))
    return agreeing / test_features.shape[0]


def dense_metrics(
    features: np.ndarray,
    labels: np.ndarray,
    weight: np.ndarray,
    test_features: np.ndarray | None = None,
) -> dict[str, float]:
    """Compute every metric of pipeline.metrics.METRIC_NAMES from the full (N, p) feature matrix."""
    features = np.asarray(features, dtype=np.float64)
    weight = np.asarray(weight, dtype=np.float64)
    labels = np.asarray(labels)
    num_classes, dim = weight.shape

    means = class_means(features, labels, num_classes)
    global_mean = means.mean(axis=0)
    means_matrix = (means - global_mean).T  # M, (p, K)
    sigma_w = within_covariance(features, labels, means)
    sigma_b = means_matrix @ means_matrix.T / num_classes
    row_sum = weight.T @ np.ones(num_classes)

    weight_values = np.linalg.svd(weight, compute_uv=False)
    means_values = np.linalg.svd(means_matrix, compute_uv=False)
    nc0 = np.linalg.norm(row_sum) / dim

    results = {
        "NC0": nc0,
        "NC0_normalized": nc0 / np.linalg.norm(weight),
        "alpha": row_sum @ row_sum / num_classes,
        "NC1": np.trace(sigma_w @ between_pinv(sigma_b, num_classes)) / num_classes,
        "NC2": distance_to_etf(means_matrix.T @ means_matrix),
        "NC2_n": equinorm(means_matrix.T),
        "NC2_a": equiangular(means_matrix.T),
        "NC2W": distance_to_etf(weight @ weight.T),
        "NC2W_n": equinorm(weight),
        "NC2W_a": equiangular(weight),
        "NC2M": distance_to_etf(weight @ means_matrix),
        "NC3": np.linalg.norm(weight / np.linalg.norm(weight) - means_matrix.T / np.linalg.norm(means_matrix)),
        "W_sv_min": weight_values[-1],
        "W_sv_mean_rest": weight_values[:-1].mean(),
        "M_sv_min": means_values[-1],
        "M_sv_mean_rest": means_values[:-1].mean(),
        "W_norm": np.linalg.norm(weight),
    }
    if test_features is not None:
        results["NC4"] = nc4(weight, means, np.asarray(test_features, dtype=np.float64))
    return {name: float(value) for name, value in results.items()}
