"""Tests of the separable-data MLP experiment at a small scale: data, NC0, the coupled
against decoupled ordering of NC0, and the files it writes."""

import altair as alt
import pandas as pd
import pytest
import torch

from pipeline.separable import (
    SEPARABLE_OPTIMIZERS,
    SeparableConfig,
    build_separable_mlp,
    make_separable_data,
    nc0,
    run_separable_experiment,
    separable_figure,
    write_separable_outputs,
)


# The tensors here are tiny: one intra-op thread is faster on a busy machine.
pytestmark = pytest.mark.usefixtures("single_thread")


TINY_EPOCHS = 40

# (coupled, decoupled) pairs of the experiment.
PAIRS = (("adam", "adamw"), ("adam0", "adamw0"), ("signgd", "signgdw"))


@pytest.fixture(scope="module")
def tiny_table():
    return run_separable_experiment(epochs=TINY_EPOCHS)


def _final(table: pd.DataFrame, optimizer: str) -> pd.Series:
    return table[table["optimizer"] == optimizer].iloc[-1]


def _initial(table: pd.DataFrame, optimizer: str) -> pd.Series:
    return table[table["optimizer"] == optimizer].iloc[0]


def test_data_is_balanced_and_linearly_separable():
    config = SeparableConfig()
    inputs, labels = make_separable_data(config)
    assert inputs.shape == (config.num_classes * config.samples_per_class, config.input_dim)
    assert torch.bincount(labels).tolist() == [config.samples_per_class] * config.num_classes

    # A linear classifier trained long enough separates the data perfectly.
    classifier = torch.nn.Linear(config.input_dim, config.num_classes)
    optimizer = torch.optim.Adam(classifier.parameters(), lr=0.05)
    for _ in range(2000):
        optimizer.zero_grad()
        torch.nn.functional.cross_entropy(classifier(inputs), labels).backward()
        optimizer.step()
    accuracy = (classifier(inputs).argmax(dim=1) == labels).double().mean().item()
    assert accuracy == 1.0


def test_data_depends_only_on_seed():
    first = make_separable_data(SeparableConfig(seed=3))
    second = make_separable_data(SeparableConfig(seed=3))
    assert torch.equal(first[0], second[0])
    assert torch.equal(first[1], second[1])


def test_nc0_of_known_weight():
    weight = torch.tensor([[1.0, 2.0], [3.0, -1.0], [0.0, 2.0]])
    # Row sum (4, 3) has norm 5 and p = 2.
    assert nc0(weight) == pytest.approx(2.5)


def test_models_start_identical_without_global_seed():
    torch.manual_seed(123)
    state_before = torch.get_rng_state()
    first = build_separable_mlp(SeparableConfig())
    second = build_separable_mlp(SeparableConfig())
    assert torch.equal(torch.get_rng_state(), state_before)
    for a, b in zip(first.parameters(), second.parameters(), strict=True):
        assert torch.equal(a, b)


def test_table_columns_and_rows(tiny_table):
    assert list(tiny_table.columns) == ["optimizer", "step", "NC0", "train_accuracy"]
    assert tuple(tiny_table["optimizer"].unique()) == SEPARABLE_OPTIMIZERS
    steps_per_epoch = 320 // 64
    assert len(tiny_table) == len(SEPARABLE_OPTIMIZERS) * (TINY_EPOCHS + 1)
    assert _final(tiny_table, "sgd")["step"] == TINY_EPOCHS * steps_per_epoch
    assert (tiny_table.groupby("optimizer")["NC0"].first().nunique()) == 1, "all runs start from one model"


@pytest.mark.parametrize(("coupled", "decoupled"), PAIRS)
def test_decoupled_nc0_ends_above_coupled(tiny_table, coupled, decoupled):
    assert _final(tiny_table, decoupled)["NC0"] > 1.2 * _final(tiny_table, coupled)["NC0"]


@pytest.mark.parametrize("optimizer", ["adamw0", "signgdw"])
def test_decoupled_sign_nc0_grows(tiny_table, optimizer):
    assert _final(tiny_table, optimizer)["NC0"] > _initial(tiny_table, optimizer)["NC0"]


def test_sgd_nc0_decays(tiny_table):
    assert _final(tiny_table, "sgd")["NC0"] < 0.01 * _initial(tiny_table, "sgd")["NC0"]


def test_every_optimizer_fits_training_data(tiny_table):
    final_accuracy = tiny_table.groupby("optimizer")["train_accuracy"].last()
    assert (final_accuracy >= 0.95).all(), final_accuracy.to_dict()


def test_separable_figure_is_line_chart(tiny_table):
    chart = separable_figure(tiny_table)
    assert isinstance(chart, alt.Chart)
    spec = chart.to_dict()
    assert spec["encoding"]["y"]["scale"]["type"] == "log"


def test_write_separable_outputs_creates_files(tmp_path):
    table_path = tmp_path / "separable" / "nc0.csv"
    png_path = tmp_path / "nc0.png"
    html_path = tmp_path / "nc0.html"
    table = write_separable_outputs(table_path, png_path, html_path, epochs=3)
    for path in (table_path, table_path.with_suffix(".parquet"), png_path, html_path):
        assert path.stat().st_size > 0, path
    pd.testing.assert_frame_equal(pd.read_parquet(table_path.with_suffix(".parquet")), table)
