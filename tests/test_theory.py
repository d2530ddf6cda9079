"""Tests of the closed forms, the theory table and figure, and the files that
pipeline.theory writes."""

import math

import altair as alt
import numpy as np
import pandas as pd
import pytest
import torch

from pipeline.theory import (
    THEOREM_SETTINGS,
    relative_errors,
    row_sum_alpha,
    sgd_characteristic_roots,
    sgd_row_sums,
    sgd_spectral_radius,
    sgdw_alpha,
    signgd_coefficients,
    signgdw_alpha,
    signgdw_alpha_limit,
    signgdw_weight_scale,
    simplex_etf,
    step_decay_lrs,
    theory_figure,
    theory_table,
    ufm_gradient_scale,
    write_theory_outputs,
)


# The tensors here are tiny: one intra-op thread is faster on a busy machine.
pytestmark = pytest.mark.usefixtures("single_thread")


def test_row_sum_alpha_of_known_matrix():
    weight = np.array([[1.0, 2.0], [3.0, -1.0], [0.0, 2.0]])
    # Row sum (4, 3): ||.||^2 = 25, K = 3.
    assert row_sum_alpha(weight) == pytest.approx(25 / 3)
    assert row_sum_alpha(torch.from_numpy(weight)) == pytest.approx(25 / 3)


def test_sgdw_alpha_closed_form():
    alpha = sgdw_alpha(2.0, lr=0.1, weight_decay=0.5, steps=3)
    np.testing.assert_allclose(alpha, [2.0, 2.0 * 0.95**2, 2.0 * 0.95**4, 2.0 * 0.95**6], rtol=1e-15)


@pytest.mark.parametrize(("lr", "momentum", "weight_decay"), [(0.05, 0.9, 0.01), (0.01, 0.99, 0.1), (0.1, 0.0, 0.5)])
def test_sgd_roots_solve_characteristic_polynomial(lr, momentum, weight_decay):
    trace = 1 + momentum - lr * weight_decay
    for root in sgd_characteristic_roots(lr, momentum, weight_decay):
        assert abs(root * root - trace * root + momentum) < 1e-14


def test_sgd_row_sums_match_root_solution():
    lr, momentum, weight_decay, steps = 0.05, 0.9, 0.01, 50
    m0 = np.array([1.0, -2.0])
    r_plus, r_minus = sgd_characteristic_roots(lr, momentum, weight_decay)
    m1 = (1 - lr * weight_decay) * m0
    # m_t = c+ r+^t + c- r-^t with c+ + c- = m0 and c+ r+ + c- r- = m1.
    c_plus = (m1 - r_minus * m0) / (r_plus - r_minus)
    c_minus = m0 - c_plus
    t = np.arange(steps + 1)[:, None]
    closed = (c_plus * r_plus**t + c_minus * r_minus**t).real
    np.testing.assert_allclose(sgd_row_sums(m0, lr, momentum, weight_decay, steps), closed, rtol=1e-10, atol=1e-14)


@pytest.mark.parametrize("momentum", [0.0, 0.5, 0.9])
def test_sgd_spectral_radius_below_one_iff_condition(momentum):
    bound = 2 * (1 + momentum)
    assert sgd_spectral_radius(lr=1.0, momentum=momentum, weight_decay=0.99 * bound) < 1
    assert sgd_spectral_radius(lr=1.0, momentum=momentum, weight_decay=1.01 * bound) > 1
    assert sgd_spectral_radius(lr=1.0, momentum=momentum, weight_decay=0.01) < 1


def test_signgdw_weight_scale_satisfies_recurrence():
    lr, weight_decay = 0.1, 0.2
    scale = signgdw_weight_scale(lr, weight_decay, 30)
    assert scale[0] == 0.0
    np.testing.assert_allclose(scale[1:], (1 - lr * weight_decay) * scale[:-1] - lr, rtol=1e-13)


