"""Neural collapse metrics NC0 to NC4, singular values of W and M, and ||W||_F, in float64.
Conventions (docs/metrics.md): mu_G is the mean of the class means, Sigma_W is divided by N,
NC4 uses no bias, and NC2, NC2W, NC2M and NC3 carry no 1/K^2 or 1/(K p) prefactor."""

from __future__ import annotations

import logging
from collections.abc import Iterable
from typing import Any, Union

import numpy as np
import torch

from pipeline.stats import ClassStats

logger = logging.getLogger(__name__)

ArrayLike = Union[np.ndarray, torch.Tensor]
"""A numpy array or a tensor of any dtype and device; metrics convert it to float64."""

METRIC_NAMES: tuple[str, ...] = (
    "NC0",
    "NC0_normalized",
    "alpha",
    "NC1",
    "NC2",
    "NC2_n",
    "NC2_a",
    "NC2W",
    "NC2W_n",
    "NC2W_a",
    "NC2M",
    "NC3",
    "NC4",
    "W_sv_min",
    "W_sv_mean_rest",
    "M_sv_min",
    "M_sv_mean_rest",
    "W_norm",
)
"""Scalar metric names in report order; ``compute_metrics`` returns NC4 only with test features."""

# Metrics grouped by the inputs they read. compute_metrics sets a whole group to NaN
# with one warning when an input is unusable, instead of one warning per metric.
_WEIGHT_METRICS = ("NC0", "NC0_normalized", "alpha", "NC2W", "NC2W_n", "NC2W_a", "W_sv_min", "W_sv_mean_rest", "W_norm")
_MEANS_METRICS = ("NC1", "NC2", "NC2_n", "NC2_a", "M_sv_min", "M_sv_mean_rest")
_JOINT_METRICS = ("NC2M", "NC3", "NC4")

NC4_CHUNK_ROWS = 4096
"""Test features converted to float64 at a time by :func:`nc4`."""


# -- helpers -------------------------------------------------------------------


def _nan_with_warning(metric: str, reason: str) -> float:
    logger.warning("metric=%s result=nan reason=%s", metric, reason)
    return float("nan")


def to_float64_array(value: Any) -> np.ndarray:
    """Convert a tensor (any dtype or device) or array-like to a float64 numpy array on the CPU."""
    if isinstance(value, torch.Tensor):
        return value.detach().to(device="cpu", dtype=torch.float64).numpy()
    return np.asarray(value, dtype=np.float64)


def _all_finite(*arrays: np.ndarray) -> bool:
    return all(bool(np.isfinite(array).all()) for array in arrays)


def simplex_etf_gram(num_classes: int) -> np.ndarray:
    """Return M* = (I_K - J_K / K) / sqrt(K - 1), the unit-Frobenius Gram matrix of a simplex ETF."""
    if num_classes < 2:
        raise ValueError(f"a simplex ETF needs at least 2 classes, got {num_classes}")
    eye = np.eye(num_classes)
    ones = np.ones((num_classes, num_classes))
    return (eye - ones / num_classes) / np.sqrt(num_classes - 1)


def centre_class_means(class_means: np.ndarray) -> np.ndarray:
    """Subtract the global mean mu_G, the mean of the class means, from each row of (K, p) means.

    The result is M^T: row k is mubar_k.
    """
    return class_means - class_means.mean(axis=0, keepdims=True)


def _distance_to_etf(gram: np.ndarray, metric: str) -> float:
    """Return ||G / ||G||_F - M*||_F for a K x K matrix G, or NaN when G is zero or not finite."""
    if not _all_finite(gram):
        return _nan_with_warning(metric, "non_finite_input")
    norm = np.linalg.norm(gram)
    if norm == 0.0:
        return _nan_with_warning(metric, "zero_matrix")
    return float(np.linalg.norm(gram / norm - simplex_etf_gram(gram.shape[0])))


def _equinorm_deviation(vectors: np.ndarray, metric: str) -> float:
    """Return std_k ||v_k|| / mean_k ||v_k|| over the rows v_k (population std, ddof = 0)."""
    if not _all_finite(vectors):
        return _nan_with_warning(metric, "non_finite_input")
    norms = np.linalg.norm(vectors, axis=1)
    mean_norm = norms.mean()
    if mean_norm == 0.0:
        return _nan_with_warning(metric, "all_rows_zero")
    return float(norms.std() / mean_norm)


