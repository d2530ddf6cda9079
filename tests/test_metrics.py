"""Tests of the NC metrics in pipeline.metrics against hand-computed values, a simplex
ETF, invariances, the dense float64 reference and degenerate inputs."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from tests.dense_reference import dense_metrics
from pipeline import metrics
from pipeline.metrics import METRIC_NAMES, compute_metrics, compute_spectra
from pipeline.stats import ClassStats

SCALE_FREE = ("NC1", "NC2", "NC2_n", "NC2_a", "NC2W", "NC2W_n", "NC2W_a", "NC2M", "NC3", "NC4", "NC0_normalized")


def random_problem(num_classes: int, dim: int, num_samples: int, seed: int, *, imbalanced: bool = False):
    """Return seeded float64 features (N, p), labels (N,), weight (K, p) and test features."""
    rng = np.random.default_rng(seed)
    if imbalanced:
        weights = np.arange(1, num_classes + 1, dtype=np.float64) ** 2
        labels = rng.choice(num_classes, size=num_samples, p=weights / weights.sum())
    else:
        labels = rng.integers(0, num_classes, size=num_samples)
    labels[:num_classes] = np.arange(num_classes)
    centres = 2.0 * rng.normal(size=(num_classes, dim)) + 0.5
    features = centres[labels] + rng.normal(size=(num_samples, dim)) * rng.uniform(0.5, 2.0, size=dim)
    weight = rng.normal(size=(num_classes, dim)) + 0.3 * centres
    test_features = centres[rng.integers(0, num_classes, size=400)] + 2.0 * rng.normal(size=(400, dim))
    return features, labels, weight, test_features


def engine_metrics(features, labels, weight, test_features=None, **kwargs):
    num_classes = weight.shape[0]
    stats = ClassStats.from_features(torch.as_tensor(features), torch.as_tensor(labels), num_classes, **kwargs)
    return compute_metrics(stats, weight, test_features=test_features)


def simplex_etf_problem(num_classes: int, dim: int, seed: int):
    """Return features at the vertices of a rotated simplex ETF, W = M^T, and random test features.

    The global mean is orthogonal to the span of the class means, so argmax <w_k, h>
    and the nearest class mean agree for every h.
    """
    rng = np.random.default_rng(seed)
    basis, _ = np.linalg.qr(rng.normal(size=(dim, dim)))
    vertices = np.sqrt(num_classes / (num_classes - 1)) * (np.eye(num_classes) - 1.0 / num_classes)
    centred_means = 3.0 * vertices @ basis[:num_classes]
    global_mean = 5.0 * basis[num_classes]
    labels = np.repeat(np.arange(num_classes), 4)
    features = centred_means[labels] + global_mean
    test_features = 4.0 * rng.normal(size=(300, dim))
    return features, labels, centred_means.copy(), test_features


# -- simplex ETF and invariances ---------------------------------------------------


def test_simplex_etf_gives_perfect_collapse():
    features, labels, weight, test_features = simplex_etf_problem(5, 8, seed=0)
    result = engine_metrics(features, labels, weight, test_features)

    for name in ("NC0", "alpha", "NC1", "NC2", "NC2_n", "NC2_a", "NC2W", "NC2W_n", "NC2W_a", "NC2M", "NC3"):
        assert abs(result[name]) < 1e-12, f"{name} = {result[name]}"
    assert result["NC4"] == 1.0
    assert result["M_sv_min"] < 1e-12
    # Every nonzero singular value of a simplex ETF with row norm 3 is 3 * sqrt(K / (K - 1)).
    assert result["M_sv_mean_rest"] == pytest.approx(3.0 * math.sqrt(5 / 4), rel=1e-12)


def test_simplex_etf_nc1_positive_with_noise():
    features, labels, weight, _ = simplex_etf_problem(5, 8, seed=1)
    noisy = features + 0.1 * np.random.default_rng(1).normal(size=features.shape)
    assert engine_metrics(noisy, labels, weight)["NC1"] > 1e-4


def test_metrics_invariant_under_rotation():
    features, labels, weight, test_features = random_problem(6, 10, 600, seed=2)
    rotation, _ = np.linalg.qr(np.random.default_rng(2).normal(size=(10, 10)))
    original = engine_metrics(features, labels, weight, test_features)
    rotated = engine_metrics(features @ rotation, labels, weight @ rotation, test_features @ rotation)

    for name in METRIC_NAMES:
        assert rotated[name] == pytest.approx(original[name], rel=1e-9, abs=1e-12), name


def test_metrics_invariant_under_scaling():
    features, labels, weight, test_features = random_problem(6, 10, 600, seed=3)
    original = engine_metrics(features, labels, weight, test_features)
    scaled = engine_metrics(7.5 * features, labels, 0.02 * weight, 7.5 * test_features)

    for name in SCALE_FREE:
        assert scaled[name] == pytest.approx(original[name], rel=1e-9, abs=1e-12), name
    assert scaled["NC0"] == pytest.approx(0.02 * original["NC0"], rel=1e-12)
    assert scaled["alpha"] == pytest.approx(0.02**2 * original["alpha"], rel=1e-12)
    assert scaled["W_norm"] == pytest.approx(0.02 * original["W_norm"], rel=1e-12)
    assert scaled["M_sv_mean_rest"] == pytest.approx(7.5 * original["M_sv_mean_rest"], rel=1e-12)


def test_simplex_etf_invariant_under_rotation_and_scaling():
    features, labels, weight, test_features = simplex_etf_problem(4, 6, seed=4)
    rotation, _ = np.linalg.qr(np.random.default_rng(4).normal(size=(6, 6)))
    result = engine_metrics(0.3 * features @ rotation, labels, 40.0 * weight @ rotation, test_features @ rotation)
    for name in ("NC1", "NC2", "NC2W", "NC2M", "NC3"):
        assert abs(result[name]) < 1e-12, name
    assert result["NC4"] == 1.0


# -- hand-computed cases ------------------------------------------------------------


def test_metrics_hand_computed_two_classes():
    # Class 0: (2, 1), (0, -1), mean (1, 0). Class 1: (0, 1), (-2, -1), mean (-1, 0).
    # Every deviation is +-(1, 1), so Sigma_W = [[1, 1], [1, 1]]; Sigma_B = [[1, 0], [0, 0]]
    # and NC1 = Tr(Sigma_W Sigma_B^+) / 2 = 1 / 2.
    features = np.array([[2.0, 1.0], [0.0, -1.0], [0.0, 1.0], [-2.0, -1.0]])
    labels = np.array([0, 0, 1, 1])
    weight = np.eye(2)
    # Classifier / nearest mean: (3, .5) 0/0, (.1, 2) 1/0, (-1, -3) 0/1, (-2, -1) 1/1.
    test_features = np.array([[3.0, 0.5], [0.1, 2.0], [-1.0, -3.0], [-2.0, -1.0]])
    result = engine_metrics(features, labels, weight, test_features)

    expected = {
        "NC0": math.sqrt(2) / 2,  # ||(1, 1)|| / p
        "NC0_normalized": 0.5,
        "alpha": 1.0,  # ||(1, 1)||^2 / K
        "NC1": 0.5,
        "NC2": 0.0,  # M^T M / ||M^T M||_F = [[.5, -.5], [-.5, .5]] = M* for K = 2
        "NC2_n": 0.0,
        "NC2_a": 0.0,  # cos = -1, plus 1 / (K - 1)
        "NC2W": math.sqrt(2 - math.sqrt(2)),  # ||I / sqrt(2) - M*||_F
        "NC2W_n": 0.0,
        "NC2W_a": 1.0,  # orthogonal rows: |0 + 1|
        "NC2M": math.sqrt(2 - math.sqrt(2)),  # W M = [[1, -1], [0, 0]]
        "NC3": 1.0,  # ||(I - [[1, 0], [-1, 0]]) / sqrt(2)||_F
        "NC4": 0.5,
        "W_sv_min": 1.0,
        "W_sv_mean_rest": 1.0,
        "M_sv_min": 0.0,
        "M_sv_mean_rest": math.sqrt(2),
        "W_norm": math.sqrt(2),
    }
    assert list(result) == list(METRIC_NAMES)
    for name, value in expected.items():
        assert result[name] == pytest.approx(value, rel=1e-12, abs=1e-14), name


def test_metrics_hand_computed_three_classes():
    # Class means 3 e_k, so mu_G = (1, 1, 1) and mubar_k = 3 e_k - 1: a simplex ETF with
    # M^T M = 9 (I - J / 3) and Sigma_B = 3 I - J, whose pseudo-inverse is (I - J / 3) / 3.
    # Deviations: class 0 +-(1, 1, 1), outside the range of Sigma_B; class 1 +-(1, -1, 0);
    # class 2 none. Sigma_W = (2 J + 2 v v^T) / 6 with v = (1, -1, 0), so
    # NC1 = Tr(Sigma_W Sigma_B^+) / 3 = (2 ||v||^2 / 6) / 9 = 2 / 27.
    features = np.array(
        [
            [4.0, 1.0, 1.0],
            [2.0, -1.0, -1.0],
            [1.0, 2.0, 0.0],
            [-1.0, 4.0, 0.0],
            [0.0, 0.0, 3.0],
            [0.0, 0.0, 3.0],
        ]
    )
    labels = np.array([0, 0, 1, 1, 2, 2])
    weight = np.diag([1.0, 2.0, 2.0])
    result = engine_metrics(features, labels, weight)

    expected = {
        "NC0": 1.0,  # ||(1, 2, 2)|| / 3
        "NC0_normalized": 1.0 / 3.0,
        "alpha": 3.0,
        "NC1": 2.0 / 27.0,
        "NC2": 0.0,
        "NC2_n": 0.0,
        "NC2_a": 0.0,  # cos = -1/2, plus 1/2
        # ||W W^T||_F = sqrt(33) and <W W^T, M*> = 3 sqrt(2).
        "NC2W": math.sqrt(2 - 6 * math.sqrt(2 / 33)),
        # Row norms 1, 2, 2: population std sqrt(2) / 3 over mean 5 / 3.
        "NC2W_n": math.sqrt(2) / 5,
        "NC2W_a": 0.5,
        # W M = [[2, -1, -1], [-2, 4, -2], [-2, -2, 4]]: ||W M||_F = 3 sqrt(6), <W M, M*> = 5 sqrt(2).
        "NC2M": math.sqrt(2 - 10 / (3 * math.sqrt(3))),
        # ||W||_F = 3, ||M||_F = 3 sqrt(2) and <W, M^T> = 10.
        "NC3": math.sqrt(2 - 10 * math.sqrt(2) / 9),
        "W_sv_min": 1.0,
        "W_sv_mean_rest": 2.0,
        "M_sv_min": 0.0,
        "M_sv_mean_rest": 3.0,  # sqrt of the eigenvalue 9 of 9 (I - J / 3)
        "W_norm": 3.0,
    }
    assert "NC4" not in result
    for name, value in expected.items():
        assert result[name] == pytest.approx(value, rel=1e-12, abs=1e-14), name


# -- agreement with the dense reference ---------------------------------------------


@pytest.mark.parametrize(
    ("num_classes", "dim", "num_samples", "imbalanced"),
    [
        (10, 32, 2000, False),
        (10, 64, 3000, True),
        (2, 16, 300, True),
        (100, 128, 6000, False),
        (100, 128, 6000, True),
        (20, 8, 2000, False),  # p < K - 1: Sigma_B has rank p
    ],
)
def test_metrics_match_dense_reference(num_classes, dim, num_samples, imbalanced):
    features, labels, weight, test_features = random_problem(num_classes, dim, num_samples, seed=5, imbalanced=imbalanced)
    result = engine_metrics(features, labels, weight, test_features, chunk_rows=512)
    reference = dense_metrics(features, labels, weight, test_features)

    assert set(result) == set(reference) == set(METRIC_NAMES)
    for name in METRIC_NAMES:
        # M_sv_min is zero up to rounding, so it is compared on the absolute scale.
        assert result[name] == pytest.approx(reference[name], rel=1e-9, abs=1e-12), name


def test_nc1_offset_float32_stable():
    features, labels, weight, _ = random_problem(10, 64, 5000, seed=6)
    shifted = torch.as_tensor(features + 1e3, dtype=torch.float32)
    # The same float32 values without the offset; the subtraction is exact in float64.
    centred = shifted.double() - 1e3

    streamed = ClassStats(10, 64)
    for start in range(0, 5000, 1000):
        streamed.update(shifted[start : start + 1000], torch.as_tensor(labels[start : start + 1000]))
    reference = ClassStats.from_features(centred, torch.as_tensor(labels), 10)

    assert metrics.nc1(streamed) == pytest.approx(metrics.nc1(reference), rel=1e-6)
    assert metrics.nc1(reference) == pytest.approx(dense_metrics(centred.numpy(), labels, weight)["NC1"], rel=1e-9)


def test_metrics_streaming_equals_one_shot():
    features, labels, weight, test_features = random_problem(7, 12, 1500, seed=7)
    one_shot = engine_metrics(features, labels, weight, test_features, chunk_rows=1500)
    streamed = engine_metrics(features, labels, weight, test_features, chunk_rows=37)
    for name in METRIC_NAMES:
        assert streamed[name] == pytest.approx(one_shot[name], rel=1e-10, abs=1e-12), name


def test_metrics_merged_shards_equal_one_pass():
    features, labels, weight, _ = random_problem(7, 12, 1500, seed=8)
    features_t, labels_t = torch.as_tensor(features), torch.as_tensor(labels)
    one_pass = compute_metrics(ClassStats.from_features(features_t, labels_t, 7), weight)
    shards = [ClassStats.from_features(features_t[i : i + 500], labels_t[i : i + 500], 7) for i in (0, 500, 1000)]
    merged = compute_metrics(shards[2].merge(shards[0]).merge(shards[1]), weight)
    for name in merged:
        assert merged[name] == pytest.approx(one_pass[name], rel=1e-10, abs=1e-12), name


def test_metrics_from_state_dict_recomputed():
    features, labels, weight, test_features = random_problem(5, 9, 400, seed=9)
    stats = ClassStats.from_features(torch.as_tensor(features), torch.as_tensor(labels), 5)
    restored = ClassStats.from_state_dict(stats.state_dict())
    assert compute_metrics(restored, weight, test_features=test_features) == compute_metrics(
        stats, weight, test_features=test_features
    )


# -- interface ----------------------------------------------------------------------


def test_compute_metrics_accepts_weight_dtypes():
    features, labels, weight, test_features = random_problem(4, 6, 200, seed=10)
    weight32 = weight.astype(np.float32)
    stats = ClassStats.from_features(torch.as_tensor(features).float(), torch.as_tensor(labels), 4)
    from_numpy = compute_metrics(stats, weight32, test_features=test_features)
    from_tensor = compute_metrics(stats, torch.from_numpy(weight32), test_features=torch.from_numpy(test_features).float())
    assert from_numpy.keys() == from_tensor.keys()
    for name in from_numpy:
        assert type(from_tensor[name]) is float
        assert from_tensor[name] == pytest.approx(from_numpy[name], rel=1e-6, abs=1e-9), name
    from_bfloat16 = compute_metrics(stats, torch.from_numpy(weight32).to(torch.bfloat16))
    assert all(math.isfinite(value) for value in from_bfloat16.values())


def test_compute_metrics_nc4_only_with_test_features():
    features, labels, weight, test_features = random_problem(4, 6, 200, seed=11)
    stats = ClassStats.from_features(torch.as_tensor(features), torch.as_tensor(labels), 4)
    without = compute_metrics(stats, weight)
    with_test = compute_metrics(stats, weight, test_features=test_features, test_labels=np.zeros(400, dtype=np.int64))
    assert tuple(without) == tuple(name for name in METRIC_NAMES if name != "NC4")
    assert tuple(with_test) == METRIC_NAMES


def test_compute_metrics_rejects_mismatched_shapes():
    stats = ClassStats.from_features(torch.randn(20, 5, dtype=torch.float64), torch.arange(20) % 3, 3)
    with pytest.raises(ValueError, match=r"weight must have shape \(K, p\) = \(3, 5\)"):
        compute_metrics(stats, np.ones((3, 4)))
    with pytest.raises(ValueError, match=r"bias must have shape \(3,\)"):
        compute_metrics(stats, np.ones((3, 5)), np.ones(4))
    with pytest.raises(ValueError, match=r"test_features must have shape \(N_test, 5\)"):
        compute_metrics(stats, np.ones((3, 5)), test_features=np.ones((2, 4)))
    with pytest.raises(ValueError, match=r"test_labels must lie in 0..2"):
        compute_metrics(stats, np.ones((3, 5)), test_features=np.ones((2, 5)), test_labels=np.array([0, 3]))
    with pytest.raises(ValueError, match="without test_features"):
        compute_metrics(stats, np.ones((3, 5)), test_labels=np.array([0, 1]))


def test_compute_spectra_matches_numpy():
    features, labels, weight, _ = random_problem(6, 9, 500, seed=12)
    stats = ClassStats.from_features(torch.as_tensor(features), torch.as_tensor(labels), 6)
    spectra = compute_spectra(stats, weight)
    means = stats.means().numpy()
    np.testing.assert_allclose(spectra["W_singular_values"], np.linalg.svd(weight, compute_uv=False), rtol=1e-12)
    np.testing.assert_allclose(
        spectra["M_singular_values"], np.linalg.svd(means - means.mean(axis=0), compute_uv=False), rtol=1e-10, atol=1e-12
    )
    assert spectra["W_singular_values"].shape == (6,)
    assert spectra["M_singular_values"].shape == (6,)
    result = compute_metrics(stats, weight)
    assert result["W_sv_min"] == spectra["W_singular_values"][-1]
    assert result["M_sv_mean_rest"] == pytest.approx(spectra["M_singular_values"][:-1].mean(), rel=1e-14)


def test_pure_metric_functions_match_compute_metrics():
    features, labels, weight, test_features = random_problem(5, 7, 300, seed=13)
    stats = ClassStats.from_features(torch.as_tensor(features), torch.as_tensor(labels), 5)
    result = compute_metrics(stats, weight, test_features=test_features)
    class_means = stats.means().numpy()
    centred = metrics.centre_class_means(class_means)

    assert metrics.nc0(weight) == result["NC0"]
    assert metrics.nc0_normalized(weight) == result["NC0_normalized"]
    assert metrics.alpha(weight) == result["alpha"]
    assert metrics.nc1(stats) == result["NC1"]
    assert metrics.nc2(centred) == result["NC2"]
    assert metrics.nc2_n(centred) == result["NC2_n"]
    assert metrics.nc2_a(centred) == result["NC2_a"]
    assert metrics.nc2w(weight) == result["NC2W"]
    assert metrics.nc2w_n(weight) == result["NC2W_n"]
    assert metrics.nc2w_a(weight) == result["NC2W_a"]
    assert metrics.nc2m(weight, centred) == result["NC2M"]
    assert metrics.nc3(weight, centred) == result["NC3"]
    assert metrics.nc4(weight, class_means, test_features, chunk_rows=64) == result["NC4"]
    assert metrics.weight_norm(weight) == result["W_norm"]


# -- degenerate inputs --------------------------------------------------------------


def test_metrics_empty_class_nan_with_warning(caplog):
    features, labels, weight, test_features = random_problem(4, 6, 200, seed=14)
    keep = labels != 2
    stats = ClassStats.from_features(torch.as_tensor(features[keep]), torch.as_tensor(labels[keep]), 4)
    result = compute_metrics(stats, weight, test_features=test_features)

    for name in ("NC1", "NC2", "NC2_n", "NC2_a", "NC2M", "NC3", "NC4", "M_sv_min", "M_sv_mean_rest"):
        assert math.isnan(result[name]), name
    for name in ("NC0", "NC0_normalized", "alpha", "NC2W", "NC2W_n", "NC2W_a", "W_sv_min", "W_sv_mean_rest", "W_norm"):
        assert math.isfinite(result[name]), name
    assert "reason=empty_classes=[2]" in caplog.text
    assert math.isnan(metrics.nc1(stats))
    assert np.isnan(compute_spectra(stats, weight)["M_singular_values"]).all()


def test_metrics_two_classes_defined(caplog):
    features, labels, weight, test_features = random_problem(2, 5, 100, seed=15)
    result = engine_metrics(features, labels, weight, test_features)
    assert all(math.isfinite(value) for value in result.values())
    # Two centred means are exactly opposite, so they always form a simplex ETF.
    assert result["NC2"] < 1e-12
    assert result["NC2_a"] < 1e-12
    assert "result=nan" not in caplog.text


def test_metrics_zero_weight_nan_with_warning(caplog):
    features, labels, _, test_features = random_problem(4, 6, 200, seed=16)
    result = engine_metrics(features, labels, np.zeros((4, 6)), test_features)

    assert result["NC0"] == 0.0
    assert result["alpha"] == 0.0
    assert result["W_norm"] == 0.0
    assert result["W_sv_min"] == 0.0
    for name in ("NC0_normalized", "NC2W", "NC2W_n", "NC2W_a", "NC2M", "NC3"):
        assert math.isnan(result[name]), name
    for name in ("NC1", "NC2", "NC4"):
        assert math.isfinite(result[name]), name
    assert "metric=NC0_normalized result=nan reason=zero_weight" in caplog.text
    assert "metric=NC3 result=nan reason=zero_weight" in caplog.text
    assert "metric=NC2W result=nan reason=zero_matrix" in caplog.text


def test_metrics_zero_class_means_nan_with_warning(caplog):
    rng = np.random.default_rng(17)
    labels = np.repeat(np.arange(3), 5)
    # Every class has the same mean: Sigma_B = 0, so M = 0.
    deviation = rng.normal(size=(5, 4))
    deviation -= deviation.mean(axis=0)
    features = np.concatenate([deviation, deviation, deviation]) + 2.0
    result = engine_metrics(features, labels, rng.normal(size=(3, 4)), rng.normal(size=(10, 4)))

    for name in ("NC1", "NC2", "NC2_n", "NC2_a", "NC2M", "NC3"):
        assert math.isnan(result[name]), name
    assert result["M_sv_min"] < 1e-12
    assert math.isfinite(result["NC4"])
    assert "metric=NC1 result=nan reason=zero_class_means" in caplog.text
    assert "metric=NC3 result=nan reason=zero_class_means" in caplog.text


def test_metrics_dim_below_classes_warns(caplog):
    features, labels, weight, _ = random_problem(12, 4, 600, seed=18)
    result = engine_metrics(features, labels, weight)
    assert math.isfinite(result["NC1"])
    assert result["NC1"] == pytest.approx(dense_metrics(features, labels, weight)["NC1"], rel=1e-9)
    assert "metric=NC1 between_class_rank=4 expected_rank=11" in caplog.text


def test_metrics_non_finite_features_nan_with_warning(caplog):
    features, labels, weight, test_features = random_problem(3, 4, 60, seed=19)
    features[5, 1] = np.nan
    result = engine_metrics(features, labels, weight, test_features)
    assert math.isnan(result["NC1"])
    assert math.isnan(result["NC4"])
    assert math.isfinite(result["NC0"])
    assert "reason=non_finite_features" in caplog.text


def test_metrics_non_finite_weight_nan_with_warning(caplog):
    features, labels, weight, test_features = random_problem(3, 4, 60, seed=20)
    weight[0, 0] = np.inf
    result = engine_metrics(features, labels, weight, test_features)
    for name in ("NC0", "NC2W", "NC2M", "NC3", "NC4", "W_norm", "W_sv_min"):
        assert math.isnan(result[name]), name
    assert math.isfinite(result["NC1"])
    assert "input=weight reason=non_finite" in caplog.text


def test_metrics_no_samples_nan_with_warning(caplog):
    result = compute_metrics(ClassStats(3, 4), np.ones((3, 4)))
    assert math.isnan(result["NC1"])
    assert "reason=no_samples" in caplog.text


def test_nc4_empty_test_set_nan_with_warning(caplog):
    features, labels, weight, _ = random_problem(3, 4, 60, seed=21)
    result = engine_metrics(features, labels, weight, np.zeros((0, 4)))
    assert math.isnan(result["NC4"])
    assert "metric=NC4 result=nan reason=no_test_features" in caplog.text


def test_equiangular_zero_row_nan_with_warning(caplog):
    weight = np.array([[1.0, 0.0], [0.0, 0.0], [0.0, 1.0]])
    assert math.isnan(metrics.nc2w_a(weight))
    assert "zero_rows=[1]" in caplog.text


def test_simplex_etf_gram_has_unit_norm():
    for num_classes in (2, 3, 10):
        gram = metrics.simplex_etf_gram(num_classes)
        assert np.linalg.norm(gram) == pytest.approx(1.0, rel=1e-14)
        np.testing.assert_allclose(gram.sum(axis=1), 0.0, atol=1e-15)
