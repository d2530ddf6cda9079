"""Exact checks of the four row-sum theorems: the project's optimizers, run in float64,
against the closed forms in pipeline.theory."""

import math

import numpy as np
import pytest
import torch
from torch import nn

from pipeline.theory import (
    alpha_from_row_sums,
    sgd_row_sums,
    sgd_spectral_radius,
    sgdw_alpha,
    signgd_alpha,
    signgd_coefficients,
    signgdw_alpha,
    signgdw_alpha_limit,
    signgdw_weight_scale,
    simplex_etf,
    simulate_mlp_row_sums,
    simulate_ufm_weights,
    step_decay_lrs,
)


# The tensors here are tiny: one intra-op thread is faster on a busy machine.
pytestmark = pytest.mark.usefixtures("single_thread")


NUM_CLASSES = 5
STEPS = 200


def _ufm_gradient(weight: torch.Tensor) -> torch.Tensor:
    """Return the mean cross-entropy gradient of the UFM with H = M* at ``weight``."""
    num_classes = weight.shape[0]
    weight = weight.clone().requires_grad_()
    features = torch.from_numpy(simplex_etf(num_classes))
    loss = nn.functional.cross_entropy((weight @ features).T, torch.arange(num_classes))
    loss.backward()
    return weight.grad


def test_cross_entropy_gradient_row_sum_is_zero():
    generator = torch.Generator().manual_seed(0)
    weight = torch.randn(NUM_CLASSES, 7, generator=generator, dtype=torch.float64, requires_grad=True)
    features = torch.randn(30, 7, generator=generator, dtype=torch.float64)
    labels = torch.randint(0, NUM_CLASSES, (30,), generator=generator)
    nn.functional.cross_entropy(features @ weight.T, labels).backward()
    assert weight.grad.sum(dim=0).abs().max().item() < 1e-16
    assert weight.grad.abs().max().item() > 1e-3


# --- Theorem 1: SGDW ---------------------------------------------------------------------

@pytest.mark.parametrize(
    ("momentum", "lr", "weight_decay"), [(0.0, 0.05, 0.05), (0.9, 0.05, 0.05), (0.5, 0.02, 0.2)]
)
def test_sgdw_row_sum_decays_exactly(momentum, lr, weight_decay):
    row_sums = simulate_mlp_row_sums("sgdw", lr, momentum, weight_decay, STEPS, num_classes=NUM_CLASSES)
    simulated = alpha_from_row_sums(row_sums, NUM_CLASSES)
    predicted = sgdw_alpha(simulated[0], lr, weight_decay, STEPS)

    assert simulated[-1] < 0.5 * simulated[0]
    relative_error = np.abs(simulated - predicted) / predicted
    assert relative_error.max() < 1e-10

    # Every coordinate of the row sum, not only its norm, shrinks by the same factor.
    factors = (1 - lr * weight_decay) ** np.arange(STEPS + 1)
    np.testing.assert_allclose(row_sums, factors[:, None] * row_sums[0], rtol=1e-10, atol=0)


def test_sgdw_training_changes_last_layer():
    # The row sum follows the theorem while the weight itself really trains.
    row_sums_trained = simulate_mlp_row_sums("sgdw", 0.05, 0.9, 0.0, 50, num_classes=NUM_CLASSES)
    np.testing.assert_allclose(row_sums_trained[-1], row_sums_trained[0], rtol=1e-10)
    sgd_row_sums_without_decay = simulate_mlp_row_sums("sgd", 0.05, 0.9, 0.0, 50, num_classes=NUM_CLASSES)
    np.testing.assert_allclose(sgd_row_sums_without_decay[-1], row_sums_trained[0], rtol=1e-10)


# --- Theorem 2: SGD with coupled decay ---------------------------------------------------