def test_signgdw_alpha_rises_to_limit():
    alpha = signgdw_alpha(5, lr=0.1, weight_decay=0.1, steps=5000)
    # After about 3,700 steps (1 - 0.01)^t drops below float64 resolution and alpha stays put.
    assert (np.diff(alpha[:1000]) > 0).all()
    assert (np.diff(alpha) >= 0).all()
    assert alpha[-1] == pytest.approx(signgdw_alpha_limit(5, 0.1), rel=1e-12)
    assert signgdw_alpha_limit(5, 0.1) == pytest.approx(900.0)


def test_simplex_etf_properties():
    etf = simplex_etf(4)
    np.testing.assert_allclose(etf, etf.T)
    np.testing.assert_allclose(etf.sum(axis=0), 0, atol=1e-15)
    assert np.linalg.norm(etf) == pytest.approx(1.0)
    gram = etf.T @ etf
    cosine = gram[0, 1] / gram[0, 0]
    assert cosine == pytest.approx(-1 / 3)


def test_ufm_gradient_scale_at_zero():
    # W = 0: softmax is uniform, the off-diagonal softmax value is 1/K.
    assert ufm_gradient_scale(4, 0.0, 0.0) == pytest.approx(1 / (4 * math.sqrt(3)) / 4)


def test_signgd_coefficients_first_step():
    a, b = signgd_coefficients(4, [0.01, 0.01], 0.05)
    assert a[1] == pytest.approx(0.01)
    assert b[1] == pytest.approx(0.01)
    assert len(a) == 3


def test_step_decay_lrs_match_multistep_scheduler():
    param = torch.zeros(1, requires_grad=True)
    optimizer = torch.optim.SGD([param], lr=0.1)
    scheduler = torch.optim.lr_scheduler.MultiStepLR(optimizer, milestones=[3, 6], gamma=0.1)
    expected = []
    for _ in range(9):
        expected.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        scheduler.step()
    np.testing.assert_allclose(step_decay_lrs(0.1, 9, [3, 6]), expected, rtol=1e-15)


def test_relative_errors_floor_at_zero_prediction():
    errors = relative_errors(np.array([0.0, 1.0, 2.0]), np.array([0.0, 1.5, 2.0]))
    np.testing.assert_allclose(errors, [0.0, 0.5, 0.0])


@pytest.fixture(scope="module")
def small_table():
    return theory_table(steps=60)


def test_theory_table_columns_and_precision(small_table):
    assert list(small_table.columns) == [
        "theorem", "optimizer", "step", "alpha_predicted", "alpha_simulated", "relative_error",
    ]
    assert sorted(small_table["theorem"].unique()) == [1, 2, 3, 4]
    assert len(small_table) == 4 * 61
    maximum_errors = small_table.groupby("theorem")["relative_error"].max()
    assert (maximum_errors < 1e-10).all(), maximum_errors.to_dict()


def test_theory_table_optimizers(small_table):
    optimizers = small_table.groupby("theorem")["optimizer"].first().to_dict()
    assert optimizers == {1: "sgdw", 2: "sgd", 3: "signgdw", 4: "signgd"}
    assert [setting.optimizer for setting in THEOREM_SETTINGS] == ["sgdw", "sgd", "signgdw", "signgd"]


def test_theory_figure_has_four_panels(small_table):
    chart = theory_figure(small_table)
    assert isinstance(chart, alt.VConcatChart)
    spec = chart.to_dict()
    panels = [panel for row in spec["vconcat"] for panel in row["hconcat"]]
    assert len(panels) == 4


def test_write_theory_outputs_creates_files(tmp_path):
    table_path = tmp_path / "theory" / "table.csv"
    png_path = tmp_path / "figure.png"
    html_path = tmp_path / "figure.html"
    returned = write_theory_outputs(table_path, png_path, html_path, steps=30)

    for path in (table_path, table_path.with_suffix(".parquet"), png_path, html_path):
        assert path.stat().st_size > 0, path
    assert png_path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    pd.testing.assert_frame_equal(pd.read_csv(table_path), returned, check_dtype=False)
    pd.testing.assert_frame_equal(pd.read_parquet(table_path.with_suffix(".parquet")), returned)