def _equiangular_deviation(vectors: np.ndarray, metric: str) -> float:
    """Return the mean over k != k' of |cos(v_k, v_k') + 1/(K-1)| over the K rows v_k."""
    if not _all_finite(vectors):
        return _nan_with_warning(metric, "non_finite_input")
    num_rows = vectors.shape[0]
    norms = np.linalg.norm(vectors, axis=1)
    if np.any(norms == 0.0):
        zero_rows = np.flatnonzero(norms == 0.0).tolist()
        return _nan_with_warning(metric, f"zero_rows={zero_rows}")
    unit = vectors / norms[:, None]
    cosines = unit @ unit.T
    off_diagonal = ~np.eye(num_rows, dtype=bool)
    return float(np.abs(cosines[off_diagonal] + 1.0 / (num_rows - 1)).mean())


# -- NC0 and the weight norm ----------------------------------------------------


def nc0(weight: ArrayLike) -> float:
    """Return NC0 = ||W^T 1_K||_2 / p, the norm of the sum of the rows of W (K, p), divided by p."""
    weight = to_float64_array(weight)
    if not _all_finite(weight):
        return _nan_with_warning("NC0", "non_finite_input")
    return float(np.linalg.norm(weight.sum(axis=0)) / weight.shape[1])


def nc0_normalized(weight: ArrayLike) -> float:
    """Return NC0 / ||W||_F; NaN with a warning when W = 0."""
    weight = to_float64_array(weight)
    if not _all_finite(weight):
        return _nan_with_warning("NC0_normalized", "non_finite_input")
    norm = np.linalg.norm(weight)
    if norm == 0.0:
        return _nan_with_warning("NC0_normalized", "zero_weight")
    return nc0(weight) / float(norm)


def alpha(weight: ArrayLike) -> float:
    """Return alpha = ||W^T 1_K||_2^2 / K, the form of NC0 used by the theory."""
    weight = to_float64_array(weight)
    if not _all_finite(weight):
        return _nan_with_warning("alpha", "non_finite_input")
    row_sum = weight.sum(axis=0)
    return float(row_sum @ row_sum / weight.shape[0])


def weight_norm(weight: ArrayLike) -> float:
    """Return ||W||_F."""
    weight = to_float64_array(weight)
    if not _all_finite(weight):
        return _nan_with_warning("W_norm", "non_finite_input")
    return float(np.linalg.norm(weight))


# -- NC1 -------------------------------------------------------------------------


def nc1_from_moments(within_covariance: ArrayLike, centred_means: ArrayLike) -> float:
    """Return NC1 = Tr(Sigma_W Sigma_B^+) / K from Sigma_W (p, p) and M^T (K, p).

    With the thin SVD M = U S V^T, Sigma_B = M M^T / K = U diag(s^2 / K) U^T, so
    NC1 = sum_i u_i^T Sigma_W u_i / s_i^2 over the directions kept: at most K - 1
    (the columns of M sum to zero) and only those with s_i > max(p, K) * eps * s_1.
    The cost is O(p K^2) for the SVD and O(p^2 K) for the projection, and no p x p
    pseudo-inverse is formed. When fewer than K - 1 directions remain (p < K - 1,
    or class means on a lower-dimensional subspace) the value uses the directions
    kept and a warning is logged; with none left (M = 0) the result is NaN.
    """
    within_covariance = to_float64_array(within_covariance)
    centred_means = to_float64_array(centred_means)
    num_classes, dim = centred_means.shape
    if not _all_finite(within_covariance, centred_means):
        return _nan_with_warning("NC1", "non_finite_input")

    try:
        basis, singular_values, _ = np.linalg.svd(centred_means.T, full_matrices=False)
    except np.linalg.LinAlgError as error:
        return _nan_with_warning("NC1", f"svd_failed error={error}")
    if singular_values[0] == 0.0:
        return _nan_with_warning("NC1", "zero_class_means")

    cutoff = max(dim, num_classes) * np.finfo(np.float64).eps * singular_values[0]
    rank = min(num_classes - 1, int(np.count_nonzero(singular_values > cutoff)))
    if rank < num_classes - 1:
        logger.warning(
            "metric=NC1 between_class_rank=%d expected_rank=%d dim=%d "
            "note=pseudo-inverse restricted to the available range",
            rank,
            num_classes - 1,
            dim,
        )
    range_basis = basis[:, :rank]
    projected_variance = np.einsum("pi,pq,qi->i", range_basis, within_covariance, range_basis)
    return float(np.sum(projected_variance / singular_values[:rank] ** 2))


