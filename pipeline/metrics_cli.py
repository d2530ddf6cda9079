"""The ``metrics`` command: compute the NC metrics of a saved feature file (.npz, .pt or
Parquet) and print them as JSON or as a table.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import click
import torch

from pipeline.feature_files import FeatureFileError, MetricInputs, load_metric_inputs
from pipeline.metrics import compute_metrics
from pipeline.stats import ClassStats

HELP = """Compute the neural collapse metrics of FILE and print them.

\b
FILE is one of:
  .npz      arrays features (N, p), labels (N,) with integers 0..K-1 and
            weights (K, p); optional bias (K,), test_features (N_test, p)
            and test_labels (N_test,).
  .pt       a dict of tensors with the same keys, read with
            torch.load(weights_only=True). In place of features and labels
            it may contain stats, a ClassStats.state_dict(), and weights may be
            named weight, as in one snapshot of a training dump.
  .parquet  one row per sample: an integer column 'label' and float
            columns f0 .. f{p-1}; an optional column 'split' with the
            values 'train' and 'test' moves rows to the test set.
            Requires --weights.

K is weights.shape[0]. NC4 is reported only when test features are given.
Metrics that are NaN (for example NC1 with an empty class) print as null
in JSON and nan in the table, and a warning goes to stderr.
"""


def _stats_from_inputs(inputs: MetricInputs) -> ClassStats:
    if inputs.stats_state is not None:
        return ClassStats.from_state_dict(inputs.stats_state)
    return ClassStats.from_features(
        torch.from_numpy(inputs.features), torch.from_numpy(inputs.labels), inputs.num_classes
    )


def format_table(metrics: dict[str, float]) -> str:
    """Return the metrics as two aligned columns, name and value in %.6g form."""
    width = max(len(name) for name in metrics)
    lines = [f"{'metric':<{width}}  value"]
    lines += [f"{name:<{width}}  {value:.6g}" for name, value in metrics.items()]
    return "\n".join(lines)


def format_json(metrics: dict[str, float]) -> str:
    """Return the metrics as one JSON object, with null in place of NaN and infinity."""
    finite = {name: (value if math.isfinite(value) else None) for name, value in metrics.items()}
    return json.dumps(finite, allow_nan=False)


@click.command("metrics", help=HELP)
@click.argument("file", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option(
    "--weights",
    "weights_path",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    default=None,
    help="Classifier weight file: .npy holding W (K, p), or .npz / .pt with 'weights' and optional "
    "'bias'. Required for Parquet input, and replaces the weights and bias of FILE otherwise.",
)
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object instead of a table.")
def metrics_command(file: Path, weights_path: Path | None, as_json: bool) -> None:
    try:
        inputs = load_metric_inputs(file, weights_path)
    except FeatureFileError as error:
        raise click.ClickException(str(error)) from None

    try:
        stats = _stats_from_inputs(inputs)
    except ValueError as error:
        raise click.ClickException(f"invalid statistics in {file}: {error}") from None

    metrics = compute_metrics(
        stats,
        inputs.weights,
        inputs.bias,
        test_features=inputs.test_features,
        test_labels=inputs.test_labels,
    )
    click.echo(format_json(metrics) if as_json else format_table(metrics))