@pytest.mark.parametrize(
    ("momentum", "lr", "weight_decay"),
    [
        (0.0, 0.05, 0.05),  # no momentum: m_t = (1 - lr wd)^t m_0
        (0.9, 0.05, 0.01),  # real roots
        (0.99, 0.01, 0.1),  # complex roots: the row sum oscillates while it decays
    ],
)
def test_sgd_row_sum_follows_recurrence(momentum, lr, weight_decay):
    row_sums = simulate_mlp_row_sums("sgd", lr, momentum, weight_decay, STEPS, num_classes=NUM_CLASSES)
    predicted = sgd_row_sums(row_sums[0], lr, momentum, weight_decay, STEPS)

    # Measure errors against the decay envelope rho^t ||m_0||, because with complex roots
    # m_t passes near 0 and a plain relative error would divide by roundoff.
    rho = sgd_spectral_radius(lr, momentum, weight_decay)
    envelope = np.linalg.norm(row_sums[0]) * rho ** np.arange(STEPS + 1)
    row_sum_error = np.linalg.norm(row_sums - predicted, axis=1) / envelope
    assert row_sum_error.max() < 1e-10

    simulated_alpha = alpha_from_row_sums(row_sums, NUM_CLASSES)
    predicted_alpha = alpha_from_row_sums(predicted, NUM_CLASSES)
    alpha_error = np.abs(simulated_alpha - predicted_alpha) / (envelope**2 / NUM_CLASSES)
    assert alpha_error.max() < 1e-10
    assert rho < 1
    assert simulated_alpha[-1] < simulated_alpha[0]


def test_sgd_first_step_row_sum():
    row_sums = simulate_mlp_row_sums("sgd", 0.05, 0.9, 0.01, 1, num_classes=NUM_CLASSES)
    np.testing.assert_allclose(row_sums[1], (1 - 0.05 * 0.01) * row_sums[0], rtol=1e-12)


def test_sgd_complex_roots_make_row_sum_oscillate():
    row_sums = simulate_mlp_row_sums("sgd", 0.01, 0.99, 0.1, STEPS, num_classes=NUM_CLASSES)
    # m_t = s_t m_0 with a scalar s_t, so the sign of one coordinate tracks s_t.
    signs = np.sign(row_sums[:, 0] / row_sums[0, 0])
    assert (signs < 0).any()


# --- Theorem 3: SignGDW on the UFM -------------------------------------------------------

def test_ufm_gradient_sign_at_zero():
    for num_classes in (3, 4, 10):
        gradient = _ufm_gradient(torch.zeros(num_classes, num_classes, dtype=torch.float64))
        expected = torch.ones(num_classes, num_classes, dtype=torch.float64) - 2 * torch.eye(num_classes, dtype=torch.float64)
        assert torch.equal(torch.sign(gradient), expected)


def test_ufm_gradient_sign_on_span_i_j():
    # The sign holds for every W = x I + y J (W H = x H, logits symmetric), which contains
    # both theorems' trajectories, but not for every W (next test).
    num_classes = 4
    expected = torch.ones(num_classes, num_classes, dtype=torch.float64) - 2 * torch.eye(num_classes, dtype=torch.float64)
    identity = torch.eye(num_classes, dtype=torch.float64)
    ones = torch.ones(num_classes, num_classes, dtype=torch.float64)
    for x, y in [(1.0, 0.0), (-3.0, 2.0), (5.0, -7.0), (0.5, 0.5), (-10.0, 0.0)]:
        gradient = _ufm_gradient(x * identity + y * ones)
        assert torch.equal(torch.sign(gradient), expected), (x, y)


def test_ufm_gradient_sign_fails_for_general_weight():
    # Samples 0 and 1 both predicted as class 0: row 0 of S - I sums to about 1, so its
    # centred entry for sample 2 turns negative.
    weight = torch.tensor([[20.0, 20.0, 0.0], [0.0, 0.0, 0.0], [0.0, 0.0, 20.0]], dtype=torch.float64)
    weight = weight @ torch.from_numpy(simplex_etf(3)).T * 3
    gradient = _ufm_gradient(weight)
    expected = torch.ones(3, 3, dtype=torch.float64) - 2 * torch.eye(3, dtype=torch.float64)
    assert not torch.equal(torch.sign(gradient), expected)