def nc1(stats: ClassStats) -> float:
    """Return NC1 of the features summarised by ``stats``; NaN with a warning if a class is empty."""
    reason = class_statistics_problem(stats)
    if reason is not None:
        return _nan_with_warning("NC1", reason)
    class_means = to_float64_array(stats.means())
    return nc1_from_moments(to_float64_array(stats.within_covariance()), centre_class_means(class_means))


# -- NC2, NC2W, NC2M, NC3 --------------------------------------------------------


def nc2(centred_means: ArrayLike) -> float:
    """Return NC2 = ||M^T M / ||M^T M||_F - M*||_F for M^T (K, p); NaN with a warning when M = 0."""
    centred_means = to_float64_array(centred_means)
    return _distance_to_etf(centred_means @ centred_means.T, "NC2")


def nc2_n(centred_means: ArrayLike) -> float:
    """Return NC2_n = std_k ||mubar_k|| / mean_k ||mubar_k|| (population std)."""
    return _equinorm_deviation(to_float64_array(centred_means), "NC2_n")


def nc2_a(centred_means: ArrayLike) -> float:
    """Return NC2_a = mean over k != k' of |cos(mubar_k, mubar_k') + 1/(K-1)|."""
    return _equiangular_deviation(to_float64_array(centred_means), "NC2_a")


def nc2w(weight: ArrayLike) -> float:
    """Return NC2W = ||W W^T / ||W W^T||_F - M*||_F; NaN with a warning when W = 0."""
    weight = to_float64_array(weight)
    return _distance_to_etf(weight @ weight.T, "NC2W")


def nc2w_n(weight: ArrayLike) -> float:
    """Return NC2W_n = std_k ||w_k|| / mean_k ||w_k|| over the rows of W (population std)."""
    return _equinorm_deviation(to_float64_array(weight), "NC2W_n")


def nc2w_a(weight: ArrayLike) -> float:
    """Return NC2W_a = mean over k != k' of |cos(w_k, w_k') + 1/(K-1)|."""
    return _equiangular_deviation(to_float64_array(weight), "NC2W_a")


def nc2m(weight: ArrayLike, centred_means: ArrayLike) -> float:
    """Return NC2M = ||W M / ||W M||_F - M*||_F for W (K, p) and M^T (K, p)."""
    weight = to_float64_array(weight)
    centred_means = to_float64_array(centred_means)
    return _distance_to_etf(weight @ centred_means.T, "NC2M")


def nc3(weight: ArrayLike, centred_means: ArrayLike) -> float:
    """Return NC3 = ||W / ||W||_F - M^T / ||M||_F||_F; NaN with a warning when W = 0 or M = 0."""
    weight = to_float64_array(weight)
    centred_means = to_float64_array(centred_means)
    if not _all_finite(weight, centred_means):
        return _nan_with_warning("NC3", "non_finite_input")
    weight_frobenius = np.linalg.norm(weight)
    means_frobenius = np.linalg.norm(centred_means)
    if weight_frobenius == 0.0:
        return _nan_with_warning("NC3", "zero_weight")
    if means_frobenius == 0.0:
        return _nan_with_warning("NC3", "zero_class_means")
    return float(np.linalg.norm(weight / weight_frobenius - centred_means / means_frobenius))


# -- NC4 -------------------------------------------------------------------------


def _iter_float64_chunks(features: Any, chunk_rows: int) -> Iterable[np.ndarray]:
    for start in range(0, features.shape[0], chunk_rows):
        yield to_float64_array(features[start : start + chunk_rows])


