"""Command-line interface: single training runs, data preparation, grid listing
and NC metrics of any features (``python -m pipeline --help``)."""

from __future__ import annotations

import logging
from pathlib import Path

import click

from pipeline.config import ConfigError, RunConfig, expand_grid, load_params
from pipeline.data import DATASETS, DatasetError, prepare_dataset
from pipeline.logs import configure_logging
from pipeline.models import ARCHITECTURES

log = logging.getLogger(__name__)


@click.group()
@click.option("-v", "--verbose", is_flag=True, help="Log debug messages.")
def main(verbose: bool) -> None:
    """Neural collapse under coupled and decoupled weight decay."""
    configure_logging(level=logging.DEBUG if verbose else logging.INFO)


def load_or_fail(params_path: str, preset: str | None) -> dict:
    try:
        return load_params(params_path, preset)
    except ConfigError as error:
        raise click.ClickException(str(error)) from None


@main.command("prepare-data")
@click.option("--params", "params_path", default="params.yaml", show_default=True, help="Parameter file.")
@click.option("--preset", default=None, help="Preset whose datasets to prepare [default: the one in the parameter file].")
@click.option("--dataset", "datasets", multiple=True, type=click.Choice(DATASETS), help="Dataset to prepare instead (repeatable).")
def prepare_data_command(params_path: str, preset: str | None, datasets: tuple[str, ...]) -> None:
    """Import datasets into cached tensor files under data.root."""
    params = load_or_fail(params_path, preset)
    data = params["data"]
    names = datasets or tuple(params["presets"][params["preset"]]["datasets"])
    root = Path(data["root"])
    for name in names:
        try:
            prepare_dataset(name, root / name, raw_root=root / "raw", fashion_mnist_dir=data["fashion_mnist_dir"], download=data["download"])
        except DatasetError as error:
            raise click.ClickException(str(error)) from None


@main.command("grid")
@click.option("--params", "params_path", default="params.yaml", show_default=True, help="Parameter file.")
@click.option("--preset", default=None, help="Preset to expand [default: the one in the parameter file].")
@click.option("--count", is_flag=True, help="Print only the number of training jobs.")
def grid_command(params_path: str, preset: str | None, count: bool) -> None:
    """List the training jobs of a preset, one run id a line."""
    runs = expand_grid(load_or_fail(params_path, preset))
    if count:
        click.echo(len(runs))
        return
    for run_id in runs:
        click.echo(run_id)


@main.command("train")
@click.option("--dataset", type=click.Choice(DATASETS), default="fashion_mnist", show_default=True)
@click.option("--architecture", type=click.Choice(ARCHITECTURES), default="resnet9", show_default=True)
@click.option("--optimizer", default="sgd", show_default=True, help="Optimizer name (pipeline.optimizers.OPTIMIZER_NAMES).")
@click.option("--lr", type=float, default=0.0679, show_default=True, help="Base learning rate.")
@click.option("--momentum", type=float, default=0.9, show_default=True, help="Momentum, or beta1 for the Adam family.")
@click.option("--weight-decay", type=float, default=5e-4, show_default=True, help="Weight decay lambda.")
@click.option("--epochs", type=int, default=200, show_default=True)
@click.option("--batch-size", type=int, default=128, show_default=True)
@click.option("--width", type=float, default=1.0, show_default=True, help="Channel width multiplier (1: feature dimension 512).")
@click.option("--train-per-class", type=int, default=None, help="Training images per class [default: all].")
@click.option("--test-per-class", type=int, default=None, help="Test images per class [default: all].")
@click.option("--eval-every", type=int, default=10, show_default=True, help="Epochs between NC evaluations.")
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--data-root", default="data", show_default=True, help="Folder of the prepared datasets (prepare-data writes it).")
@click.option("--out", "out_dir", required=True, help="Output folder for history.parquet, dumps.pt and checkpoint.pt.")
def train_command(out_dir: str, data_root: str, **values) -> None:
    """Train one grid point and write its history, dumps and checkpoint."""
    from pipeline.optimizers import OPTIMIZER_NAMES
    from pipeline.training import train_run

    if values["optimizer"] not in OPTIMIZER_NAMES:
        raise click.BadParameter(f"unknown optimizer {values['optimizer']!r}: expected one of {', '.join(OPTIMIZER_NAMES)}", param_hint="--optimizer")
    cfg = RunConfig(**values)
    data_dir = Path(data_root) / cfg.dataset
    out = Path(out_dir)
    try:
        train_run(
            cfg,
            train_path=data_dir / "train.pt",
            test_path=data_dir / "test.pt",
            history_path=out / "history.parquet",
            dumps_path=out / "dumps.pt",
            checkpoint_path=out / "checkpoint.pt",
        )
    except (DatasetError, ValueError) as error:
        raise click.ClickException(str(error)) from None


def register_metrics_command() -> None:
    from pipeline.metrics_cli import metrics_command

    main.add_command(metrics_command, "metrics")


register_metrics_command()