@pytest.mark.parametrize("num_classes", [3, 4, 6])
def test_signgdw_weights_follow_closed_form(num_classes):
    lr, weight_decay, steps = 0.1, 0.1, 1000
    weights = simulate_ufm_weights("signgdw", num_classes, np.full(steps, lr), weight_decay)
    scale = signgdw_weight_scale(lr, weight_decay, steps)
    pattern = np.ones((num_classes, num_classes)) - 2 * np.eye(num_classes)
    predicted = scale[:, None, None] * pattern

    np.testing.assert_allclose(weights, predicted, rtol=1e-12, atol=0)

    simulated_alpha = np.array([(w.sum(axis=0) ** 2).sum() / num_classes for w in weights])
    predicted_alpha = signgdw_alpha(num_classes, lr, weight_decay, steps)
    np.testing.assert_allclose(simulated_alpha[1:], predicted_alpha[1:], rtol=1e-10, atol=0)
    assert simulated_alpha[0] == 0.0

    assert (np.diff(simulated_alpha) > 0).all(), "alpha_t must rise at every step"
    limit = signgdw_alpha_limit(num_classes, weight_decay)
    assert simulated_alpha[-1] < limit
    assert simulated_alpha[-1] > 0.999 * limit


# --- Theorem 4: SignGD with coupled decay on the UFM -------------------------------------

THEOREM4_CLASSES = 4
THEOREM4_DECAY = 0.05
THEOREM4_STEPS = 1500


def _theorem4_run(lrs):
    weights = simulate_ufm_weights("signgd", THEOREM4_CLASSES, lrs, THEOREM4_DECAY)
    alpha = np.array([(w.sum(axis=0) ** 2).sum() / THEOREM4_CLASSES for w in weights])
    return weights, alpha


def test_signgd_weights_keep_structure_and_recursion():
    lrs = step_decay_lrs(0.01, THEOREM4_STEPS, [500, 1000])
    weights, _ = _theorem4_run(lrs)
    a, b = signgd_coefficients(THEOREM4_CLASSES, lrs, THEOREM4_DECAY)
    identity = np.eye(THEOREM4_CLASSES)
    ones = np.ones((THEOREM4_CLASSES, THEOREM4_CLASSES))
    predicted = (a + b)[:, None, None] * identity - b[:, None, None] * ones
    np.testing.assert_allclose(weights, predicted, rtol=0, atol=1e-12)

    assert a[1] == pytest.approx(0.01)
    assert b[1] == pytest.approx(0.01)


def test_signgd_alpha_rises_then_falls_below_one_percent():
    lrs = step_decay_lrs(0.01, THEOREM4_STEPS, [500, 1000])
    _, alpha = _theorem4_run(lrs)
    predicted = signgd_alpha(THEOREM4_CLASSES, lrs, THEOREM4_DECAY)
    peak = alpha.max()
    np.testing.assert_allclose(alpha, predicted, rtol=0, atol=1e-12 * peak)

    peak_step = int(alpha.argmax())
    assert 0 < peak_step < THEOREM4_STEPS // 3
    assert (np.diff(alpha[: peak_step + 1]) > 0).all(), "alpha_t must rise up to its peak"
    assert alpha[-100:].max() < 0.01 * peak


def test_signgd_step_decay_lowers_final_alpha():
    # At a constant lr alpha_t keeps oscillating at a level set by lr; each lr decay lowers it.
    constant = _theorem4_run(np.full(THEOREM4_STEPS, 0.01))[1]
    decayed = _theorem4_run(step_decay_lrs(0.01, THEOREM4_STEPS, [500, 1000]))[1]
    assert decayed[-100:].max() < 0.01 * constant[-100:].max()


def test_coupled_and_decoupled_signgd_diverge():
    lrs = np.full(THEOREM4_STEPS, 0.01)
    coupled = _theorem4_run(lrs)[1]
    decoupled_weights = simulate_ufm_weights("signgdw", THEOREM4_CLASSES, lrs, THEOREM4_DECAY)
    decoupled = np.array([(w.sum(axis=0) ** 2).sum() / THEOREM4_CLASSES for w in decoupled_weights])
    assert decoupled[-1] > 100 * coupled[-100:].max()
    assert math.isclose(decoupled[-1], signgdw_alpha(THEOREM4_CLASSES, 0.01, THEOREM4_DECAY, THEOREM4_STEPS)[-1], rel_tol=1e-10)