def nc4(weight: ArrayLike, class_means: ArrayLike, test_features: ArrayLike, *, chunk_rows: int = NC4_CHUNK_ROWS) -> float:
    """Return NC4, the fraction of test features h with argmax_k <w_k, h> = argmin_k ||h - mu_k||.

    ``class_means`` are the train class means mu_k (K, p), uncentred. The classifier
    uses no bias. ``test_features`` (N_test, p) may be a tensor on any device, and
    is converted ``chunk_rows`` rows at a time. Ties go to the lowest class index
    on both sides. NaN with a warning when there are no test features.
    """
    weight = to_float64_array(weight)
    class_means = to_float64_array(class_means)
    num_test = int(test_features.shape[0])
    if num_test == 0:
        return _nan_with_warning("NC4", "no_test_features")
    if not _all_finite(weight, class_means):
        return _nan_with_warning("NC4", "non_finite_input")

    # Distances are compared after subtracting mu_G from h and mu_k, which leaves the
    # argmin unchanged and keeps ||mu_k||^2 - 2 <h, mu_k> free of a large common offset.
    global_mean = class_means.mean(axis=0)
    centred_means = class_means - global_mean
    squared_mean_norms = np.einsum("kp,kp->k", centred_means, centred_means)

    agreeing = 0
    for chunk in _iter_float64_chunks(test_features, chunk_rows):
        if not _all_finite(chunk):
            return _nan_with_warning("NC4", "non_finite_test_features")
        classifier_prediction = np.argmax(chunk @ weight.T, axis=1)
        distance_offset = squared_mean_norms[None, :] - 2.0 * (chunk - global_mean) @ centred_means.T
        nearest_mean_prediction = np.argmin(distance_offset, axis=1)
        agreeing += int(np.count_nonzero(classifier_prediction == nearest_mean_prediction))
    return agreeing / num_test


# -- spectra ---------------------------------------------------------------------


def singular_values(matrix: ArrayLike) -> np.ndarray:
    """Return the min(rows, columns) singular values of a matrix in descending order.

    A non-finite matrix gives all NaN.
    """
    matrix = to_float64_array(matrix)
    count = min(matrix.shape)
    if not _all_finite(matrix):
        return np.full(count, np.nan)
    try:
        return np.linalg.svd(matrix, compute_uv=False)
    except np.linalg.LinAlgError:
        logger.warning("statistic=singular_values result=nan reason=svd_failed shape=%s", matrix.shape)
        return np.full(count, np.nan)


def spectrum_summary(values: np.ndarray, name: str) -> tuple[float, float]:
    """Return (smallest singular value, mean of the others) from descending singular values.

    The mean of the others is NaN, with a warning, when there is a single value.
    """
    if values.size == 0 or not _all_finite(values):
        return _nan_with_warning(f"{name}_sv_min", "no_finite_singular_values"), float("nan")
    smallest = float(values[-1])
    if values.size == 1:
        return smallest, _nan_with_warning(f"{name}_sv_mean_rest", "single_singular_value")
    return smallest, float(values[:-1].mean())


def compute_spectra(stats: ClassStats, weight: ArrayLike) -> dict[str, np.ndarray]:
    """Return the singular values of W and of M, each in descending order, for plots.

    Keys: ``W_singular_values`` (min(K, p) values) and ``M_singular_values``
    (min(p, K) values; the smallest is zero up to rounding because the columns of M
    sum to zero). M's values are NaN, with a warning, when a class has no samples.
    """
    weight = _checked_weight(weight, stats)
    reason = class_statistics_problem(stats)
    if reason is None:
        centred = centre_class_means(to_float64_array(stats.means()))
        means_values = singular_values(centred.T)
    else:
        logger.warning("statistic=M_singular_values result=nan reason=%s", reason)
        means_values = np.full(min(stats.dim, stats.num_classes), np.nan)
    return {"W_singular_values": singular_values(weight), "M_singular_values": means_values}


# -- all metrics -----------------------------------------------------------------


def class_statistics_problem(stats: ClassStats) -> str | None:
    """Return why the class means of ``stats`` cannot be used (as a log reason), or None when they can."""
    counts = stats.counts.cpu()
    if int(counts.sum()) == 0:
        return "no_samples"
    empty = torch.nonzero(counts == 0).flatten().tolist()
    if empty:
        return f"empty_classes={empty}"
    if not (bool(torch.isfinite(stats.means()).all()) and bool(torch.isfinite(stats.scatter()).all())):
        return "non_finite_features"
    return None


def _checked_weight(weight: Any, stats: ClassStats) -> np.ndarray:
    weight = to_float64_array(weight)
    expected = (stats.num_classes, stats.dim)
    if weight.shape != expected:
        raise ValueError(f"weight must have shape (K, p) = {expected} to match the statistics, got {weight.shape}")
    return weight


def _check_test_arrays(stats: ClassStats, test_features: Any, test_labels: Any) -> None:
    if test_features is None:
        if test_labels is not None:
            raise ValueError("test_labels were given without test_features; pass both or neither")
        return
    shape = tuple(test_features.shape)
    if len(shape) != 2 or shape[1] != stats.dim:
        raise ValueError(f"test_features must have shape (N_test, {stats.dim}), got {shape}")
    if test_labels is None:
        return
    labels = np.asarray(test_labels.cpu() if isinstance(test_labels, torch.Tensor) else test_labels)
    if labels.shape != (shape[0],):
        raise ValueError(f"test_labels must have shape ({shape[0]},) to match test_features, got {labels.shape}")
    if labels.size and (labels.min() < 0 or labels.max() >= stats.num_classes):
        raise ValueError(
            f"test_labels must lie in 0..{stats.num_classes - 1}, got values from {labels.min()} to {labels.max()}"
        )


def compute_metrics(
    stats: ClassStats,
    weight: ArrayLike,
    bias: ArrayLike | None = None,
    *,
    test_features: ArrayLike | None = None,
    test_labels: ArrayLike | None = None,
) -> dict[str, float]:
    """Compute every scalar of METRIC_NAMES as plain Python floats, in that order.

    ``weight`` is W (K, p) as a tensor or array of any dtype. ``bias`` (K,) is
    checked for shape but enters no metric, because NC4 compares the classifier
    without bias. NC4 is computed, and its key present, only when
    ``test_features`` (N_test, p) is given. ``test_labels`` are optional and only
    checked for shape and range, because NC4 does not use them.
    Raises ValueError for arrays whose shapes do not match ``stats``. Degenerate
    inputs (an empty class, W = 0, M = 0, non-finite values) do not raise. They
    give NaN for the metrics they affect and log a warning that names the reason.
    """
    weight = _checked_weight(weight, stats)
    if bias is not None and tuple(bias.shape) != (stats.num_classes,):
        raise ValueError(f"bias must have shape ({stats.num_classes},), got {tuple(bias.shape)}")
    _check_test_arrays(stats, test_features, test_labels)

    names = [name for name in METRIC_NAMES if name != "NC4" or test_features is not None]
    results = dict.fromkeys(names, float("nan"))

    weight_usable = _all_finite(weight)
    if not weight_usable:
        logger.warning("input=weight reason=non_finite result=nan metrics=%s", ",".join(_WEIGHT_METRICS + _JOINT_METRICS))
    means_problem = class_statistics_problem(stats)
    if means_problem is not None:
        logger.warning(
            "input=class_statistics reason=%s result=nan metrics=%s",
            means_problem,
            ",".join(_MEANS_METRICS + _JOINT_METRICS),
        )

    if weight_usable:
        results["NC0"] = nc0(weight)
        results["NC0_normalized"] = nc0_normalized(weight)
        results["alpha"] = alpha(weight)
        results["NC2W"] = nc2w(weight)
        results["NC2W_n"] = nc2w_n(weight)
        results["NC2W_a"] = nc2w_a(weight)
        results["W_sv_min"], results["W_sv_mean_rest"] = spectrum_summary(singular_values(weight), "W")
        results["W_norm"] = weight_norm(weight)

    if means_problem is None:
        class_means = to_float64_array(stats.means())
        centred = centre_class_means(class_means)
        results["NC1"] = nc1_from_moments(to_float64_array(stats.within_covariance()), centred)
        results["NC2"] = nc2(centred)
        results["NC2_n"] = nc2_n(centred)
        results["NC2_a"] = nc2_a(centred)
        results["M_sv_min"], results["M_sv_mean_rest"] = spectrum_summary(singular_values(centred.T), "M")
        if weight_usable:
            results["NC2M"] = nc2m(weight, centred)
            results["NC3"] = nc3(weight, centred)
            if test_features is not None:
                results["NC4"] = nc4(weight, class_means, test_features)

    return {name: float(value) for name, value in results.items()}
